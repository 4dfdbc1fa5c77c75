"""The same merchant-API flows through each provider: the gateway app with all three
sandbox providers, the unmodified SDKs talking HTTP to the in-process simulators.

A payment is steered to one provider with ``payment_method.provider_tokens``.
Adyen confirms modifications only asynchronously: its capture/void stay ``*_pending``
until the simulator's signed notification reaches POST /webhooks/{provider} and is applied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config
from tests.conftest import free_port
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config

PROVIDERS = {
    "stripe": {"type": "stripe", "sandbox": True, "currencies": ["USD", "EUR", "JPY", "KWD"]},
    "braintree": {"type": "braintree", "sandbox": True,
                  "currencies": ["USD", "EUR", "JPY", "KWD"]},
    # MGA is listed although Adyen's own table has no MGA: the gateway must refuse it.
    "adyen": {"type": "adyen", "sandbox": True, "merchant_account": "SandboxECOM",
              "currencies": ["USD", "EUR", "JPY", "KWD", "MGA"]},
}
# What a capture / void response may show, per provider (Adyen: pending, or already
# confirmed if its notification won the race with the response).
CAPTURED = {"stripe": {"captured"}, "braintree": {"captured"},
            "adyen": {"capture_pending", "captured"}}
VOIDED = {"stripe": {"voided"}, "braintree": {"voided"}, "adyen": {"void_pending", "voided"}}


@dataclass
class Env:
    client: TestClient
    sim: SimControl

    async def create(self, idem: str, provider: str, token: str = "tok_visa", **kw: Any):
        body = payment_body(payment_method={"type": "card", "provider_tokens": {provider: token}},
                            **kw)
        r = await self.client.post("/v1/payments", data=json.dumps(body),
                                   headers=headers(idem=idem))
        return r.status, await r.json()

    async def post(self, path: str, idem: str, body: dict[str, Any] | None = None):
        r = await self.client.post(path, data=json.dumps(body or {}), headers=headers(idem=idem))
        return r.status, await r.json()

    async def reaches(self, payment_id: str, status: str) -> dict[str, Any]:
        """Wait until the provider's asynchronous confirmation (webhook) is applied."""
        async def check() -> dict[str, Any] | None:
            r = await self.client.get(f"/v1/payments/{payment_id}", headers=headers())
            pay = await r.json()
            return pay if pay["status"] == status else None

        return await wait_for(check, timeout=10)


@pytest.fixture
async def env(store_url: str, tmp_path: Path, aiohttp_client) -> AsyncIterator[Env]:
    config = load_config(write_config(tmp_path, store_url, providers=PROVIDERS))
    port = free_port()  # the simulators deliver their webhooks to this gateway
    app = create_app(config, public_url=f"http://127.0.0.1:{port}")
    client = await aiohttp_client(app, server_kwargs={"port": port})
    async with aiohttp.ClientSession() as session:
        yield Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}",
                                     session))


providers = pytest.mark.parametrize("provider", list(PROVIDERS))


@providers
async def test_manual_authorize_partial_capture_partial_refund(env: Env, provider: str) -> None:
    status, pay = await env.create(f"{provider}-flow", provider, amount=1000, capture="manual")
    assert status == 201, pay
    assert pay["status"] == "authorized" and pay["provider"] == provider
    assert pay["amount_authorized"] == 1000
    pid = pay["id"]
    status, pay = await env.post(f"/v1/payments/{pid}/capture", f"{provider}-cap",
                                 {"amount": 600})
    assert status == 200, pay
    assert pay["status"] in CAPTURED[provider]
    [charge] = await env.sim.charges(provider, pid)
    assert charge["amount"] == 1000 and charge["amount_captured"] == 600
    if provider == "adyen":  # captured once the CAPTURE notification is applied
        pay = await env.reaches(pid, "captured")
    assert pay["amount_captured"] == 600
    status, pay = await env.post(f"/v1/payments/{pid}/refunds", f"{provider}-ref",
                                 {"amount": 250})
    assert status == 201, pay
    if provider == "adyen":  # pending until the REFUND notification (which may win the race)
        assert pay["refunds"][0]["status"] in ("pending", "succeeded")
        pay = await env.reaches(pid, "partially_refunded")
    assert pay["status"] == "partially_refunded" and pay["amount_refunded"] == 250
    assert pay["refunds"][0]["status"] == "succeeded"
    [charge] = await env.sim.charges(provider, pid)
    assert charge["amount_refunded"] == 250


