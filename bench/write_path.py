"""Store work per request on the hot path: SQLite transactions and statements, Redis round
trips and commands, for a new approved payment, an idempotent replay, a GET, and a capture
that owes the merchant a notification (its merchant has ``notify_all``; the notification
worker polls once an hour here, so no delivery is counted).

Counts, not timings (issue #12 "one write path", issue #15 "fewer, smaller writes"): the
SQLite connection's trace callback sees every statement (a write outside ``BEGIN`` is its
own transaction); on Redis every ``send_packed_command`` of the client is one round trip
and ``INFO commandstats`` gives the commands. Background loops (notification worker,
breaker sharing) are measured over an idle period of the same length and subtracted.

    .venv/bin/python bench/write_path.py
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import API_KEY, headers, private_redis, tempdir, write_config
from gateway.app import create_app
from gateway.appkeys import STORE
from gateway.config import load_config

N = 50
#: The merchant is notified of every change (its endpoint is never called: see above).
NOTIFIED = {
    "merchants": [{"id": "bench",
                   "api_key_sha256": [hashlib.sha256(API_KEY.encode()).hexdigest()],
                   "webhook": {"url": "http://127.0.0.1:9/hooks", "secret": "bench-secret-0123",
                               "notify_all": True}}],
    "notifications": {"poll_interval_s": 3600},
}
PROVIDERS = {"stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR"]}}
BODY = json.dumps({"amount": 1000, "currency": "EUR", "capture": "manual",
                   "payment_method": {"type": "card", "token": "tok_visa"}})


class SqliteCounter:
    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        self._in_tx = False

    def __call__(self, sql: str) -> None:
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        self.statements += 1
        if head == "BEGIN":
            self._in_tx = True
        elif head in ("COMMIT", "ROLLBACK"):
            self._in_tx = False
            self.transactions += head == "COMMIT"
        elif head in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not self._in_tx:
            self.transactions += 1

    def snapshot(self) -> tuple[int, int]:
        return self.transactions, self.statements


class RedisCounter:
    def __init__(self) -> None:
        self.round_trips = 0
        import redis.asyncio.connection as conn

        original = conn.AbstractConnection.send_packed_command
        counter = self

        async def counted(self: Any, command: Any, check_health: bool = True) -> None:
            counter.round_trips += 1
            await original(self, command, check_health)

        conn.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]

    def snapshot(self) -> tuple[int, int]:
        return self.round_trips, 0


async def _measure(base: str, snapshot: Callable[[], tuple[int, int]],
                   extra: Callable[[], int] | None) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    async with aiohttp.ClientSession() as s:
        async def run(label: str, calls: Callable[[int], Any]) -> None:
            a0, b0 = snapshot()
            c0 = extra() if extra else 0
            t0 = time.monotonic()
            for i in range(N):
                await calls(i)
            elapsed = time.monotonic() - t0
            a1, b1 = snapshot()
            c1 = extra() if extra else 0
            # the background loops over an idle period as long as the measured one
            i0, j0 = snapshot()
            k0 = extra() if extra else 0
            await asyncio.sleep(elapsed)
            i1, j1 = snapshot()
            k1 = extra() if extra else 0
            first = ((a1 - a0) - (i1 - i0)) / N
            second = (((b1 - b0) - (j1 - j0)) if not extra else
                      ((c1 - c0) - (k1 - k0))) / N
            out[label] = (first, second)

        ids: list[str] = []

        async def create(i: int) -> None:
            async with s.post(f"{base}/v1/payments", data=BODY,
                              headers=headers(f"wp-{i}")) as r:
                assert r.status == 201, await r.text()
                ids.append((await r.json())["id"])

        async def replay(i: int) -> None:
            async with s.post(f"{base}/v1/payments", data=BODY,
                              headers=headers(f"wp-{i}")) as r:
                assert r.status == 201 and r.headers.get("Idempotent-Replayed") == "true"

        async def get(i: int) -> None:
            async with s.get(f"{base}/v1/payments/{ids[i]}", headers=headers("unused")) as r:
                assert r.status == 200

        async def capture(i: int) -> None:
            async with s.post(f"{base}/v1/payments/{ids[i]}/capture", data="{}",
                              headers=headers(f"wp-cap-{i}")) as r:
                assert r.status == 200, await r.text()

        await run("new approved payment", create)
        await run("idempotent replay", replay)
        await run("GET payment", get)
        await run("capture, merchant notified", capture)
    return out


async def _serve(config: Path) -> tuple[web.AppRunner, str]:
    app = create_app(load_config(config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def sqlite_figures(tmp: Path) -> dict[str, tuple[float, float]]:
    config = write_config(tmp, f"sqlite:///{tmp / 'wp.db'}", PROVIDERS, **NOTIFIED)
    runner, base = await _serve(config)
    try:
        store: Any = runner.app[STORE]
        counter = SqliteCounter()
        await store._run(lambda: store._db().set_trace_callback(counter))
        return await _measure(base, counter.snapshot, None)
    finally:
        await runner.cleanup()


async def redis_figures(tmp: Path, url: str) -> dict[str, tuple[float, float]]:
    import redis

    counter = RedisCounter()
    info = redis.Redis.from_url(url)

    def commands() -> int:
        stats = info.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    runner, base = await _serve(write_config(tmp, url, PROVIDERS, **NOTIFIED))
    try:
        return await _measure(base, counter.snapshot, commands)
    finally:
        await runner.cleanup()
        info.close()


def main() -> None:
    tmp = tempdir()
    for sub in ("sqlite", "redis"):
        (tmp / sub).mkdir()
    lite = asyncio.run(sqlite_figures(tmp / "sqlite"))
    with private_redis() as url:
        red = asyncio.run(redis_figures(tmp / "redis", url))
    print(f"store work per request (mean over {N}, background loops subtracted)")
    print(f"{'':24} {'SQLite txns':>12} {'statements':>11} {'Redis trips':>12} "
          f"{'commands':>9}")
    for label in lite:
        t, st = lite[label]
        rt, cmd = red[label]
        print(f"{label:24} {t:12.1f} {st:11.1f} {rt:12.1f} {cmd:9.1f}")


if __name__ == "__main__":
    main()
