"""Authorize latency through the whole gateway, SQLite store vs Redis store, side by side.

Same machine, same run, same in-process Stripe simulator: ROUNDS alternating rounds of
PER_ROUND sequential create+authorize requests on each store; prints medians, p95 and the
Redis/SQLite ratio of medians, plus idempotent replays (no provider call).

    .venv/bin/python bench/stores.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import headers, private_redis, running_gateway, tempdir, write_config

ROUNDS = 5
PER_ROUND = 60
PROVIDERS = {"stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR"]}}
BODY = json.dumps({"amount": 1000, "currency": "EUR", "capture": "manual",
                   "payment_method": {"type": "card", "token": "tok_visa"}})


async def _round(base: str, s: aiohttp.ClientSession, tag: str) -> list[float]:
    """PER_ROUND requests with keys ``tag-i`` (a second call with the same tag replays)."""
    out = []
    for i in range(PER_ROUND):
        t = time.perf_counter()
        async with s.post(f"{base}/v1/payments", data=BODY, headers=headers(f"{tag}-{i}")) as r:
            assert r.status == 201
            await r.read()
        out.append(time.perf_counter() - t)
    return out


def _p95(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.95) - 1]


async def main() -> None:
    with private_redis() as redis_url:
        stores = {"sqlite": f"sqlite:///{tempdir() / 'bench.db'}", "redis": redis_url}
        new: dict[str, list[float]] = {k: [] for k in stores}
        replay: dict[str, list[float]] = {k: [] for k in stores}
        async with aiohttp.ClientSession() as s:
            gateways = {}
            contexts = []
            for name, url in stores.items():
                ctx = running_gateway(write_config(tempdir(), url, PROVIDERS))
                contexts.append(ctx)
                gateways[name] = (await ctx.__aenter__())[0]
            try:
                for r in range(ROUNDS):
                    for name, base in gateways.items():
                        new[name] += await _round(base, s, f"{name}-{r}")
                        replay[name] += await _round(base, s, f"{name}-{r}")
            finally:
                for ctx in contexts:
                    await ctx.__aexit__(None, None, None)
    for name in stores:
        print(f"{name:6s} authorize: median {statistics.median(new[name]) * 1000:6.2f} ms, "
              f"p95 {_p95(new[name]) * 1000:6.2f} ms | idempotent replay: median "
              f"{statistics.median(replay[name]) * 1000:6.2f} ms  (n={len(new[name])})")
    ratio = statistics.median(new["redis"]) / statistics.median(new["sqlite"])
    print(f"redis/sqlite median authorize latency ratio: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
