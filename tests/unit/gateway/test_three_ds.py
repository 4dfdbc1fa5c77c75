"""3-D Secure completion (#13 item 4, SPEC 3.3), end to end through the simulators.

Stripe and Adyen answer ``tok_3ds`` with ``requires_action`` and a ``next_action`` of type
``redirect_to_url`` whose URL is the simulator's challenge page. The test follows it like a
browser (aiohttp, redirects on): the page finishes the challenge (``?result=fail`` fails it)
and sends the browser to the gateway's return endpoint, which records what the return
carried; then ``POST /v1/payments/{id}/confirm`` finishes the payment at the provider
(Stripe: retrieve; Adyen: ``/payments/details`` with the ``redirectResult``). Or the
provider's webhook does (the gateway's public URL known to the simulators). Every charge is
counted at the simulator. Braintree cannot complete a challenge server-side: routing
excludes it for such payments, with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import ORCHESTRATOR, SANDBOX_PORTS, STORE
from gateway.config import load_config
from gateway.reconcile import Reconciler
from gateway.three_ds import ACTION_WINDOW_S
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import free_port

PROVIDERS = {
    "stripe_a": {"type": "stripe", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2.0},
    "adyen_b": {"type": "adyen", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2.0,
                "merchant_account": "ThreeDSECOM"},
    "bt_c": {"type": "braintree", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2.0},
}
SIM = {"stripe_a": "stripe", "adyen_b": "adyen", "bt_c": "braintree"}
#: what the provider's own API counts for a 3-D Secure completion at confirm
COMPLETION_OP = {"stripe_a": "retrieve_payment_intent", "adyen_b": "payments_details"}


class Env:
    def __init__(self, client: TestClient, sim: SimControl, session: aiohttp.ClientSession
                 ) -> None:
        self.client, self.sim, self.session = client, sim, session

    async def pay(self, idem: str, provider: str, token: str = "tok_3ds",
                  **extra: Any) -> dict[str, Any]:
        body = payment_body(payment_method={"type": "card", "provider_tokens": {
            provider: token}}, **extra)
        r = await self.client.post("/v1/payments", data=json.dumps(body),
                                   headers=headers(idem=idem))
        assert r.status == 201, await r.text()
        return await r.json()

    async def browse(self, pay: dict[str, Any], result: str = "succeed"
                     ) -> aiohttp.ClientResponse:
        """The customer's browser: the challenge page, then wherever it redirects."""
        url = pay["next_action"]["redirect_to_url"]["url"]
        async with self.session.get(url, params={"result": result}) as r:
            await r.read()
            return r

    async def confirm(self, pay_id: str, idem: str, body: bytes = b""
                      ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        r = await self.client.post(f"/v1/payments/{pay_id}/confirm", data=body,
                                   headers=headers(idem=idem))
        return r.status, await r.json(), r

    async def get(self, pay_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/payments/{pay_id}", headers=headers())
        assert r.status == 200
        return await r.json()

    async def events(self, pay_id: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/payments/{pay_id}/events", headers=headers())
        return (await r.json())["data"]

    async def charges(self, provider: str, pay_id: str) -> list[dict[str, Any]]:
        return await self.sim.charges(SIM[provider], pay_id)

    async def count(self, provider: str, op: str) -> int:
        return int((await self.sim.requests(SIM[provider]))["by_operation"].get(op, 0))


def _routing(providers: str) -> str:
    return f"version: 1\nrules:\n  - name: default\n    providers: [{providers}]\n"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _env(tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
               providers: str, *, webhooks: bool = False, **overrides: Any) -> Env:
    (tmp_path / "routing.yaml").write_text(_routing(providers))
    config = write_config(tmp_path, store_url, providers=PROVIDERS, routing_file="routing.yaml",
                          **overrides)
    if webhooks:  # the simulators deliver their signed webhooks to this gateway
        port = free_port()
        app = create_app(load_config(config), public_url=f"http://127.0.0.1:{port}")
        client = await aiohttp_client(app, server_kwargs={"port": port})
    else:
        app = create_app(load_config(config))
        client = await aiohttp_client(app)
    return Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}",
                                  session), session)


def _assert_next_action(pay: dict[str, Any], provider: str, return_url: str | None) -> None:
    action = pay["next_action"]
    assert set(action) == {"type", "redirect_to_url"}, action  # no raw provider action
    assert action["type"] == "redirect_to_url"
    target = action["redirect_to_url"]
    assert set(target) == {"url", "return_url"}
    assert "/_sim/3ds/" in target["url"]
    if return_url is not None:
        assert target["return_url"] == return_url
    else:
        assert f"/return/{pay['id']}?rt=" in target["return_url"]


# --------------------------------------------------------------------------- completion

