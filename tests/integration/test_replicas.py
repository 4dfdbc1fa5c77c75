"""Two real gateway processes sharing one Redis store and one sandbox process:
a breaker opened via replica 1 is honoured by replica 2 within 1 s; 50 concurrent
requests with one Idempotency-Key split across both replicas make one charge."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow

ROUTING = "version: 1\nrules:\n  - name: default\n    providers: [stripe_a, bt_b]\n"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[dict[str, int]]:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe", "braintree")) as ready:
        yield ready["ports"]


@pytest.fixture
async def replicas(tmp_path: Path, redis_url: str, sandbox: dict[str, int]
                   ) -> AsyncIterator[tuple[list[str], SimControl]]:
    (tmp_path / "routing.yaml").write_text(ROUTING)
    config = write_config(
        tmp_path, redis_url, routing_file="routing.yaml",
        providers={
            "stripe_a": {"type": "stripe", "api_key": "sk_test_replicas",
                         "base_url": f"http://127.0.0.1:{sandbox['stripe']}",
                         "currencies": ["EUR"], "timeout_s": 5,
                         "breaker": {"fail_max": 3, "reset_timeout_s": 30}},
            "bt_b": {"type": "braintree", "base_url": f"http://127.0.0.1:{sandbox['braintree']}",
                     "merchant_id": "m", "public_key": "pub", "private_key": "priv",
                     "merchant_account_ids": {"EUR": "m_eur"},
                     "currencies": ["EUR"], "timeout_s": 5},
        })
    procs = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            sim = SimControl(f"http://127.0.0.1:{sandbox['control']}", session)
            bases = []
            for i in range(2):
                proc, base = await start_gateway(config, tmp_path / f"gateway-{i}.log", session)
                procs.append(proc)
                bases.append(base)
            yield bases, sim
    finally:
        for proc in procs:
            stop(proc)


async def _circuit_state(session: aiohttp.ClientSession, base: str, provider: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    m = re.search(rf'^gateway_circuit_state{{provider="{provider}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else -1.0


async def test_breaker_opened_on_one_replica_is_honoured_by_the_other(replicas) -> None:
    (one, two), sim = replicas
    session = sim.session
    await sim.faults("stripe", mode="refuse")
    for i in range(3):
        async with session.post(f"{one}/v1/payments", data=json.dumps(payment_body()),
                                headers=headers(idem=f"rep-fail-{i}")) as r:
            assert (await r.json())["provider"] == "bt_b"
    opened = time.monotonic()
    assert await _circuit_state(session, one, "stripe_a") == 2

    async def open_on_two() -> bool:
        return await _circuit_state(session, two, "stripe_a") == 2

    await wait_for(open_on_two, timeout=5, interval=0.02)
    delay = time.monotonic() - opened
    print(f"breaker sharing delay: {delay * 1000:.0f} ms")
    assert delay < 1.0

    await sim.faults("stripe", mode="normal")
    before = (await sim.requests("stripe")).get("total", 0)
    async with session.post(f"{two}/v1/payments", data=json.dumps(payment_body()),
                            headers=headers(idem="rep-two")) as r:
        pay = await r.json()
    assert pay["attempts"][0]["error_code"] == "circuit_open"
    assert pay["provider"] == "bt_b"
    assert (await sim.requests("stripe")).get("total", 0) == before


async def test_fifty_same_key_requests_across_replicas_make_one_charge(replicas) -> None:
    bases, sim = replicas
    await sim.faults("stripe", latency_ms=300)
    body = json.dumps(payment_body(amount=777))

    async def one(i: int) -> tuple[int, dict]:
        async with sim.session.post(f"{bases[i % 2]}/v1/payments", data=body,
                                    headers=headers(idem="rep-storm")) as r:
            return r.status, await r.json()

    results = await asyncio.gather(*[one(i) for i in range(50)])
    assert {s for s, _ in results} <= {201, 409}
    ids = {b["id"] for s, b in results if s == 201}
    assert len(ids) == 1
    [pid] = ids
    assert len(await sim.charges("stripe", pid)) == 1
    assert await sim.charges("braintree", pid) == []
