"""Crash safety with real processes: kill -9 the gateway mid-authorization, restart it,
retry with the same Idempotency-Key -> no second PaymentIntent; the payment resolves to the
simulator's authorization; the same with soft-decline cascading (SPEC 7.1), killed between
the cascaded decline and the next candidate's answer. Runs on SQLite and on Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import restart_gateway, sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow


async def kill_during(gateway: subprocess.Popen[bytes], request: Awaitable[Any]) -> None:
    """SIGKILL the gateway while ``request`` waits on it: the merchant gets no answer."""
    os.kill(gateway.pid, signal.SIGKILL)
    gateway.wait(timeout=10)
    with pytest.raises(aiohttp.ClientError):
        await request


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
            await kill_during(gateway, first)
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


# --------------------------------------------------------------------------- cascading

CASCADE_ROUTING = """version: 1
rules:
  - name: default
    providers: [stripe_a, bt_b]
    cascade_on: [insufficient_funds]
"""
#: Stripe declines it with decline_code insufficient_funds (the rule cascades that code)
SOFT_DECLINE = "tok_chargeDeclinedInsufficientFunds"
#: successful authorizations as each simulator reports them
AUTHORIZED = {"stripe": ("requires_capture", "succeeded"),
              "braintree": ("authorized", "submitted_for_settlement", "settling", "settled")}


@pytest.fixture
def cascade_sandbox(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe", "braintree")) as ready:
        yield ready


def _cascade_config(tmp_path: Path, store_url: str, ports: dict[str, int],
                    **bt_options: Any) -> Path:
    (tmp_path / "routing.yaml").write_text(CASCADE_ROUTING)
    return write_config(
        tmp_path, store_url, routing_file="routing.yaml", request_deadline_s=3,
        reconciliation={"interval_s": 0.5, "min_age_s": 3},
        providers={
            "stripe_a": {"type": "stripe", "api_key": "sk_test_cascade",
                         "base_url": f"http://127.0.0.1:{ports['stripe']}",
                         "currencies": ["EUR"], "timeout_s": 10},
            "bt_b": {"type": "braintree", "base_url": f"http://127.0.0.1:{ports['braintree']}",
                     "merchant_id": "m", "public_key": "pub", "private_key": "priv",
                     "merchant_account_ids": {"EUR": "m_eur"},
                     "currencies": ["EUR"], "timeout_s": 2, **bt_options},
        })


async def _crash_mid_cascade(session: aiohttp.ClientSession, sim: SimControl, config: Path,
                             log: Path, body: str, idem: str
                             ) -> tuple[Any, str, tuple[int, dict[str, Any]]]:
    """Create the payment, kill -9 the gateway once Braintree (the cascade's next
    candidate) has received the sale and before it answers, restart it and retry with the
    same Idempotency-Key; the restarted gateway, its URL and the retry's answer."""
    gateway, base = await start_gateway(config, log, session)
    try:
        first = asyncio.create_task(session.post(f"{base}/v1/payments", data=body,
                                                 headers=headers(idem=idem)))

        async def sale_in_flight() -> bool:
            return await _op_count(sim, "braintree", "sale") >= 1

        await wait_for(sale_in_flight, timeout=15)
        # Stripe has declined (with the cascaded code) before the sale went out
        assert await _op_count(sim, "stripe", "create_payment_intent") == 1
        await kill_during(gateway, first)
    finally:
        stop(gateway)
    gateway = await restart_gateway(gateway, base, config, log, session)

    async def retry() -> tuple[int, dict[str, Any]] | None:
        async with session.post(f"{base}/v1/payments", data=body,
                                headers=headers(idem=idem)) as r:
            if r.status == 409:  # the crashed owner's lease has not lapsed yet
                return None
            return r.status, await r.json()

    try:
        answer = await wait_for(retry, timeout=30, interval=0.25)
    except BaseException:
        stop(gateway)
        raise
    return gateway, base, answer


async def _op_count(sim: SimControl, name: str, op: str) -> int:
    return int((await sim.requests(name)).get("by_operation", {}).get(op, 0))


async def _authorizations(sim: SimControl, payment_id: str) -> dict[str, list[dict[str, Any]]]:
    return {name: [c for c in await sim.charges(name, payment_id)
                   if c["status"] in AUTHORIZED[name]] for name in ("stripe", "braintree")}