@providers
async def test_automatic_capture(env: Env, provider: str) -> None:
    status, pay = await env.create(f"{provider}-auto", provider, capture="automatic",
                                   amount=1500, currency="USD")
    assert status == 201, pay
    assert pay["status"] == "captured" and pay["amount_captured"] == 1500
    [charge] = await env.sim.charges(provider, pay["id"])
    assert charge["amount_captured"] == 1500


@providers
async def test_void(env: Env, provider: str) -> None:
    _, pay = await env.create(f"{provider}-void", provider)
    status, pay = await env.post(f"/v1/payments/{pay['id']}/void", f"{provider}-void-v")
    assert status == 200, pay
    assert pay["status"] in VOIDED[provider]
    await env.reaches(pay["id"], "voided")  # Adyen: after the CANCELLATION notification


@providers
@pytest.mark.parametrize("token", ["tok_decline", "tok_insufficient_funds"])
async def test_decline(env: Env, provider: str, token: str) -> None:
    status, pay = await env.create(f"{provider}-{token}", provider, token=token)
    assert status == 201
    assert pay["status"] == "declined", pay
    assert pay["failure"]["code"]
    assert pay["attempts"][0]["outcome"] == "declined"


@providers
async def test_3ds(env: Env, provider: str) -> None:
    status, pay = await env.create(f"{provider}-3ds", provider, token="tok_3ds")
    if provider == "braintree":  # no server-side 3DS challenge: refused before sending
        assert status == 400
        assert pay["error"]["code"] == "three_d_secure_not_supported"
    else:
        assert status == 201
        assert pay["status"] == "requires_action"
        assert pay["next_action"]


@providers
@pytest.mark.parametrize(("currency", "amount"), [("JPY", 500), ("KWD", 1230), ("EUR", 1050)])
async def test_currency_exponents(env: Env, provider: str, currency: str, amount: int) -> None:
    status, pay = await env.create(f"{provider}-{currency}", provider, amount=amount,
                                   currency=currency, capture="automatic")
    assert status == 201, pay
    assert pay["amount_captured"] == amount
    [charge] = await env.sim.charges(provider, pay["id"])
    assert (charge["amount"], charge["currency"]) == (amount, currency)


async def test_an_amount_the_only_candidate_cannot_take_exactly_is_a_400(env: Env) -> None:
    """Stripe needs the last of KWD's three decimals to be 0: KWD 1.234 is refused before
    anything is stored or sent, never rounded."""
    status, err = await env.create("stripe-kwd-1234", "stripe", amount=1234, currency="KWD")
    assert status == 400, err
    assert err["error"]["code"] == "amount_not_representable"
    assert err["error"]["param"] == "amount"
    assert (await env.sim.requests("stripe")).get("total", 0) == 0


