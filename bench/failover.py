"""How fast traffic moves off a dying provider, and what it costs.

A steady stream of payments (4 concurrent clients) goes to provider A (Stripe simulator)
with B (Braintree simulator) as the next candidate. At t=FAULT_AT A stops listening.
Printed: time from the fault to the first payment authorized at B, to A's breaker
opening, payment latency medians before / during / after the breaker opened, and that
every payment was charged exactly once.

    .venv/bin/python bench/failover.py
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

from bench.common import headers, running_gateway, tempdir, write_config

FAULT_AT = 2.0
DURATION = 6.0
CLIENTS = 4
ROUTING = "version: 1\nrules:\n  - name: default\n    providers: [stripe_a, bt_b]\n"


async def main() -> None:
    d = tempdir()
    providers = {
        "stripe_a": {"type": "stripe", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2,
                     "breaker": {"fail_max": 5, "reset_timeout_s": 30}},
        "bt_b": {"type": "braintree", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2},
    }
    cfg = write_config(d, f"sqlite:///{d / 'bench.db'}", providers, ROUTING)
    results: list[tuple[float, float, str, str, str]] = []  # start, latency, provider, status,
    # first attempt's error code
    payment_ids: list[str] = []
    async with running_gateway(cfg) as (base, control), aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        fault_time = t0 + FAULT_AT
        body = json.dumps({"amount": 1000, "currency": "EUR", "capture": "manual",
                           "payment_method": {"type": "card", "token": "tok_visa"}})
        counter = 0

        async def client() -> None:
            nonlocal counter
            while time.monotonic() - t0 < DURATION:
                counter += 1
                start = time.monotonic()
                async with s.post(f"{base}/v1/payments", data=body,
                                  headers=headers(f"fo-{counter}")) as r:
                    pay = await r.json()
                first = pay["attempts"][0].get("error_code", "") or ""
                payment_ids.append(pay["id"])
                results.append((start, time.monotonic() - start, pay["provider"],
                                pay["status"], first))

        async def fault() -> None:
            await asyncio.sleep(FAULT_AT)
            async with s.post(f"{control}/_sim/stripe/faults", json={"mode": "refuse"}) as r:
                assert r.status == 200

        await asyncio.gather(fault(), *[client() for _ in range(CLIENTS)])
        async with s.post(f"{control}/_sim/stripe/faults", json={"mode": "normal"}) as r:
            assert r.status == 200
        charge_counts = []
        for pid in payment_ids:
            n = 0
            for sim in ("stripe", "braintree"):
                async with s.get(f"{control}/_sim/{sim}/charges", params={"reference": pid}) as r:
                    n += len((await r.json())["charges"])
            charge_counts.append(n)
    before = [lat for st, lat, p, _, _ in results if st < fault_time]
    after = [(st, lat, p, f) for st, lat, p, _, f in results if st >= fault_time]
    first_b = min((st + lat for st, lat, p, f in after if p == "bt_b"), default=None)
    open_skip = [(st, lat) for st, lat, p, f in after if f == "circuit_open"]
    refused = [lat for st, lat, p, f in after if f == "connection_refused"]
    print(f"payments: {len(results)} ({len(before)} before the fault, {len(after)} after)")
    print(f"median latency before the fault: {statistics.median(before) * 1000:.1f} ms")
    if first_b is not None:
        print(f"first payment authorized at B: {(first_b - fault_time) * 1000:.0f} ms "
              "after A stopped listening")
    if refused:
        print(f"payments that tried A first (refused, then B): {len(refused)}, median "
              f"{statistics.median(refused) * 1000:.1f} ms")
    if open_skip:
        while_open = statistics.median([lat for _, lat in open_skip]) * 1000
        print(f"breaker open: first skip {(open_skip[0][0] - fault_time) * 1000:.0f} ms after "
              f"the fault; median latency while open {while_open:.1f} ms")
    statuses = {st for _, _, _, st, _ in results}
    print(f"final statuses: {sorted(statuses)}")
    exactly_one = sum(1 for n in charge_counts if n == 1)
    print(f"payments charged exactly once across both simulators: {exactly_one} of "
          f"{len(charge_counts)}; never twice: {max(charge_counts) <= 1}")
    unknown = [n for (_, _, _, st, _), n in zip(results, charge_counts, strict=True)
               if st == "unknown"]
    if unknown:
        print(f"left unknown (connection cut mid-request; reconciliation resolves them): "
              f"{len(unknown)}, holding {sum(unknown)} charge(s)")


if __name__ == "__main__":
    asyncio.run(main())
