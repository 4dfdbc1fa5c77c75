"""uvloop vs asyncio under the same noise: two `gateway serve` processes, one per event
loop (``GATEWAY_EVENT_LOOP``), loaded AT THE SAME TIME by one closed loop whose clients
are split evenly between them, so a busy moment on the shared box falls on both. Per
round and loop: payments/s and gateway CPU-ms per payment (/proc/<pid>/stat) over the
same window; then the medians and the uvloop/asyncio ratios. Stripe, per store.

    .venv/bin/python bench/loops_side_by_side.py [--stores sqlite,redis] [--clients 32]
        [--duration 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import private_redis, tempdir
from bench.procs import (
    OPEN_ADMISSION,
    closed_loop,
    cpu_seconds,
    gateway,
    payment_call,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session
from gateway.http_server import EVENT_LOOP_ENV

LOOPS = ("asyncio", "uvloop")
WARMUP = 2.0


async def one_round(store: str, urls: dict[str, str], d: Path, redis_db: str,
                    clients: int, duration: float) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    async with _both(store, urls, d, redis_db) as gws, http_session() as s:
        runs = {}

        async def load(lp: str) -> None:
            call = payment_call(s, gws[lp].base, f"loops-{lp}-{tag()}")
            runs[lp] = await closed_loop(call, clients // 2, duration, WARMUP)

        async def sample() -> list[list[float]]:
            await asyncio.sleep(WARMUP)
            a = [cpu_seconds(gws[lp].pid) for lp in LOOPS]
            await asyncio.sleep(duration)
            return [a, [cpu_seconds(gws[lp].pid) for lp in LOOPS]]

        *_, cpu = await asyncio.gather(*(load(lp) for lp in LOOPS), sample())
        for i, lp in enumerate(LOOPS):
            ok = runs[lp].count(201)
            out[lp] = (ok / duration, (cpu[1][i] - cpu[0][i]) / max(ok, 1) * 1000)
    return out


class _both:
    def __init__(self, store: str, urls: dict[str, str], d: Path, redis_db: str) -> None:
        self.args = (store, urls, d, redis_db)
        self.cms: list[object] = []

    async def __aenter__(self) -> dict[str, object]:
        store, urls, d, redis_db = self.args
        gws = {}
        for n, lp in enumerate(LOOPS):
            os.environ[EVENT_LOOP_ENV] = lp
            url = (f"sqlite:///{d / lp / 'gw.db'}" if store == "sqlite"
                   else f"{redis_db}{n}")
            cm = gateway(d / lp, url, providers_at(urls, "stripe"), admission=OPEN_ADMISSION)
            gws[lp] = await cm.__aenter__()
            self.cms.append(cm)
        return gws

    async def __aexit__(self, *exc: object) -> None:
        for cm in reversed(self.cms):
            await cm.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def main_async(ns: argparse.Namespace) -> None:
    tmp = tempdir()
    with sandbox(tmp / "sandbox.log") as ready, private_redis() as redis_url:
        base = redis_url.rsplit("/", 1)[0] + "/"
        for store in ns.stores.split(","):
            per: dict[str, list[tuple[float, float]]] = {lp: [] for lp in LOOPS}
            for r in range(ns.rounds):
                got = await one_round(store, ready["base_urls"], tmp / f"{store}{r}",
                                      base, ns.clients, ns.duration)
                for lp in LOOPS:
                    per[lp].append(got[lp])
                print(f"{store} round {r + 1}: " + "  ".join(
                    f"{lp} {got[lp][0]:.0f}/s {got[lp][1]:.2f} ms" for lp in LOOPS),
                      flush=True)
            med = {lp: (statistics.median(x[0] for x in per[lp]),
                        statistics.median(x[1] for x in per[lp])) for lp in LOOPS}
            ratios = [u[1] / a[1] for a, u in zip(per["asyncio"], per["uvloop"], strict=True)]
            print(f"{store}: asyncio {med['asyncio'][0]:.0f}/s {med['asyncio'][1]:.2f} ms/pay, "
                  f"uvloop {med['uvloop'][0]:.0f}/s {med['uvloop'][1]:.2f} ms/pay; CPU "
                  f"uvloop/asyncio per round {' '.join(f'{x:.2f}' for x in ratios)}, "
                  f"median {statistics.median(ratios):.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=5)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
