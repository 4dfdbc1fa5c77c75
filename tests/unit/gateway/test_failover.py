"""Idempotency-safe failover under real faults (SPEC section 5): provider A (Stripe) first,
provider B (Braintree) second, the unmodified SDKs against the simulators' fault injection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config

ROUTING = "version: 1\nrules:\n  - name: default\n    providers: [stripe_a, bt_b]\n"
SIM_OF = {"stripe_a": "stripe", "bt_b": "braintree"}


def providers(stripe_key: str = "sk_test_a") -> dict[str, Any]:
    return {
        "stripe_a": {"type": "stripe", "sandbox": True, "api_key": stripe_key,
                     "currencies": ["EUR"], "timeout_s": 1.0, "connect_timeout_s": 0.5,
                     "breaker": {"fail_max": 3, "reset_timeout_s": 1.0}},
        "bt_b": {"type": "braintree", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2.0},
    }


@dataclass
class Env:
    client: TestClient
    sim: SimControl

    async def pay(self, idem: str, **kw: Any) -> dict[str, Any]:
        r = await self.client.post("/v1/payments", data=json.dumps(payment_body(**kw)),
                                   headers=headers(idem=idem))
        assert r.status == 201, await r.text()
        return await r.json()

    async def charges(self, payment_id: str) -> dict[str, int]:
        return {name: len(await self.sim.charges(sim, payment_id))
                for name, sim in SIM_OF.items()}

    async def requests(self, name: str) -> int:
        return int((await self.sim.requests(SIM_OF[name])).get("total", 0))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _env(tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
               routing: str = ROUTING, **cfg: Any) -> Env:
    (tmp_path / "routing.yaml").write_text(routing)
    config = write_config(tmp_path, store_url, providers=cfg.pop("providers", providers()),
                          routing_file="routing.yaml",
                          retry={"attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.2,
                                 "jitter_s": 0.02}, **cfg)
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    return Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session))


@pytest.fixture
async def env(tmp_path: Path, store_url: str, aiohttp_client,
              session: aiohttp.ClientSession) -> AsyncIterator[Env]:
    yield await _env(tmp_path, store_url, aiohttp_client, session)


def _failovers(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_failovers_total", {
        "from_provider": "stripe_a", "to_provider": "bt_b", "reason": reason}) or 0.0


async def _heal_after_first_request(env: Env, name: str) -> None:
    async def seen() -> bool:
        return await env.requests(name) >= 1

    await wait_for(seen, timeout=10, interval=0.02)
    await env.sim.faults(SIM_OF[name], mode="normal")


async def test_refused_connection_fails_over_to_b(env: Env) -> None:
    await env.sim.faults("stripe", mode="refuse")
    before = _failovers("connection_refused")
    pay = await env.pay("fo-refuse")
    assert pay["status"] == "authorized" and pay["provider"] == "bt_b"
    assert [(a["provider"], a["outcome"]) for a in pay["attempts"]] == [
        ("stripe_a", "rejected_safe"), ("bt_b", "succeeded")]
    assert pay["attempts"][0]["error_code"] == "connection_refused"
    await env.sim.faults("stripe", mode="normal")
    assert await env.charges(pay["id"]) == {"stripe_a": 0, "bt_b": 1}
    assert _failovers("connection_refused") == before + 1


async def test_rate_limited_fails_over_to_b(env: Env) -> None:
    await env.sim.faults("stripe", rate_limit_rate=1.0)
    pay = await env.pay("fo-429")
    assert pay["provider"] == "bt_b" and pay["status"] == "authorized"
    assert pay["attempts"][0]["error_code"] == "rate_limited"
    assert await env.charges(pay["id"]) == {"stripe_a": 0, "bt_b": 1}


async def test_unauthorized_fails_over_to_b(tmp_path: Path, store_url: str, aiohttp_client,
                                            session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session,
                     providers=providers(stripe_key="sk_live_not_accepted"))
    pay = await env.pay("fo-401")
    assert pay["provider"] == "bt_b" and pay["status"] == "authorized"
    assert pay["attempts"][0]["outcome"] == "rejected_safe"
    assert pay["attempts"][0]["error_code"] == "provider_auth_error"
    assert await env.charges(pay["id"]) == {"stripe_a": 0, "bt_b": 1}
    from gateway.appkeys import BREAKERS

    breakers = env.client.app[BREAKERS]
    assert breakers["stripe_a"].fail_counter == 1  # a 401 counts against A's breaker
    assert breakers["bt_b"].fail_counter == 0


async def _never_b(env: Env, fault: dict[str, Any], idem: str) -> dict[str, Any]:
    await env.sim.faults("stripe", **fault)
    healer = asyncio.create_task(_heal_after_first_request(env, "stripe_a"))
    pay = await env.pay(idem)
    await healer
    return pay


async def test_process_then_drop_is_never_sent_to_b(env: Env) -> None:
    pay = await _never_b(env, {"mode": "drop_after_process"}, "fo-drop")
    assert pay["status"] == "authorized" and pay["provider"] == "stripe_a", pay
    assert [a["provider"] for a in pay["attempts"]] == ["stripe_a"]
    assert await env.charges(pay["id"]) == {"stripe_a": 1, "bt_b": 0}
    assert await env.requests("bt_b") == 0


async def test_hang_past_timeout_is_retried_on_a_with_the_same_key(env: Env) -> None:
    pay = await _never_b(env, {"mode": "hang"}, "fo-hang")
    assert pay["status"] == "authorized" and pay["provider"] == "stripe_a", pay
    assert await env.charges(pay["id"]) == {"stripe_a": 1, "bt_b": 0}
    assert await env.requests("bt_b") == 0


async def test_a_unreachable_after_sending_leaves_unknown_and_b_untouched(env: Env) -> None:
    await env.sim.faults("stripe", mode="hang")
    pay = await env.pay("fo-hang-forever")
    assert pay["status"] == "unknown", pay
    assert [(a["provider"], a["outcome"]) for a in pay["attempts"]] == [
        ("stripe_a", "ambiguous")]
    assert await env.requests("bt_b") == 0
    await env.sim.faults("stripe", mode="normal")
    assert (await env.charges(pay["id"]))["bt_b"] == 0


async def test_decline_is_final_and_b_untouched(env: Env) -> None:
    pay = await env.pay("fo-decline", payment_method={"type": "card", "token": "tok_decline"})
    assert pay["status"] == "declined" and pay["provider"] == "stripe_a"
    assert len(pay["attempts"]) == 1
    assert await env.requests("bt_b") == 0


async def _drive(n: int, make: Callable[[int], Awaitable[dict[str, Any]]]) -> list[dict]:
    return [await make(i) for i in range(n)]


def _circuit_state(provider: str) -> float | None:
    return REGISTRY.get_sample_value("gateway_circuit_state", {"provider": provider})


async def test_breaker_opens_skips_a_then_one_probe_closes_it(env: Env) -> None:
    from gateway.appkeys import BREAKERS

    breaker = env.client.app[BREAKERS]["stripe_a"]
    await env.sim.faults("stripe", rate_limit_rate=1.0)
    for i in range(3):  # fail_max: 3
        pay = await env.pay(f"br-fail-{i}")
        assert pay["provider"] == "bt_b"
        assert pay["attempts"][0]["error_code"] == "rate_limited"
    assert breaker.state == "open" and _circuit_state("stripe_a") == 2
    seen_by_a = await env.requests("stripe_a")

    for i in range(3):
        pay = await env.pay(f"br-open-{i}")
        assert pay["provider"] == "bt_b" and pay["status"] == "authorized"
        first = pay["attempts"][0]
        assert (first["provider"], first["outcome"], first["error_code"], first["duration_ms"]) \
            == ("stripe_a", "rejected_safe", "circuit_open", 0)
    assert await env.requests("stripe_a") == seen_by_a  # A received nothing while open

    await env.sim.faults("stripe", rate_limit_rate=0.0, latency_ms=300)

    async def probe_allowed() -> bool:
        return breaker.available

    await wait_for(probe_allowed, timeout=5)
    batch = await asyncio.gather(*[env.pay(f"br-probe-{i}") for i in range(6)])
    assert await env.requests("stripe_a") == seen_by_a + 1  # exactly one probe
    assert sorted(p["provider"] for p in batch) == ["bt_b"] * 5 + ["stripe_a"]
    assert breaker.state == "closed" and _circuit_state("stripe_a") == 0
    after = await env.pay("br-closed")
    assert after["provider"] == "stripe_a" and len(after["attempts"]) == 1


async def test_capture_on_open_breaker_is_503_and_changes_nothing(env: Env) -> None:
    from gateway.appkeys import BREAKERS

    pay = await env.pay("br-cap")
    assert pay["provider"] == "stripe_a"
    await env.sim.faults("stripe", mode="refuse")
    for i in range(3):
        await env.pay(f"br-cap-fail-{i}")
    assert env.client.app[BREAKERS]["stripe_a"].state == "open"
    r = await env.client.post(f"/v1/payments/{pay['id']}/capture", data="{}",
                              headers=headers(idem="br-cap-1"))
    assert r.status == 503 and "Retry-After" in r.headers
    body = await r.json()
    assert body["error"]["type"] == "provider_unavailable"
    r = await env.client.get(f"/v1/payments/{pay['id']}", headers=headers())
    assert (await r.json())["status"] == "authorized"


async def test_failover_after_ambiguity_only_when_lookup_proves_nothing_was_created(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession
) -> None:
    """Braintree first: its sale hangs (read, never processed). It is sent once (Braintree
    does not verifiably deduplicate a retried sale); the fault clears, and the lookup
    (search by order_id), retried until it is made after the provider-side deadline this
    config declares for Braintree (lookup_proof_after_s: 0.6 s after the sale was sent;
    the retry backoff puts the last try past it), proves nothing exists: only then does the
    payment move to Stripe."""
    routing = "version: 1\nrules:\n  - name: default\n    providers: [bt_b, stripe_a]\n"
    cfg = providers()
    cfg["bt_b"].update(timeout_s=0.5, connect_timeout_s=0.3, lookup_proof_after_s=0.6)
    env = await _env(tmp_path, store_url, aiohttp_client, session, routing=routing,
                     providers=cfg)
    await env.sim.faults("braintree", mode="hang")

    async def heal_after_tries() -> None:
        async def tried() -> bool:
            counts = await env.sim.requests("braintree")
            return counts["by_operation"].get("sale", 0) >= 1

        await wait_for(tried, timeout=15, interval=0.02)
        await env.sim.faults("braintree", mode="normal")

    healer = asyncio.create_task(heal_after_tries())
    pay = await env.pay("fo-proven")
    await healer
    assert [(a["provider"], a["outcome"], a.get("error_code")) for a in pay["attempts"]] == [
        ("bt_b", "rejected_safe", "not_created"), ("stripe_a", "succeeded", None)], (
        pay, await (await env.client.get(f"/v1/payments/{pay['id']}/events",
                                         headers=headers())).json())
    assert pay["status"] == "authorized" and pay["provider"] == "stripe_a"
    assert await env.charges(pay["id"]) == {"stripe_a": 1, "bt_b": 0}
