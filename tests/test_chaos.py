"""Chaos property test: a few hundred payments while a seeded random schedule injects
faults into three providers. Whatever happens, no payment is ever charged at two
providers (or twice at one), and every payment's final status agrees with what the
simulators hold."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config
from tests.gateway_harness import SimControl, headers, payment_body, write_config

pytestmark = pytest.mark.slow

SIMS = {"stripe_c": "stripe", "bt_c": "braintree", "adyen_c": "adyen"}
ROUTING = ("version: 1\nrules:\n  - name: default\n"
           "    providers: [stripe_c, bt_c, adyen_c]\n")
FAULTS: list[dict[str, Any]] = [
    {"mode": "normal", "error_rate": 0.0, "rate_limit_rate": 0.0},
    {"mode": "refuse"},
    {"mode": "normal", "rate_limit_rate": 1.0},
    {"mode": "normal", "error_rate": 0.5, "error_status": 503},
    {"mode": "drop_after_process"},
    {"mode": "hang"},
]
WEIGHTS = [5, 2, 2, 2, 2, 1]
PAYMENTS = 240
CONCURRENCY = 12
SPREAD_S = 4.0
APPROVED = {"authorized", "captured"}


def _providers() -> dict[str, Any]:
    common = {"sandbox": True, "currencies": ["EUR"], "timeout_s": 0.6,
              "connect_timeout_s": 0.3, "breaker": {"fail_max": 4, "reset_timeout_s": 0.5}}
    return {
        "stripe_c": {"type": "stripe", **common},
        "bt_c": {"type": "braintree", **common},
        "adyen_c": {"type": "adyen", "merchant_account": "ChaosECOM", **common},
    }


async def test_random_faults_never_charge_twice(tmp_path: Path, store_url: str,
                                                aiohttp_client) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed}")
    rng = random.Random(seed)
    (tmp_path / "routing.yaml").write_text(ROUTING)
    config = write_config(tmp_path, store_url, providers=_providers(),
                          routing_file="routing.yaml", request_deadline_s=8,
                          retry={"attempts": 2, "backoff_s": 0.02, "backoff_max_s": 0.05,
                                 "jitter_s": 0.01})
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    async with aiohttp.ClientSession() as session:
        sim = SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)

        applied: list[tuple[str, dict[str, Any]]] = []

        async def chaos_monkey(stop: asyncio.Event) -> None:
            while not stop.is_set():
                name = rng.choice(list(SIMS.values()))
                fault = rng.choices(FAULTS, WEIGHTS)[0]
                await sim.faults(name, **fault)
                applied.append((name, fault))
                try:
                    await asyncio.wait_for(stop.wait(), rng.uniform(0.05, 0.4))
                except TimeoutError:
                    pass

        sem = asyncio.Semaphore(CONCURRENCY)

        async def pay(i: int) -> dict[str, Any]:
            body = payment_body(amount=100 + i, capture=rng.choice(["manual", "automatic"]))
            await asyncio.sleep(rng.uniform(0, SPREAD_S))  # spread payments over the schedule
            async with sem:
                r = await client.post("/v1/payments", data=json.dumps(body),
                                      headers=headers(idem=f"chaos-{seed}-{i}"))
                assert r.status == 201, await r.text()
                return await r.json()

        stop = asyncio.Event()
        monkey = asyncio.create_task(chaos_monkey(stop))
        try:
            payments = await asyncio.gather(*[pay(i) for i in range(PAYMENTS)])
        finally:
            stop.set()
            await monkey
        for name in SIMS.values():
            await sim.faults(name, **FAULTS[0])

        outcomes: dict[str, int] = {}
        for p in payments:
            outcomes[p["status"]] = outcomes.get(p["status"], 0) + 1
            r = await client.get(f"/v1/payments/{p['id']}", headers=headers())
            final = await r.json()
            held = {name: await sim.charges(s, p["id"]) for name, s in SIMS.items()}
            charged = {name: c for name, c in held.items() if c}
            context = f"seed {seed}, payment {final}, simulators {held}"
            assert len(charged) <= 1, f"charged at two providers: {context}"
            for charges in charged.values():
                assert len(charges) == 1, f"charged twice: {context}"
            status = final["status"]
            if status in APPROVED:
                assert list(charged) == [final["provider"]], context
                [charge] = charged[final["provider"]]
                assert charge["amount"] == final["amount"], context
                assert charge["id"] == final["provider_reference"] or \
                    final["provider"] == "adyen_c", context
                assert charge["amount_captured"] == final["amount_captured"], context
            elif status == "failed":
                assert not charged, f"failed but money moved: {context}"
            elif status == "unknown":
                assert set(charged) <= {final["provider"]}, context
            else:
                raise AssertionError(f"unexpected status {status}: {context}")
        print(f"chaos outcomes: {outcomes}; faults applied: {len(applied)}")
        assert sum(1 for _, f in applied if f is not FAULTS[0]) >= 5  # the chaos did happen
        assert outcomes.get("authorized", 0) + outcomes.get("captured", 0) > PAYMENTS // 10
