"""Soft-decline cascading (SPEC 7.1): a decline whose code the matched rule lists in
``cascade_on`` moves to the next candidate as a new attempt; any other decline is final.
Stripe declines first (its test token for insufficient funds), Braintree would approve;
every charge is counted at the simulators."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import SimControl, headers, payment_body, write_config

PROVIDERS = {
    "stripe_a": {"type": "stripe", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2.0},
    "bt_b": {"type": "braintree", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2.0},
}
SOFT = "tok_chargeDeclinedInsufficientFunds"  # Stripe: decline_code insufficient_funds
HARD = "tok_chargeDeclined"  # Stripe: decline_code generic_decline


def routing(cascade: str | None) -> str:
    extra = f"    cascade_on: [{cascade}]\n" if cascade else ""
    return f"version: 1\nrules:\n  - name: default\n    providers: [stripe_a, bt_b]\n{extra}"


class Env:
    def __init__(self, client: Any, sim: SimControl) -> None:
        self.client, self.sim = client, sim

    async def pay(self, idem: str, stripe_token: str) -> dict[str, Any]:
        body = payment_body(payment_method={"type": "card", "provider_tokens": {
            "stripe_a": stripe_token, "bt_b": "tok_visa"}})
        r = await self.client.post("/v1/payments", data=json.dumps(body),
                                   headers=headers(idem=idem))
        assert r.status == 201, await r.text()
        return await r.json()

    async def charged(self, payment_id: str) -> dict[str, list[str]]:
        return {sim: [c["status"] for c in await self.sim.charges(sim, payment_id)]
                for sim in ("stripe", "braintree")}


async def _env(tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
               cascade: str | None) -> Env:
    (tmp_path / "routing.yaml").write_text(routing(cascade))
    config = write_config(tmp_path, store_url, providers=PROVIDERS, routing_file="routing.yaml")
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    return Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _cascades(code: str) -> float:
    return REGISTRY.get_sample_value("gateway_cascades_total", {
        "from_provider": "stripe_a", "to_provider": "bt_b", "code": code}) or 0.0


async def test_a_listed_soft_decline_moves_to_the_next_candidate(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "insufficient_funds")
    before = _cascades("insufficient_funds")
    pay = await env.pay("cascade-1", SOFT)
    assert (pay["status"], pay["provider"]) == ("authorized", "bt_b")
    assert pay["failure"] is None
    assert [(a["provider"], a["outcome"], a.get("error_code")) for a in pay["attempts"]] == [
        ("stripe_a", "declined", "insufficient_funds"), ("bt_b", "succeeded", None)]
    charged = await env.charged(pay["id"])
    assert len(charged["braintree"]) == 1 and "authorized" in charged["braintree"][0]
    assert all(s != "authorized" and "succeeded" not in s for s in charged["stripe"])
    assert _cascades("insufficient_funds") == before + 1
    r = await env.client.get(f"/v1/payments/{pay['id']}/events", headers=headers())
    finished = [e for e in (await r.json())["data"] if e["type"] == "attempt_finished"]
    assert [e.get("cascaded") for e in finished] == [True, None]


@pytest.mark.parametrize(("cascade", "token", "code"), [
    ("insufficient_funds", HARD, "generic_decline"),  # a decline the rule does not list
    (None, SOFT, "insufficient_funds"),  # cascading is off by default
])
async def test_any_other_decline_is_final(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
        cascade: str | None, token: str, code: str) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, cascade)
    pay = await env.pay("cascade-2", token)
    assert (pay["status"], pay["provider"]) == ("declined", "stripe_a")
    assert pay["failure"]["decline_code"] == code
    assert [a["provider"] for a in pay["attempts"]] == ["stripe_a"]
    assert (await env.charged(pay["id"]))["braintree"] == []
    assert int((await env.sim.requests("braintree")).get("total", 0)) == 0


async def test_a_cascade_nobody_answers_ends_as_the_decline_not_failed(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    """The next candidate refuses connections (nothing sent): the payment is the first
    provider's decline, never "failed" and never a charge."""
    env = await _env(tmp_path, store_url, aiohttp_client, session, "insufficient_funds")
    await env.sim.faults("braintree", mode="refuse")
    pay = await env.pay("cascade-3", SOFT)
    assert (pay["status"], pay["provider"]) == ("declined", "stripe_a")
    assert pay["failure"]["decline_code"] == "insufficient_funds"
    assert [(a["provider"], a["outcome"]) for a in pay["attempts"]] == [
        ("stripe_a", "declined"), ("bt_b", "rejected_safe")]
    await env.sim.faults("braintree", mode="normal")
    assert (await env.charged(pay["id"]))["braintree"] == []