@pytest.mark.parametrize(("provider", "capture", "final"), [
    ("stripe_a", "manual", "authorized"), ("stripe_a", "automatic", "captured"),
    ("adyen_b", "manual", "authorized"), ("adyen_b", "automatic", "captured")])
async def test_challenge_then_confirm_completes_the_payment(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
        provider: str, capture: str, final: str) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, provider)
    pay = await env.pay(f"3ds-{provider}-{capture}", provider, capture=capture)
    assert (pay["status"], pay["provider"]) == ("requires_action", provider)
    _assert_next_action(pay, provider, None)
    assert len(await env.charges(provider, pay["id"])) == 1
    # before the customer has finished: still requires_action, nothing decided
    status, early, _ = await env.confirm(pay["id"], "early")
    assert (status, early["status"]) == (200, "requires_action")
    assert early["next_action"] == pay["next_action"]

    page = await env.browse(pay)
    assert page.status == 200 and f"/return/{pay['id']}" in str(page.url)
    assert (await page.json())["status"] == "requires_action"  # the gateway's return page
    before = await env.count(provider, COMPLETION_OP[provider])
    status, done, r = await env.confirm(pay["id"], "confirm-1", b"{}")
    assert status == 200, done
    assert done["status"] == final and done["next_action"] is None and done["failure"] is None
    assert done["amount_authorized"] == 1000
    assert done["amount_captured"] == (1000 if final == "captured" else 0)
    assert await env.count(provider, COMPLETION_OP[provider]) == before + 1
    charges = await env.charges(provider, pay["id"])
    assert len(charges) == 1 and charges[0]["amount"] == 1000  # exactly one charge

    # the same key: the stored answer, nothing sent again
    status, again, r = await env.confirm(pay["id"], "confirm-1", b"{}")
    assert (status, again["status"], r.headers.get("Idempotent-Replayed")) == (
        200, final, "true")
    assert await env.count(provider, COMPLETION_OP[provider]) == before + 1
    # another key: the payment went through requires_action -> its current state
    status, twice, _ = await env.confirm(pay["id"], "confirm-2")
    assert (status, twice["status"]) == (200, final)
    assert await env.count(provider, COMPLETION_OP[provider]) == before + 1
    trail = [(e["type"], e.get("to_status")) for e in await env.events(pay["id"])]
    assert ("customer_returned", None) in trail and ("confirm_requested", None) in trail
    assert ("status_changed", "requires_action") in trail and ("status_changed", final) in trail
    src = [e["source"] for e in await env.events(pay["id"])
           if e["type"] == "status_changed" and e["to_status"] == final]
    assert src == ["provider_response"]
    assert len(await env.charges(provider, pay["id"])) == 1


@pytest.mark.parametrize("provider", ["stripe_a", "adyen_b"])
async def test_a_failed_challenge_declines_with_a_clear_failure(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
        provider: str) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, provider)
    pay = await env.pay(f"3ds-fail-{provider}", provider)
    await env.browse(pay, "fail")
    status, done, _ = await env.confirm(pay["id"], "confirm-fail")
    assert (status, done["status"]) == (200, "declined")
    failure = done["failure"]
    assert failure["code"] == "card_declined"
    assert failure["decline_code"] in ("authentication_required", "authentication_failed")
    assert "authenticat" in failure["message"].lower()
    assert done["next_action"] is None and done["amount_authorized"] == 0
    charges = await env.charges(provider, pay["id"])
    assert len(charges) == 1 and charges[0]["amount_captured"] == 0


