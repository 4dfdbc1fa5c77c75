"""Closed-loop saturation throughput and gateway CPU per payment (#15).

Simulators in a `gateway sandbox` process, the gateway in a `gateway serve` process,
``--clients`` concurrent clients in this one, each sending its next ``POST /v1/payments``
(a new manual-capture card payment) as soon as the last one is answered. After a warm-up,
for ``--duration`` seconds: payments answered 201 per second, p50 / p99 latency, and the
gateway's CPU (utime + stime from /proc/<pid>/stat, its workers included) per payment in
ms; the simulators' CPU per payment beside it. The direct row is the same closed loop
calling the Stripe simulator through the Stripe adapter from this process (no gateway):
what the simulator and the load generator can do on this box.

Per store (SQLite file, private redis-server) and provider (stripe, braintree, adyen), and
``--workers 2`` (Stripe) for the scaling; medians of ``--rounds`` runs. ``--loops
uvloop,asyncio`` measures each row on both event loops (``GATEWAY_EVENT_LOOP``), the runs
alternated so that the box's noise falls on both. ``--sdk-threads 8,64`` does the same
for the Braintree / Adyen rows over their SDK thread pool sizes (provider option
``sdk_threads``), and ``--provider-latency-ms 100`` makes every simulator answer that much
later (a real provider's answer time; the pool holds a thread for all of it).

    .venv/bin/python bench/saturation.py [--stores sqlite,redis]
        [--providers stripe,braintree,adyen] [--workers 1,2] [--clients 64]
        [--duration 10] [--rounds 3] [--loops asyncio] [--sdk-threads 8]
        [--provider-latency-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import private_redis, tempdir
from bench.procs import (
    OPEN_ADMISSION,
    Run,
    closed_loop,
    cpu_seconds,
    gateway,
    median,
    payment_call,
    pct,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session
from gateway.http_server import EVENT_LOOP_ENV
from providers.base import AuthorizeRequest
from providers.stripe.adapter import StripeProvider

WARMUP = 2.0


async def measured(run_load: Any, pids: list[int], duration: float) -> tuple[Run, list[float]]:
    """Run the load; the CPU seconds each of ``pids`` used inside the measured window."""
    cpu: list[list[float]] = []

    async def sample() -> None:
        await asyncio.sleep(WARMUP)
        cpu.append([cpu_seconds(p) for p in pids])
        await asyncio.sleep(duration)
        cpu.append([cpu_seconds(p) for p in pids])

    run, _ = await asyncio.gather(run_load(), sample())
    return run, [b - a for a, b in zip(cpu[0], cpu[1], strict=True)]


async def one_gateway(store: str, urls: dict[str, str], d: Path, kind: str, workers: int,
                      clients: int, duration: float, sandbox_pid: int,
                      sdk_threads: int | None = None) -> dict[str, float]:
    providers = providers_at(urls, kind)
    if sdk_threads is not None:
        for entry in providers.values():
            entry["sdk_threads"] = sdk_threads
    async with gateway(d, store, providers, workers=workers, admission=OPEN_ADMISSION) as gw, \
            http_session() as s:
        # new connections per client so that the kernel spreads them over the workers
        call = payment_call(s, gw.base, f"sat-{kind}-{workers}-{tag()}")
        run, (gw_cpu, sim_cpu) = await measured(
            lambda: closed_loop(call, clients, duration, WARMUP), [gw.pid, sandbox_pid],
            duration)
    ok = run.count(201)
    return {"rate": ok / duration, "p50": median(run.latencies(201)),
            "p99": pct(run.latencies(201), 0.99), "cpu_ms": gw_cpu / max(ok, 1) * 1000,
            "sim_ms": sim_cpu / max(ok, 1) * 1000, "errors": len(run.samples) - ok}


async def one_direct(urls: dict[str, str], clients: int, duration: float,
                     sandbox_pid: int) -> dict[str, float]:
    provider = StripeProvider("direct", api_key="sk_test_bench", base_url=urls["stripe"],
                              currencies=frozenset({"EUR"}), timeout_s=10)
    await provider.start()
    run_tag = tag()

    async def call(i: int) -> tuple[int, dict[str, Any] | None]:
        pid = f"pay_sat_{run_tag}_{i}"
        res = await provider.authorize(AuthorizeRequest(
            payment_id=pid, amount=1000, currency="EUR", capture_manual=True,
            token="tok_visa", idempotency_key=f"{pid}_a1"))
        return (201 if res.status.value == "authorized" else 0), None

    try:
        run, (sim_cpu,) = await measured(lambda: closed_loop(call, clients, duration, WARMUP),
                                         [sandbox_pid], duration)
    finally:
        await provider.close()
    ok = run.count(201)
    return {"rate": ok / duration, "p50": median(run.latencies(201)),
            "p99": pct(run.latencies(201), 0.99), "cpu_ms": float("nan"),
            "sim_ms": sim_cpu / max(ok, 1) * 1000, "errors": len(run.samples) - ok}


async def provider_latency(control_url: str, ms: int) -> None:
    async with http_session() as s:
        for sim in ("stripe", "braintree", "adyen"):
            async with s.post(f"{control_url.rstrip('/')}/_sim/{sim}/faults",
                              json={"latency_ms": ms}) as r:
                assert r.status == 200, await r.text()


def _row(label: str, runs: list[dict[str, float]]) -> str:
    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs)

    rates = "/".join(f"{r['rate']:.0f}" for r in runs)
    return (f"{label:36} {med('rate'):8.0f} {med('cpu_ms'):8.2f} {med('sim_ms'):8.2f} "
            f"{med('p50') * 1000:8.1f} {med('p99') * 1000:8.1f} {int(med('errors')):7d}  "
            f"{rates}")


async def main_async(ns: argparse.Namespace) -> None:
    tmp = tempdir()
    stores = ns.stores.split(",")
    kinds = ns.providers.split(",")
    workers = [int(w) for w in ns.workers.split(",")]
    loops = ns.loops.split(",")
    threads = [int(t) for t in ns.sdk_threads.split(",")] if ns.sdk_threads else []
    rows: list[str] = []
    with sandbox(tmp / "sandbox.log") as ready, private_redis() as redis_url:
        urls, sim_pid = ready["base_urls"], int(ready["pid"])
        if ns.provider_latency_ms:
            await provider_latency(ready["control_url"], ns.provider_latency_ms)
        runs = [await one_direct(urls, ns.clients, ns.duration, sim_pid)
                for _ in range(ns.rounds)]
        rows.append(_row("direct (Stripe SDK, no gw)", runs))
        n = 0
        for store in stores:
            for kind in kinds:
                for w in workers:
                    if w > 1 and kind != "stripe":
                        continue
                    pools: list[int | None] = (
                        [None] if kind == "stripe" or not threads else list(threads))
                    variants = [(lp, t) for lp in loops for t in pools]
                    by: dict[tuple[str, int | None], list[dict[str, float]]] = {
                        v: [] for v in variants}
                    for _ in range(ns.rounds):
                        for lp, t in variants:  # alternated: the same noise on each
                            n += 1
                            d = tmp / f"run{n}"
                            url = (f"sqlite:///{d / 'gw.db'}" if store == "sqlite" else
                                   redis_url.rsplit("/", 1)[0] + f"/{n % 16}")
                            os.environ[EVENT_LOOP_ENV] = lp
                            by[(lp, t)].append(await one_gateway(
                                url, urls, d, kind, w, ns.clients, ns.duration, sim_pid, t))
                    for lp, t in variants:
                        suffix = (f" {lp}" if len(loops) > 1 else "") + (
                            f" thr={t}" if t is not None and len(pools) > 1 else "")
                        rows.append(_row(f"{store} {kind} w={w}{suffix}", by[(lp, t)]))
                        print(rows[-1], flush=True)
    print(f"\nclosed loop, {ns.clients} clients, {ns.duration:g} s measured after "
          f"{WARMUP:g} s warm-up, median of {ns.rounds} run(s), event loop(s) {ns.loops}, "
          f"provider latency {ns.provider_latency_ms} ms")
    print(f"{'':36} {'pay/s':>8} {'gw cpu':>8} {'sim cpu':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-201':>7}  pay/s of each run")
    print(f"{'':36} {'':8} {'ms/pay':>8} {'ms/pay':>8}")
    for row in rows:
        print(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--providers", default="stripe,braintree,adyen")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sdk-threads", default="",
                   help="Braintree/Adyen SDK pool sizes to compare, e.g. 8,64 (default: "
                        "the gateway's)")
    p.add_argument("--provider-latency-ms", type=int, default=0)
    p.add_argument("--loops", default="asyncio",
                   help="event loops of gateway serve, comma-separated: uvloop,asyncio")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
