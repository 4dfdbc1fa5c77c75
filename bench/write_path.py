"""Store work per request on the hot path: SQLite transactions and statements, Redis round
trips and commands, for a new approved payment, an idempotent replay, a GET, and a capture
that owes the merchant a notification (its merchant has ``notify_all``; the notification
worker polls once an hour here, so no delivery is counted).

Counts, not timings (issue #12 "one write path", issue #15 "fewer, smaller writes"): the
SQLite connection's trace callback sees every statement (a write outside ``BEGIN`` is its
own transaction); on Redis every ``send_packed_command`` of the client is one round trip
and ``INFO commandstats`` gives the commands. Background loops (notification worker,
breaker sharing) are measured over an idle period of the same length and subtracted.

Then one more new payment and its capture, traced: what each SQLite transaction and each
Redis round trip of them was (the statements of each transaction; the script or command
of each trip).
The "before" column is the figure measured at commit 629685a (before issue #15 item 1),
printed for comparison: counts do not vary between runs.

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


#: measured at 629685a (before the two-write hot path): txns, statements, trips, commands
BEFORE = {"new approved payment": (5.0, 24.0, 11.2, 51.3),
          "idempotent replay": (1.0, 4.0, 2.0, 4.0),
          "GET payment": (0.0, 1.0, 1.0, 1.0),
          "capture, merchant notified": (4.0, 22.0, 10.0, 49.0)}


class SqliteCounter:
    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        self._in_tx = False
        #: when tracing: the statements of each transaction, and the reads outside one
        self.trace: list[list[str]] | None = None

    def __call__(self, sql: str) -> None:
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        self.statements += 1
        if self.trace is not None:
            words = " ".join(sql.split()[:4])
            if head == "BEGIN" or not self._in_tx:
                self.trace.append([])
            self.trace[-1].append(words)
        if head == "BEGIN":
            self._in_tx = True
        elif head in ("COMMIT", "ROLLBACK"):
            self._in_tx = False
            self.transactions += head == "COMMIT"
        elif head in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not self._in_tx:
            self.transactions += 1

    def snapshot(self) -> tuple[int, int]:
        return self.transactions, self.statements


def _describe(command: Any, scripts: dict[str, str]) -> str:
    """A packed Redis command (or pipeline) as ``NAME [script]`` per command."""
    raw = b"".join(command) if isinstance(command, list | tuple) else command
    raw = raw.encode() if isinstance(raw, str) else raw
    parts: list[str] = []
    for chunk in raw.split(b"\r\n*")[:8]:
        fields = [f for f in chunk.split(b"\r\n") if f and not f.startswith((b"$", b"*"))]
        if not fields:
            continue
        name = fields[0].decode(errors="replace").upper()
        if name == "EVALSHA" and len(fields) > 1:
            name += f" {scripts.get(fields[1].decode(errors='replace'), '?')}"
        parts.append(name)
    return " + ".join(parts)


class RedisCounter:
    def __init__(self) -> None:
        self.round_trips = 0
        self.trace: list[str] | None = None
        #: script sha -> name (gateway.store.redis._SCRIPTS)
        from gateway.store.redis import _SCRIPTS

        self.scripts = {hashlib.sha1(lua.encode()).hexdigest(): name
                        for name, lua in _SCRIPTS.items()}
        import redis.asyncio.connection as conn

        original = conn.AbstractConnection.send_packed_command
        counter = self

        async def counted(self: Any, command: Any, check_health: bool = True) -> None:
            counter.round_trips += 1
            if counter.trace is not None:
                counter.trace.append(_describe(command, counter.scripts))
            await original(self, command, check_health)

        conn.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]

    def snapshot(self) -> tuple[int, int]:
        return self.round_trips, 0


async def _measure(base: str, snapshot: Callable[[], tuple[int, int]],
                   extra: Callable[[], int] | None,
                   trace: tuple[Callable[[], None], Callable[[], None]] | None = None,
                   ) -> dict[str, tuple[float, float]]:
    start, stop = trace if trace is not None else (lambda: None, lambda: None)
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
        if trace is not None:  # one more new payment and its capture, each write of them
            start()
            await create(N)
            stop()
            start()
            await capture(N)
            stop()
    return out


async def _serve(config: Path) -> tuple[web.AppRunner, str]:
    app = create_app(load_config(config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def sqlite_figures(tmp: Path, traced: list[list[list[str]]]
                        ) -> dict[str, tuple[float, float]]:
    config = write_config(tmp, f"sqlite:///{tmp / 'wp.db'}", PROVIDERS, **NOTIFIED)
    runner, base = await _serve(config)
    try:
        store: Any = runner.app[STORE]
        counter = SqliteCounter()
        await store._run(lambda: store._db().set_trace_callback(counter))

        def start() -> None:
            traced.append([])
            counter.trace = traced[-1]

        def stop() -> None:
            counter.trace = None

        return await _measure(base, counter.snapshot, None, (start, stop))
    finally:
        await runner.cleanup()


async def redis_figures(tmp: Path, url: str, traced: list[list[str]]
                        ) -> dict[str, tuple[float, float]]:
    import redis

    counter = RedisCounter()

    def start() -> None:
        traced.append([])
        counter.trace = traced[-1]

    def stop() -> None:
        counter.trace = None

    info = redis.Redis.from_url(url)

    def commands() -> int:
        stats = info.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    runner, base = await _serve(write_config(tmp, url, PROVIDERS, **NOTIFIED))
    try:
        return await _measure(base, counter.snapshot, commands, (start, stop))
    finally:
        await runner.cleanup()
        info.close()


def main() -> None:
    tmp = tempdir()
    for sub in ("sqlite", "redis"):
        (tmp / sub).mkdir()
    lite_trace: list[list[list[str]]] = []
    redis_trace: list[list[str]] = []
    lite = asyncio.run(sqlite_figures(tmp / "sqlite", lite_trace))
    with private_redis() as url:
        red = asyncio.run(redis_figures(tmp / "redis", url, redis_trace))
    print(f"store work per request (mean over {N}, background loops subtracted; "
          "before = measured at 629685a)")
    print(f"{'':28} {'SQLite txns':>17} {'statements':>17} {'Redis trips':>17} "
          f"{'commands':>17}")
    print(f"{'':28} {'before -> now':>17} {'before -> now':>17} {'before -> now':>17} "
          f"{'before -> now':>17}")
    for label in lite:
        t, st = lite[label]
        rt, cmd = red[label]
        b = BEFORE.get(label, (float("nan"),) * 4)
        cells = [f"{x:.1f} -> {y:.1f}" for x, y in zip(b, (t, st, rt, cmd), strict=True)]
        print(f"{label:28} " + " ".join(f"{c:>17}" for c in cells))
    for label, lite_part, redis_part in (("one new approved payment", lite_trace[0],
                                          redis_trace[0]),
                                         ("its capture", lite_trace[1], redis_trace[1])):
        print(f"\n{label}, SQLite: each transaction (or read) and its statements")
        for i, statements in enumerate(lite_part, 1):
            kind = ("txn " if statements and statements[0].upper().startswith("BEGIN")
                    else "read")
            print(f"  {kind} {i}: " + "; ".join(statements))
        print(f"{label}, Redis: each round trip")
        for i, trip in enumerate(redis_part, 1):
            print(f"  trip {i}: {trip}")


if __name__ == "__main__":
    main()