async def test_the_merchants_return_url_gets_the_customer_back(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    """The public return_url is the merchant's; the gateway's return endpoint records the
    return and sends the browser on there with payment_id (here: the gateway's /healthz)."""
    env = await _env(tmp_path, store_url, aiohttp_client, session, "adyen_b")
    merchant = str(env.client.make_url("/healthz?from=3ds"))
    pay = await env.pay("3ds-return-url", "adyen_b", return_url=merchant)
    _assert_next_action(pay, "adyen_b", merchant)
    page = await env.browse(pay)
    assert page.status == 200 and page.url.path == "/healthz"
    assert page.url.query["payment_id"] == pay["id"] and page.url.query["from"] == "3ds"
    status, done, _ = await env.confirm(pay["id"], "c")
    assert (status, done["status"]) == (200, "authorized")


async def test_the_return_endpoint_needs_the_payments_secret(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "adyen_b")
    pay = await env.pay("3ds-forged", "adyen_b")
    for query in ("?rt=forged&redirectResult=x", "?redirectResult=x"):
        r = await env.client.get(f"/return/{pay['id']}{query}")
        assert r.status == 404
    r = await env.client.get("/return/pay_unknown?rt=x")
    assert r.status == 404
    assert not [e for e in await env.events(pay["id"]) if e["type"] == "customer_returned"]


# --------------------------------------------------------------------------- webhooks

@pytest.mark.parametrize(("provider", "capture", "final"), [
    ("stripe_a", "manual", "authorized"),  # payment_intent.amount_capturable_updated
    ("stripe_a", "automatic", "captured"),  # payment_intent.succeeded
    ("adyen_b", "manual", "authorized"), ("adyen_b", "automatic", "captured")])  # AUTHORISATION
async def test_the_providers_webhook_alone_completes_the_payment(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
        provider: str, capture: str, final: str) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, provider, webhooks=True)
    pay = await env.pay(f"3ds-hook-{provider}-{capture}", provider, capture=capture)
    assert pay["status"] == "requires_action"
    await env.browse(pay)

    async def completed() -> dict[str, Any] | None:
        got = await env.get(pay["id"])
        return got if got["status"] == final else None

    done = await wait_for(completed)
    assert done["next_action"] is None and done["amount_authorized"] == 1000
    changed = [e for e in await env.events(pay["id"])
               if e["type"] == "status_changed" and e["to_status"] == final]
    assert [e["source"] for e in changed] == [f"webhook:{provider}"]
    # the merchant's confirm after the webhook: the current state, nothing sent
    before = await env.count(provider, COMPLETION_OP[provider])
    status, answer, _ = await env.confirm(pay["id"], "after-hook")
    assert (status, answer["status"]) == (200, final)
    assert await env.count(provider, COMPLETION_OP[provider]) == before
    assert len(await env.charges(provider, pay["id"])) == 1
    doc = await env.client.app[STORE].get_payment(pay["id"])
    assert doc["_operation"] is None  # the webhook finished the waiting confirm


# --------------------------------------------------------------------------- refusals

async def test_confirm_refusals(tmp_path: Path, store_url: str, aiohttp_client,
                                session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "stripe_a")
    plain = await env.pay("3ds-plain", "stripe_a", token="tok_visa")
    assert plain["status"] == "authorized"
    status, err, _ = await env.confirm(plain["id"], "c-plain")
    assert status == 409 and err["error"]["code"] == "invalid_state"
    pay = await env.pay("3ds-ref", "stripe_a")
    r = await env.client.post(f"/v1/payments/{pay['id']}/confirm", data=b"{}",
                              headers=headers())
    assert r.status == 400  # Idempotency-Key required like every POST
    status, err, _ = await env.confirm(pay["id"], "c-body", b'{"amount": 5}')
    assert status == 400 and err["error"]["param"] == "amount"
    r = await env.client.post("/v1/payments/pay_nope/confirm", data=b"",
                              headers=headers(idem="c-404"))
    assert r.status == 404
    from tests.gateway_harness import GLOBEX_KEY
    r = await env.client.post(f"/v1/payments/{pay['id']}/confirm", data=b"",
                              headers=headers(GLOBEX_KEY, idem="c-other"))
    assert r.status == 404  # another merchant's payment looks missing
    # capture of a requires_action payment: invalid state, not "in progress"
    r = await env.client.post(f"/v1/payments/{pay['id']}/capture", data=b"{}",
                              headers=headers(idem="cap"))
    assert r.status == 409 and (await r.json())["error"]["code"] == "invalid_state"


# --------------------------------------------------------------------------- ambiguity

@pytest.mark.parametrize("provider", ["stripe_a", "adyen_b"])
async def test_an_ambiguous_confirm_is_left_for_reconciliation_then_resolved(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
        provider: str) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, provider)
    pay = await env.pay(f"3ds-drop-{provider}", provider)
    await env.browse(pay)
    await env.sim.faults(SIM[provider], mode="drop_after_process")
    status, parked, _ = await env.confirm(pay["id"], "c-drop")
    await env.sim.faults(SIM[provider], mode="normal")
    assert (status, parked["status"]) == (200, "requires_action")  # never declined
    assert parked["failure"] is None
    app = env.client.app
    doc = await app[STORE].get_payment(pay["id"])
    assert doc["_operation"]["op"] == "confirm" and doc["needs_reconcile"] is True
    trail = [e["type"] for e in await env.events(pay["id"])]
    assert "confirm_unknown" in trail

    orch = app[ORCHESTRATOR]
    reconciler = Reconciler(orch.config, app[STORE], orch)
    report = await reconciler.run_once(now=time.time() + 3600)
    assert [(d.payment_id, d.from_status, d.to_status) for d in report.corrected] == [
        (pay["id"], "requires_action", "authorized")]
    done = await env.get(pay["id"])
    assert done["status"] == "authorized" and done["amount_authorized"] == 1000
    resolved = [e for e in await env.events(pay["id"])
                if e["type"] == "status_changed" and e["to_status"] == "authorized"]
    assert [e["source"] for e in resolved] == ["reconciliation"]
    assert len(await env.charges(provider, pay["id"])) == 1
    doc = await app[STORE].get_payment(pay["id"])
    assert doc["_operation"] is None and doc["needs_reconcile"] is False


