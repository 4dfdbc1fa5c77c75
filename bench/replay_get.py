"""Idempotent replays and reads (#15): what a merchant's retry and a GET cost, beside a
new authorization in the same run.

Simulators in a `gateway sandbox` process, the gateway in a `gateway serve` process (Stripe),
the load from this one. Per store (SQLite file, private redis-server): ``--payments``
payments are created first; then, alternated for ``--rounds`` rounds:

- ``authorize``: new payments (``POST /v1/payments``, fresh keys), the reference;
- ``replay``: the same ``POST`` again with one of the created payments' key and body
  (answered from the idempotency record: 201, ``Idempotent-Replayed: true``, no provider
  call);
- ``get``: ``GET /v1/payments/{id}`` of a created payment;

each as a closed loop of ``--clients`` clients for ``--duration`` s (requests/s, p50/p99,
gateway CPU-ms per request from /proc/<pid>/stat) and as an open loop at ``--rate``
requests/s (p50/p99: latency at a fixed arrival rate). Printed: medians over the rounds,
the ratio of each to ``authorize`` (CPU per request, throughput) measured in the same
rounds, every answer that was not the expected one, and the Stripe simulator's request
count across all the replays and reads (must be 0: a replay never calls the provider).

    .venv/bin/python bench/replay_get.py [--stores sqlite,redis] [--payments 500]
        [--rounds 3] [--duration 5] [--clients 32] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import headers, private_redis, tempdir
from bench.procs import (
    OPEN_ADMISSION,
    Call,
    Run,
    closed_loop,
    cpu_seconds,
    gateway,
    median,
    open_loop,
    pct,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session

KINDS = ("authorize", "replay", "get")


def _body(ref: str) -> str:
    return json.dumps({"amount": 1000, "currency": "EUR", "capture": "manual",
                       "reference": ref,
                       "payment_method": {"type": "card", "token": "tok_visa"}})


async def create(s: aiohttp.ClientSession, base: str, n: int, prefix: str
                 ) -> list[tuple[str, str, str]]:
    """``n`` authorized payments: (Idempotency-Key, body, id) each."""
    out: list[tuple[str, str, str]] = []
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            key = f"{prefix}-{i}"
            body = _body(key)
            async with s.post(f"{base}/v1/payments", data=body, headers=headers(key)) as r:
                payload = await r.json()
                if r.status != 201:
                    raise SystemExit(f"creating payments: {r.status} {payload}")
            out.append((key, body, payload["id"]))

    await asyncio.gather(*[worker() for _ in range(16)])
    return out


def calls(s: aiohttp.ClientSession, base: str, created: list[tuple[str, str, str]],
          prefix: str) -> dict[str, Call]:
    """One call per kind; the status is the HTTP status, or 0 when the answer is not the
    expected one (a replay without Idempotent-Replayed, another payment's body)."""
    new_body = _body("bench-new")

    async def authorize(i: int) -> tuple[int, dict[str, Any] | None]:
        async with s.post(f"{base}/v1/payments", data=new_body,
                          headers=headers(f"{prefix}-new-{i}")) as r:
            await r.read()
            return r.status, None

    async def replay(i: int) -> tuple[int, dict[str, Any] | None]:
        key, body, pid = created[i % len(created)]
        async with s.post(f"{base}/v1/payments", data=body, headers=headers(key)) as r:
            payload = await r.json()
            same = (payload.get("id") == pid and r.headers.get("Idempotent-Replayed") == "true")
            return (r.status if same else 0), None

    async def get(i: int) -> tuple[int, dict[str, Any] | None]:
        _, _, pid = created[i % len(created)]
        async with s.get(f"{base}/v1/payments/{pid}", headers=headers("unused")) as r:
            payload = await r.json()
            return (r.status if payload.get("id") == pid else 0), None

    return {"authorize": authorize, "replay": replay, "get": get}


EXPECTED = {"authorize": 201, "replay": 201, "get": 200}


async def closed(call: Call, clients: int, duration: float, pid: int) -> tuple[Run, float]:
    """The closed loop, and the gateway's CPU seconds in its measured window."""
    warmup = 1.0
    cpu: list[float] = []

    async def sample() -> None:
        await asyncio.sleep(warmup)
        cpu.append(cpu_seconds(pid))
        await asyncio.sleep(duration)
        cpu.append(cpu_seconds(pid))

    run, _ = await asyncio.gather(closed_loop(call, clients, duration, warmup), sample())
    return run, cpu[1] - cpu[0]


async def stripe_requests(s: aiohttp.ClientSession, control: str) -> int:
    async with s.get(f"{control}/_sim/stripe/requests") as r:
        return int((await r.json())["total"])


async def one_store(store: str, url: str, urls: dict[str, str], control: str, d: Path,
                    ns: argparse.Namespace) -> list[str]:
    figures: dict[str, dict[str, list[float]]] = {k: {} for k in KINDS}
    wrong: Counter[str] = Counter()
    sim_calls = 0

    def add(kind: str, key: str, value: float) -> None:
        figures[kind].setdefault(key, []).append(value)

    async with gateway(d, url, providers_at(urls, "stripe"), admission=OPEN_ADMISSION) as gw, \
            http_session(limit=0) as s:
        run_tag = tag()
        created = await create(s, gw.base, ns.payments, f"rg-{run_tag}")
        for r in range(ns.rounds):
            for kind in KINDS:
                call = calls(s, gw.base, created, f"rg-{run_tag}-{r}-{kind}")[kind]
                before = await stripe_requests(s, control)
                run, cpu = await closed(call, ns.clients, ns.duration, gw.pid)
                ok = run.count(EXPECTED[kind])
                add(kind, "rate", ok / ns.duration)
                add(kind, "cpu_ms", cpu / max(ok, 1) * 1000)
                add(kind, "c_p50", median(run.latencies(EXPECTED[kind])))
                add(kind, "c_p99", pct(run.latencies(EXPECTED[kind]), 0.99))
                rate_call = calls(s, gw.base, created, f"rg-{run_tag}-{r}-{kind}-o")[kind]
                orun = await open_loop(rate_call, ns.rate, ns.duration)
                add(kind, "o_p50", median(orun.latencies(EXPECTED[kind])))
                add(kind, "o_p99", pct(orun.latencies(EXPECTED[kind]), 0.99))
                for x in (*run.samples, *orun.samples):
                    if x.status != EXPECTED[kind]:
                        wrong[f"{kind}:{'error' if x.status == -1 else x.status}"] += 1
                if kind != "authorize":
                    sim_calls += await stripe_requests(s, control) - before

    def med(kind: str, key: str) -> float:
        return statistics.median(figures[kind][key])

    lines = []
    for kind in KINDS:
        cpu_ratio = med(kind, "cpu_ms") / med("authorize", "cpu_ms")
        rate_ratio = med(kind, "rate") / med("authorize", "rate")
        lines.append(
            f"{store + ' ' + kind:18} {med(kind, 'rate'):8.0f} {rate_ratio:6.2f}x "
            f"{med(kind, 'cpu_ms'):7.2f} {cpu_ratio:6.2f}x {med(kind, 'c_p50') * 1000:7.1f} "
            f"{med(kind, 'c_p99') * 1000:7.1f} {med(kind, 'o_p50') * 1000:7.1f} "
            f"{med(kind, 'o_p99') * 1000:7.1f}   "
            + "/".join(f"{x:.0f}" for x in figures[kind]["rate"]))
    other = ", ".join(f"{n}x{k}" for k, n in sorted(wrong.items())) or "none"
    lines.append(f"{store}: unexpected answers: {other}; Stripe simulator requests during "
                 f"the replays and reads: {sim_calls}")
    return lines


async def main_async(ns: argparse.Namespace) -> None:
    tmp = tempdir()
    out: list[str] = []
    with sandbox(tmp / "sandbox.log") as ready, private_redis() as redis_url:
        urls = ready["base_urls"]
        control = ready["control_url"].rstrip("/")
        for n, store in enumerate(ns.stores.split(",")):
            d = tmp / f"run{n}"
            d.mkdir(parents=True)
            url = (f"sqlite:///{d / 'gw.db'}" if store == "sqlite"
                   else redis_url.rsplit("/", 1)[0] + f"/{n % 16}")
            lines = await one_store(store, url, urls, control, d, ns)
            for line in lines:
                print(line, flush=True)
            out += lines
    print(f"\n{ns.payments} stored payments per store; closed loop {ns.clients} clients and "
          f"open loop {ns.rate:g}/s, {ns.duration:g} s each, medians of {ns.rounds} rounds; "
          "x = ratio to authorize in the same rounds")
    print(f"{'':18} {'req/s':>8} {'':7} {'cpu ms':>7} {'':7} {'c p50':>7} {'c p99':>7} "
          f"{'o p50':>7} {'o p99':>7}   req/s of each round")
    for line in out:
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--payments", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rate", type=float, default=200.0)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
