"""Authorization latency at fixed arrival rates, gateway vs direct, in the same run (#15).

Simulators in a `gateway sandbox` process, the gateway in a `gateway serve` process. For
each store (SQLite file, private redis-server) and each rate (open loop: arrivals at fixed
times whatever the answers), the same number of Stripe authorizations is sent

* **direct**: this process calls the Stripe simulator through the gateway's own Stripe
  adapter (the unmodified Stripe SDK plus the answer's parsing), no gateway in between;
* **gateway**: ``POST /v1/payments`` to the gateway, which makes that same call;

alternately (direct, gateway, direct, gateway, ...: ``--rounds``) so that both see the same
box. Printed per store and rate: p50 / p99 of each, the gateway's added p50 / p99 (gateway
minus direct), the ratio of the p50s, and any answer other than 201 (or an error).

    .venv/bin/python bench/authorize_latency.py [--rates 50,200] [--duration 10] [--rounds 1]
        [--stores sqlite,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import private_redis, tempdir
from bench.procs import (
    Run,
    gateway,
    median,
    open_loop,
    payment_call,
    pct,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session
from providers.base import AuthorizeRequest
from providers.stripe.adapter import StripeProvider


async def direct(url: str, rate: float, duration: float, prefix: str) -> Run:
    provider = StripeProvider("direct", api_key="sk_test_bench", base_url=url,
                              currencies=frozenset({"EUR"}), timeout_s=10)
    await provider.start()

    async def call(i: int) -> tuple[int, dict[str, Any] | None]:
        pid = f"pay_direct_{prefix}_{i}"
        result = await provider.authorize(AuthorizeRequest(
            payment_id=pid, amount=1000, currency="EUR", capture_manual=True,
            token="tok_visa", idempotency_key=f"{pid}_a1"))
        return (201 if result.status.value == "authorized" else 0), None

    try:
        return await open_loop(call, rate, duration)
    finally:
        await provider.close()


def _ms(x: float) -> str:
    return f"{x * 1000:8.1f}"


def _other(run: Run, ok: int = 201) -> str:
    bad = Counter(s.status for s in run.samples if s.status != ok)
    return ", ".join(f"{n}x{'error' if k == -1 else k}" for k, n in sorted(bad.items())) or "-"


async def one_store(label: str, store: str, urls: dict[str, str], d: Path,
                    rates: list[float], duration: float, rounds: int) -> list[str]:
    lines = []
    async with gateway(d, store, providers_at(urls, "stripe")) as gw, http_session() as s:
        # warm both paths (connections, imports, caches)
        await open_loop(payment_call(s, gw.base, f"warm-{label}"), 20, 1)
        await direct(urls["stripe"], 20, 1, f"warm{label}")
        for rate in rates:
            d_runs: list[Run] = []
            g_runs: list[Run] = []
            for r in range(rounds):
                d_runs.append(await direct(urls["stripe"], rate, duration,
                                           f"{label}{rate:g}r{r}{tag()}"))
                g_runs.append(await open_loop(
                    payment_call(s, gw.base, f"lat-{label}-{rate:g}-{r}-{tag()}"),
                    rate, duration))
            dl = [x for run in d_runs for x in run.latencies()]
            gl = [x for run in g_runs for x in run.latencies(201)]
            d50, d99 = median(dl), pct(dl, 0.99)
            g50, g99 = median(gl), pct(gl, 0.99)
            other = "; ".join(_other(run) for run in g_runs)
            lines.append(f"{label:7} {rate:6.0f}/s {_ms(d50)} {_ms(d99)} {_ms(g50)} {_ms(g99)} "
                         f"{_ms(g50 - d50)} {_ms(g99 - d99)} {g50 / d50:6.2f}x  {other}")
    return lines


async def main_async(ns: argparse.Namespace) -> None:
    rates = [float(x) for x in ns.rates.split(",")]
    stores = ns.stores.split(",")
    tmp = tempdir()
    lines: list[str] = []
    with sandbox(tmp / "sandbox.log") as ready:
        urls = ready["base_urls"]
        if "sqlite" in stores:
            lines += await one_store("sqlite", f"sqlite:///{tmp / 'sqlite' / 'gw.db'}", urls,
                                     tmp / "sqlite", rates, ns.duration, ns.rounds)
        if "redis" in stores:
            with private_redis() as url:
                lines += await one_store("redis", url, urls, tmp / "redis", rates,
                                         ns.duration, ns.rounds)
    print(f"Stripe authorization latency, open loop, {ns.duration:g} s per rate and round "
          f"x {ns.rounds} round(s); ms")
    print(f"{'store':7} {'rate':>8} {'dir p50':>8} {'dir p99':>8} {'gw p50':>8} {'gw p99':>8} "
          f"{'+p50':>8} {'+p99':>8} {'ratio':>7}  non-201 answers")
    for line in lines:
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="50,200")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--stores", default="sqlite,redis")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