@pytest.mark.parametrize("provider", ["stripe_a", "adyen_b"])
async def test_reconciliation_within_the_window_leaves_the_payment_alone(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
        provider: str) -> None:
    """Within the customer's window (default 900 s) reconciliation does not touch the
    payment: no lookup, no re-authorization (what happens after it:
    tests/unit/gateway/test_three_ds_window.py)."""
    env = await _env(tmp_path, store_url, aiohttp_client, session, provider)
    pay = await env.pay(f"3ds-idle-{provider}", provider)
    app = env.client.app
    orch = app[ORCHESTRATOR]
    doc = await app[STORE].get_payment(pay["id"])
    assert doc["_action_window_s"] == ACTION_WINDOW_S == 900
    assert doc["_operation"]["lease_until"] == pytest.approx(
        doc["_action"]["since"] + ACTION_WINDOW_S)
    reconciler = Reconciler(orch.config, app[STORE], orch)
    before = await env.sim.requests(SIM[provider])
    for later in (60, ACTION_WINDOW_S - 60):
        report = await reconciler.run_once(now=time.time() + later)
        assert report.examined == 0 and report.skipped_live >= 1
    assert await env.sim.requests(SIM[provider]) == before
    assert (await env.get(pay["id"]))["status"] == "requires_action"
    assert len(await env.charges(provider, pay["id"])) == 1


# --------------------------------------------------------------------------- Braintree

async def test_braintree_is_excluded_for_three_d_secure_payments(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "bt_c, stripe_a")
    # the explicit flag, with a token Braintree would approve: never sent to Braintree
    body = payment_body(payment_method={"type": "card", "token": "tok_visa",
                                        "three_d_secure": "required"})
    r = await env.client.post("/v1/payments", data=json.dumps(body), headers=headers(idem="f"))
    pay = await r.json()
    assert r.status == 201 and pay["provider"] == "stripe_a", pay
    # the sandbox token that always challenges implies it too
    pay = await env.pay("bt-3ds", "stripe_a", token="tok_3ds")
    body = payment_body(payment_method={"type": "card", "token": "tok_3ds"})
    r = await env.client.post("/v1/payments", data=json.dumps(body), headers=headers(idem="t"))
    pay = await r.json()
    assert (pay["provider"], pay["status"]) == ("stripe_a", "requires_action")
    assert int((await env.sim.requests("braintree")).get("total", 0)) == 0
    doc = await env.client.app[STORE].get_payment(pay["id"])
    assert [x[0] for x in doc["_excluded"]] == ["bt_c"]
    assert doc["_excluded"][0][2] == "three_ds_unsupported"
    assert "3-D Secure" in doc["_excluded"][0][1]


async def test_only_braintree_left_is_a_400_naming_the_reason(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "bt_c")
    body = payment_body(payment_method={"type": "card", "token": "tok_3ds"})
    r = await env.client.post("/v1/payments", data=json.dumps(body), headers=headers(idem="b"))
    err = (await r.json())["error"]
    assert r.status == 400 and err["code"] == "three_d_secure_not_supported"
    assert err["param"] == "payment_method.three_d_secure" and "bt_c" in err["message"]
    assert int((await env.sim.requests("braintree")).get("total", 0)) == 0
    body = payment_body(payment_method={"type": "card", "token": "tok_visa",
                                        "three_d_secure": "sometimes"})
    r = await env.client.post("/v1/payments", data=json.dumps(body), headers=headers(idem="c"))
    assert r.status == 400
    assert (await r.json())["error"]["param"] == "payment_method.three_d_secure"


async def test_openapi_describes_confirm_and_next_action(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    from jsonschema import Draft202012Validator

    from tests.fixtures.provider_specs.schemas import to_json_schema

    env = await _env(tmp_path, store_url, aiohttp_client, session, "stripe_a")
    spec = await (await env.client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/payments/{payment_id}/confirm"]["post"]
    assert {p["name"] for p in op["parameters"]} == {"payment_id", "Idempotency-Key"}
    assert set(op["responses"]) >= {"200", "404", "409", "503"}
    create = spec["components"]["schemas"]["CreatePayment"]["properties"]
    assert "return_url" in create and "three_d_secure" in create["payment_method"]["properties"]
    pay = await env.pay("3ds-openapi", "stripe_a")
    schema = {"components": to_json_schema(spec["components"]),
              "$ref": "#/components/schemas/Payment"}
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(pay)]
    assert errors == []
    action_schema = spec["components"]["schemas"]["Payment"]["properties"]["next_action"]
    assert set(action_schema["properties"]) >= {"type", "redirect_to_url"}