def _cascade_body() -> str:
    return json.dumps(payment_body(amount=4300, capture="manual", payment_method={
        "type": "card", "provider_tokens": {"stripe_a": SOFT_DECLINE, "bt_b": "tok_visa"}}))


async def test_kill_9_between_a_cascaded_decline_and_the_next_answer_charges_once(
    store_url: str, tmp_path: Path, cascade_sandbox: dict[str, Any]
) -> None:
    """SPEC 7.1 with a crash: Stripe declines with a code the rule cascades, the gateway
    sends the payment to Braintree and is killed (-9) before Braintree answers; Braintree
    processes the sale anyway. After the restart the payment ends ``authorized`` at
    Braintree: exactly one authorization at the simulators (never a second sale, never a
    Stripe charge), never ``failed`` or ``declined`` while charged -- through the merchant's
    retry with the same Idempotency-Key and reconciliation."""
    ports = cascade_sandbox["ports"]
    config = _cascade_config(tmp_path, store_url, ports)
    body = _cascade_body()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        sim = SimControl(f"http://127.0.0.1:{ports['control']}", session)
        # Braintree reads the sale, leaves the gateway waiting, processes it 3 s later
        await sim.faults("braintree", mode="late_process", late_process_ms=3000)
        gateway, base, (status, pay) = await _crash_mid_cascade(
            session, sim, config, tmp_path / "gateway.log", body, "cascade-crash")
        try:
            await sim.faults("braintree", mode="normal")
            assert status == 201, pay
            assert pay["status"] in ("pending", "unknown", "authorized"), pay

            async def settled() -> dict[str, Any] | None:
                async with session.get(f"{base}/v1/payments/{pay['id']}",
                                       headers=headers()) as r:
                    p = await r.json()
                    if await _authorizations(sim, pay["id"]) != {"stripe": [], "braintree": []}:
                        assert p["status"] not in ("failed", "declined"), p  # charged
                    return p if p["status"] == "authorized" else None

            final = await wait_for(settled, timeout=30, interval=0.25)
            assert final["provider"] == "bt_b" and final["amount_authorized"] == 4300
            assert final["failure"] is None
            assert [(a["provider"], a.get("error_code")) for a in final["attempts"]] == [
                ("stripe_a", "insufficient_funds"), ("bt_b", None)]
            charged = await _authorizations(sim, pay["id"])
            assert charged["stripe"] == [] and len(charged["braintree"]) == 1, charged
            assert final["provider_reference"] == charged["braintree"][0]["id"]
            # one sale and one Stripe create ever: nothing sent again after the restart
            assert await _op_count(sim, "braintree", "sale") == 1
            assert await _op_count(sim, "stripe", "create_payment_intent") == 1
        finally:
            stop(gateway)


async def test_kill_9_mid_cascade_when_the_next_candidate_never_processes_it(
    store_url: str, tmp_path: Path, cascade_sandbox: dict[str, Any]
) -> None:
    """The same crash, but Braintree never processes the sale (``hang``). No charge ever;
    once Braintree's search proves nothing was created (``lookup_proof_after_s``), the
    payment ends as Stripe's decline, as without a crash -- not ``failed``."""
    ports = cascade_sandbox["ports"]
    config = _cascade_config(tmp_path, store_url, ports, lookup_proof_after_s=3)
    body = _cascade_body()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        sim = SimControl(f"http://127.0.0.1:{ports['control']}", session)
        await sim.faults("braintree", mode="hang")
        gateway, base, (status, pay) = await _crash_mid_cascade(
            session, sim, config, tmp_path / "gateway.log", body, "cascade-hang")
        try:
            await sim.faults("braintree", mode="normal")
            assert status == 201, pay

            async def ended() -> dict[str, Any] | None:
                async with session.get(f"{base}/v1/payments/{pay['id']}",
                                       headers=headers()) as r:
                    p = await r.json()
                    return p if p["status"] in ("declined", "failed", "authorized") else None

            final = await wait_for(ended, timeout=30, interval=0.25)
            assert await _authorizations(sim, pay["id"]) == {"stripe": [], "braintree": []}
            assert await _op_count(sim, "braintree", "sale") == 1
            assert final["status"] == "declined", final  # not failed / not_created
            assert final["failure"].get("decline_code") == "insufficient_funds", final
        finally:
            stop(gateway)
