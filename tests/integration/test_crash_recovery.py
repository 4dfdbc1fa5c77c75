"""Crash safety with real processes: kill -9 the gateway mid-authorization, restart it,
retry with the same Idempotency-Key -> no second PaymentIntent; the payment resolves to the
simulator's authorization. Runs on SQLite and on Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import restart_gateway, sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe",)) as ready:
        yield ready


async def test_kill_9_mid_authorization_then_retry_makes_no_second_charge(
    store_url: str, tmp_path: Path, sandbox: dict[str, Any]
) -> None:
    stripe_port, control_port = sandbox["ports"]["stripe"], sandbox["ports"]["control"]
    config = write_config(
        tmp_path, store_url, request_deadline_s=3,
        providers={"stripe_main": {"type": "stripe", "api_key": "sk_test_crash",
                                   "base_url": f"http://127.0.0.1:{stripe_port}",
                                   "currencies": ["EUR"], "timeout_s": 10}},
    )
    log = tmp_path / "gateway.log"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sim = SimControl(f"http://127.0.0.1:{control_port}", session)
        await sim.faults("stripe", latency_ms=2000)

        gateway, base = await start_gateway(config, log, session)
        try:
            body = json.dumps(payment_body(amount=4200))
            first = asyncio.create_task(session.post(f"{base}/v1/payments", data=body,
                                                     headers=headers(idem="crash-1")))

            async def in_flight() -> bool:
                return (await sim.requests("stripe")).get("total", 0) >= 1

            await wait_for(in_flight, timeout=10)
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait(timeout=10)
            with pytest.raises(aiohttp.ClientError):
                await first
        finally:
            stop(gateway)

        gateway = await restart_gateway(gateway, base, config, log, session)
        try:

            async def retry() -> tuple[int, dict] | None:
                async with session.post(f"{base}/v1/payments", data=body,
                                        headers=headers(idem="crash-1")) as r:
                    if r.status == 409:  # the crashed owner's lease has not lapsed yet
                        return None
                    return r.status, await r.json()

            status, pay = await wait_for(retry, timeout=30, interval=0.25)
            assert status == 201, pay
            assert pay["status"] in ("pending", "unknown", "authorized")

            async def authorized() -> dict | None:
                async with session.get(f"{base}/v1/payments/{pay['id']}",
                                       headers=headers()) as r:
                    p = await r.json()
                    return p if p["status"] == "authorized" else None

            final = await wait_for(authorized, timeout=30)
            charges = await sim.charges("stripe", pay["id"])
            assert len(charges) == 1, charges
            assert final["provider_reference"] == charges[0]["id"]
            assert final["amount_authorized"] == 4200
            # the create was received once by the simulator, plus idempotent replays only
            assert (await sim.requests("stripe")).get("total", 0) >= 1
        finally:
            stop(gateway)