async def test_a_capture_or_refund_stripe_cannot_take_exactly_is_a_400(env: Env) -> None:
    status, pay = await env.create("stripe-kwd-follow", "stripe", amount=1230, currency="KWD",
                                   capture="manual")
    assert status == 201 and pay["status"] == "authorized", pay
    status, err = await env.post(f"/v1/payments/{pay['id']}/capture", "kwd-cap-615",
                                 {"amount": 615})
    assert status == 400, err
    assert (err["error"]["code"], err["error"]["param"]) == ("amount_not_representable",
                                                              "amount")
    ops = (await env.sim.requests("stripe"))["by_operation"]
    assert ops.get("capture_payment_intent", 0) == 0
    status, pay = await env.post(f"/v1/payments/{pay['id']}/capture", "kwd-cap-610",
                                 {"amount": 610})
    assert status == 200 and pay["amount_captured"] == 610, pay
    status, err = await env.post(f"/v1/payments/{pay['id']}/refunds", "kwd-ref-305",
                                 {"amount": 305})
    assert status == 400 and err["error"]["code"] == "amount_not_representable", err
    [charge] = await env.sim.charges("stripe", pay["id"])
    assert charge["amount_refunded"] == 0


async def test_a_currency_missing_from_adyens_table_is_a_currency_400(env: Env) -> None:
    status, err = await env.create("adyen-mga", "adyen", amount=10000, currency="MGA")
    assert status == 400, err
    assert (err["error"]["code"], err["error"]["param"]) == ("currency_not_supported",
                                                              "currency")
    assert (await env.sim.requests("adyen")).get("total", 0) == 0


@providers
async def test_process_then_drop_is_retried_to_one_charge(env: Env, provider: str) -> None:
    await env.sim.faults(provider, mode="drop_after_process")
    status, pay = await env.create(f"{provider}-drop", provider)
    await env.sim.faults(provider, mode="normal")
    assert status == 201
    # Every try was processed then dropped with the same provider key, so the
    # provider holds exactly one charge and the payment is never sent elsewhere.
    assert pay["status"] in ("unknown", "authorized"), pay
    charges = await env.sim.charges(provider, pay["id"])
    assert len(charges) == 1
    for other in PROVIDERS:
        if other != provider:
            assert await env.sim.charges(other, pay["id"]) == []


@providers
async def test_duplicated_and_reordered_provider_webhooks_change_nothing(
    env: Env, provider: str
) -> None:
    """The simulator sends every notification twice and out of order; the payment still
    ends where the provider is, and the duplicates are acknowledged, not applied."""
    from gateway.metrics import REGISTRY

    async with env.sim.session.post(f"{env.sim.base}/_sim/{provider}/webhooks",
                                    json={"duplicate_rate": 1.0, "reorder_window_ms": 300}) as r:
        assert r.status == 200
        assert (await r.json())["duplicate_rate"] == 1.0
    dup_before = REGISTRY.get_sample_value(
        "gateway_webhooks_total", {"provider": provider, "result": "duplicate"}) or 0.0
    _, pay = await env.create(f"{provider}-chaotic-hooks", provider, amount=900)
    pid = pay["id"]
    status, pay = await env.post(f"/v1/payments/{pid}/capture", f"{provider}-ch-cap",
                                 {"amount": 900})
    assert status == 200, pay
    pay = await env.reaches(pid, "captured")
    status, pay = await env.post(f"/v1/payments/{pid}/refunds", f"{provider}-ch-ref",
                                 {"amount": 400})
    assert status == 201, pay
    pay = await env.reaches(pid, "partially_refunded")

    async def duplicates_seen() -> bool:
        now = REGISTRY.get_sample_value(
            "gateway_webhooks_total", {"provider": provider, "result": "duplicate"}) or 0.0
        return now > dup_before

    await wait_for(duplicates_seen, timeout=10)
    [charge] = await env.sim.charges(provider, pid)
    assert (charge["amount_captured"], charge["amount_refunded"]) == (900, 400)
    final = (await (await env.client.get(f"/v1/payments/{pid}", headers=headers())).json())
    assert (final["amount_captured"], final["amount_refunded"]) == (900, 400)
    assert [r["status"] for r in final["refunds"]] == ["succeeded"]


async def test_webhook_settings_are_validated(env: Env) -> None:
    async with env.sim.session.post(f"{env.sim.base}/_sim/stripe/webhooks",
                                    json={"duplicate_rate": 2}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_webhook_settings"
