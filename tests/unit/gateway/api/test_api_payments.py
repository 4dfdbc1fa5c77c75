"""Merchant API end to end: real gateway app, real store (SQLite and Redis), the unmodified
Stripe SDK talking HTTP to the in-process Stripe simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS, STORE
from gateway.config import load_config
from gateway.model import derived_id
from tests.gateway_harness import (
    GLOBEX_KEY,
    SimControl,
    headers,
    payment_body,
    write_config,
)


@dataclass
class Gateway:
    client: TestClient
    sim: SimControl

    async def create(self, idem: str, key: str | None = None, **body: Any):
        kw = {"key": key} if key else {}
        r = await self.client.post("/v1/payments", data=json.dumps(payment_body(**body)),
                                   headers=headers(idem=idem, **kw))
        return r.status, await r.json(), r.headers

    async def post(self, path: str, idem: str | None, body: dict[str, Any] | None = None,
                   key: str | None = None):
        kw = {"key": key} if key else {}
        r = await self.client.post(path, data=json.dumps(body or {}),
                                   headers=headers(idem=idem, **kw))
        return r.status, await r.json(), r.headers

    async def get(self, path: str, key: str | None = None):
        kw = {"key": key} if key else {}
        r = await self.client.get(path, headers=headers(**kw))
        return r.status, await r.json()


@pytest.fixture
async def gw(store_url: str, tmp_path: Path, aiohttp_client) -> AsyncIterator[Gateway]:
    config = load_config(write_config(tmp_path, store_url))
    app = create_app(config)
    client = await aiohttp_client(app)
    async with aiohttp.ClientSession() as session:
        control = f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}"
        yield Gateway(client, SimControl(control, session))


# ------------------------------------------------------------------ flows


async def test_manual_flow_partial_capture_two_refunds(gw: Gateway) -> None:
    status, pay, _ = await gw.create("flow-1", amount=1000, capture="manual")
    assert status == 201, pay
    assert pay["status"] == "authorized"
    assert pay["amount_authorized"] == 1000 and pay["amount_captured"] == 0
    assert pay["provider"] == "stripe_main" and pay["provider_reference"].startswith("pi_")
    assert [a["outcome"] for a in pay["attempts"]] == ["succeeded"]
    pid = pay["id"]

    status, pay, _ = await gw.post(f"/v1/payments/{pid}/capture", "cap-1", {"amount": 600})
    assert status == 200, pay
    assert pay["status"] == "captured" and pay["amount_captured"] == 600

    status, pay, _ = await gw.post(f"/v1/payments/{pid}/refunds", "ref-1", {"amount": 200})
    assert status == 201, pay
    assert pay["status"] == "partially_refunded" and pay["amount_refunded"] == 200
    status, pay, _ = await gw.post(f"/v1/payments/{pid}/refunds", "ref-2", {"amount": 400})
    assert status == 201, pay
    assert pay["status"] == "refunded" and pay["amount_refunded"] == 600
    assert [(r["amount"], r["status"]) for r in pay["refunds"]] == [(200, "succeeded"),
                                                                     (400, "succeeded")]
    charges = await gw.sim.charges("stripe", pid)
    assert len(charges) == 1
    assert charges[0]["amount"] == 1000
    assert charges[0]["amount_captured"] == 600
    assert charges[0]["amount_refunded"] == 600

    status, events = await gw.get(f"/v1/payments/{pid}/events")
    assert status == 200
    changes = [(e["from_status"], e["to_status"]) for e in events["data"]
               if e["type"] == "status_changed"]
    assert changes == [("pending", "authorized"), ("authorized", "captured"),
                       ("captured", "partially_refunded"), ("partially_refunded", "refunded")]

    # a third refund finds nothing left
    status, err, _ = await gw.post(f"/v1/payments/{pid}/refunds", "ref-3", {"amount": 1})
    assert status == 409 and err["error"]["type"] == "invalid_state"


async def test_automatic_capture(gw: Gateway) -> None:
    status, pay, _ = await gw.create("auto-1", capture="automatic", amount=2500, currency="USD")
    assert status == 201
    assert pay["status"] == "captured"
    assert pay["amount_captured"] == 2500
    charges = await gw.sim.charges("stripe", pay["id"])
    assert [c["amount_captured"] for c in charges] == [2500]


async def test_void(gw: Gateway) -> None:
    _, pay, _ = await gw.create("void-1")
    status, pay, _ = await gw.post(f"/v1/payments/{pay['id']}/void", "void-1v")
    assert status == 200 and pay["status"] == "voided"
    status, err, _ = await gw.post(f"/v1/payments/{pay['id']}/capture", "void-1c")
    assert status == 409 and err["error"]["type"] == "invalid_state"


@pytest.mark.parametrize(("token", "decline_code"), [("tok_decline", "generic_decline"),
                                                     ("tok_insufficient_funds",
                                                      "insufficient_funds")])
async def test_decline_is_a_created_payment(gw: Gateway, token: str, decline_code: str) -> None:
    status, pay, _ = await gw.create(f"dec-{token}",
                                     payment_method={"type": "card", "token": token})
    assert status == 201
    assert pay["status"] == "declined"
    assert pay["failure"]["code"] == "card_declined"
    assert pay["failure"]["decline_code"] == decline_code
    assert pay["attempts"][0]["outcome"] == "declined"


async def test_3ds_requires_action(gw: Gateway) -> None:
    status, pay, _ = await gw.create("3ds-1", payment_method={"type": "card", "token": "tok_3ds"})
    assert status == 201
    assert pay["status"] == "requires_action"
    assert pay["next_action"] and pay["next_action"]["type"] == "redirect_to_url"


# ------------------------------------------------------------------ idempotency


async def test_replay_returns_current_state_without_calling_provider(gw: Gateway) -> None:
    status, first, hdrs = await gw.create("idem-1")
    assert status == 201 and "Idempotent-Replayed" not in hdrs
    await gw.post(f"/v1/payments/{first['id']}/capture", "idem-1-cap")
    before = await gw.sim.requests("stripe")
    status, again, hdrs = await gw.create("idem-1")
    assert status == 201
    assert hdrs["Idempotent-Replayed"] == "true"
    assert again["id"] == first["id"]
    assert again["status"] == "captured"  # the CURRENT state
    assert await gw.sim.requests("stripe") == before


async def test_same_key_different_body_is_422(gw: Gateway) -> None:
    await gw.create("idem-2", amount=1000)
    status, err, _ = await gw.create("idem-2", amount=1001)
    assert status == 422
    assert err["error"]["code"] == "idempotency_key_reused"


async def test_fifty_concurrent_requests_one_key_make_one_charge(gw: Gateway) -> None:
    await gw.sim.faults("stripe", latency_ms=300)
    results = await asyncio.gather(*[gw.create("idem-storm") for _ in range(50)])
    statuses = sorted({s for s, _, _ in results})
    assert set(statuses) <= {201, 409}, statuses
    created = [body for s, body, _ in results if s == 201]
    assert created, "at least the first request must succeed"
    assert len({b["id"] for b in created}) == 1
    for s, body, hdrs in results:
        if s == 409:
            assert body["error"]["code"] == "idempotency_request_in_progress"
            assert int(hdrs["Retry-After"]) >= 1
    charges = await gw.sim.charges("stripe", created[0]["id"])
    assert len(charges) == 1


async def test_missing_and_invalid_idempotency_key(gw: Gateway) -> None:
    r = await gw.client.post("/v1/payments", data=json.dumps(payment_body()), headers=headers())
    assert r.status == 400
    assert (await r.json())["error"]["param"] == "Idempotency-Key"
    status, err, _ = await gw.create("x" * 256)
    assert status == 400 and err["error"]["code"] == "idempotency_key_invalid"


# ------------------------------------------------------------------ concurrency


async def test_concurrent_refunds_over_captured_amount_one_wins(gw: Gateway) -> None:
    _, pay, _ = await gw.create("conc-ref", capture="automatic", amount=1000)
    pid = pay["id"]
    results = await asyncio.gather(
        gw.post(f"/v1/payments/{pid}/refunds", "conc-ref-a", {"amount": 700}),
        gw.post(f"/v1/payments/{pid}/refunds", "conc-ref-b", {"amount": 700}),
    )
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [201, 409], results
    loser = next(body for s, body, _ in results if s == 409)
    assert loser["error"]["code"] == "amount_exceeds_refundable"
    _, final = await gw.get(f"/v1/payments/{pid}")
    assert final["amount_refunded"] == 700
    charges = await gw.sim.charges("stripe", pid)
    assert charges[0]["amount_refunded"] == 700


async def test_capture_and_void_race_one_wins(gw: Gateway) -> None:
    await gw.sim.faults("stripe", latency_ms=200)
    _, pay, _ = await gw.create("race-1")
    pid = pay["id"]
    results = await asyncio.gather(
        gw.post(f"/v1/payments/{pid}/capture", "race-cap"),
        gw.post(f"/v1/payments/{pid}/void", "race-void"),
    )
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200, 409], results
    _, final = await gw.get(f"/v1/payments/{pid}")
    assert final["status"] in ("captured", "voided")
    charges = await gw.sim.charges("stripe", pid)
    expected = "succeeded" if final["status"] == "captured" else "canceled"
    assert charges[0]["status"] == expected


# ------------------------------------------------------------------ isolation & auth


async def test_other_merchant_gets_404_everywhere(gw: Gateway) -> None:
    _, pay, _ = await gw.create("iso-1", capture="automatic")
    pid = pay["id"]
    for path in (f"/v1/payments/{pid}", f"/v1/payments/{pid}/events"):
        status, err = await gw.get(path, key=GLOBEX_KEY)
        assert status == 404 and err["error"]["type"] == "not_found"
    for path, body in ((f"/v1/payments/{pid}/capture", {}), (f"/v1/payments/{pid}/void", {}),
                       (f"/v1/payments/{pid}/refunds", {"amount": 1})):
        status, err, _ = await gw.post(path, "iso-globex", body, key=GLOBEX_KEY)
        assert status == 404, (path, err)
    status, missing = await gw.get("/v1/payments/pay_doesnotexist")
    assert status == 404
    assert missing == err  # a foreign id answers exactly like a missing one
    _, still = await gw.get(f"/v1/payments/{pid}")
    assert still["amount_refunded"] == 0


async def test_authentication(gw: Gateway) -> None:
    r = await gw.client.get("/v1/payments/pay_x")
    assert r.status == 401
    r = await gw.client.get("/v1/payments/pay_x", headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    assert (await r.json())["error"]["type"] == "authentication_failed"


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(("body", "param"), [
    ({"amount": "10"}, "amount"),
    ({"amount": 0}, "amount"),
    ({"amount": 10.5}, "amount"),
    ({"currency": "eur"}, "currency"),
    ({"capture": "later"}, "capture"),
    ({"payment_method": {"type": "card"}}, "payment_method.token"),
    ({"customer": {"country": "Germany"}}, "customer.country"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"surprise": 1}, "surprise"),
])
async def test_invalid_requests_name_the_param(gw: Gateway, body: dict, param: str) -> None:
    status, err, _ = await gw.create(f"bad-{param}-{json.dumps(body)}", **body)
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request"
    assert err["error"]["param"] == param


@pytest.mark.parametrize("currency", ["ZZZ", "XXX", "BTC", "XAU"])
async def test_unknown_or_untradeable_currency_is_a_400_and_nothing_is_stored(
    gw: Gateway, currency: str
) -> None:
    status, err, _ = await gw.create(f"cur-{currency}", currency=currency)
    assert status == 400, err
    assert (err["error"]["code"], err["error"]["param"]) == ("currency_not_supported",
                                                              "currency")
    payment_id = derived_id("pay_", "acme", f"cur-{currency}")
    assert await gw.client.server.app[STORE].get_payment(payment_id) is None


async def test_a_valid_currency_no_provider_supports_is_a_400(gw: Gateway) -> None:
    status, err, _ = await gw.create("cur-mga", currency="MGA", amount=10000)
    assert status == 400, err
    assert (err["error"]["code"], err["error"]["param"]) == ("currency_not_supported",
                                                              "currency")


@pytest.mark.parametrize("pm", [
    {"type": "card", "number": "4242424242424242", "token": "tok_visa"},
    {"type": "card", "token": "tok_visa", "cvc": "123"},
])
async def test_raw_card_data_refused_and_never_stored(gw: Gateway, pm: dict, caplog) -> None:
    status, err, _ = await gw.create("card-1", payment_method=pm)
    assert status == 400 and err["error"]["code"] == "raw_card_data_rejected"
    assert "4242" not in json.dumps(err)


async def test_luhn_number_anywhere_refused(gw: Gateway, caplog) -> None:
    status, err, _ = await gw.create("card-2", metadata={"note": "card 4111 1111 1111 1111"})
    assert status == 400 and err["error"]["code"] == "raw_card_data_rejected"
    store = gw.client.server.app[STORE]
    from gateway.model import derived_id
    assert await store.get_payment(derived_id("pay_", "acme", "card-2")) is None
    assert "4111 1111 1111 1111" not in caplog.text
    # a non-Luhn long number is fine
    status, _, _ = await gw.create("card-3", metadata={"order": "1234567890123456"})
    assert status == 201


# ------------------------------------------------------------------ provider faults


async def test_followup_on_unavailable_provider_is_503_and_changes_nothing(gw: Gateway) -> None:
    _, pay, _ = await gw.create("f-503")
    pid = pay["id"]
    await gw.sim.faults("stripe", rate_limit_rate=1.0)
    status, err, hdrs = await gw.post(f"/v1/payments/{pid}/capture", "f-503-cap")
    assert status == 503 and err["error"]["type"] == "provider_unavailable"
    assert "Retry-After" in hdrs
    _, same = await gw.get(f"/v1/payments/{pid}")
    assert same["status"] == "authorized" and same["amount_captured"] == 0
    await gw.sim.faults("stripe", rate_limit_rate=0.0)
    status, pay, _ = await gw.post(f"/v1/payments/{pid}/capture", "f-503-cap")  # same key
    assert status == 200 and pay["status"] == "captured"


async def test_process_then_drop_resolves_to_one_charge(gw: Gateway) -> None:
    await gw.sim.faults("stripe", mode="drop_after_process")

    async def heal_after_first_request() -> None:
        async def seen() -> bool:
            return (await gw.sim.requests("stripe")).get("total", 0) >= 1
        from tests.gateway_harness import wait_for
        await wait_for(seen)
        await gw.sim.faults("stripe", mode="normal")

    healer = asyncio.create_task(heal_after_first_request())
    status, pay, _ = await gw.create("drop-1")
    await healer
    assert status == 201
    assert pay["status"] == "authorized", pay
    assert pay["attempts"][0]["provider"] == "stripe_main"
    charges = await gw.sim.charges("stripe", pay["id"])
    assert len(charges) == 1
    assert charges[0]["id"] == pay["provider_reference"]


async def test_provider_down_for_authorize_fails_without_money(gw: Gateway) -> None:
    await gw.sim.faults("stripe", mode="refuse")
    status, pay, _ = await gw.create("down-1")
    assert status == 201
    assert pay["status"] == "failed"
    assert pay["failure"]["code"] == "no_provider_available"
    assert pay["attempts"][0]["outcome"] == "rejected_safe"
    await gw.sim.faults("stripe", mode="normal")
    assert await gw.sim.charges("stripe", pay["id"]) == []


async def test_health_endpoints_and_openapi(gw: Gateway) -> None:
    assert (await gw.client.get("/healthz")).status == 200
    r = await gw.client.get("/readyz")
    assert r.status == 200 and (await r.json())["checks"] == {"store": True, "config": True}
    spec = await (await gw.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/payments/{payment_id}/refunds" in spec["paths"]
    text = await (await gw.client.get("/metrics")).text()
    assert "gateway_http_requests_total" in text
    for name in ("gateway_retries_total", "gateway_provider_mismatches_total"):
        assert f'{name}{{' in text, name  # created at 0 so dashboards have a series


async def test_the_payment_object_is_exactly_the_documented_fields(gw: Gateway) -> None:
    """Built from an explicit list (issue #11: needs_reconcile leaked): the answer, the
    stored document's internal keys and /openapi.json agree."""
    _, pay, _ = await gw.create("public-fields", capture="automatic")
    _, pay, _ = await gw.post(f"/v1/payments/{pay['id']}/refunds", "public-ref", {"amount": 1})
    spec = await (await gw.client.get("/openapi.json")).json()
    schema = spec["components"]["schemas"]["Payment"]
    assert set(pay) == set(schema["properties"]) == set(schema["required"])
    doc = await gw.client.server.app[STORE].get_payment(pay["id"])
    assert doc is not None and "needs_reconcile" in doc  # internal, and not in the answer
    assert not any(k.startswith("_") or k == "needs_reconcile" for k in pay)
    attempt_fields = set(schema["properties"]["attempts"]["items"]["properties"])
    refund_fields = set(schema["properties"]["refunds"]["items"]["properties"])
    assert all(set(a) <= attempt_fields for a in pay["attempts"])
    assert all(set(r) <= refund_fields for r in pay["refunds"]) and pay["refunds"]
    void = spec["paths"]["/v1/payments/{payment_id}/void"]["post"]["requestBody"]
    assert void["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Void"}
    assert set(spec["components"]["schemas"]["Void"]["properties"]) == {"reason"}


async def test_metrics_count_provider_calls_payments_and_idempotency(gw: Gateway) -> None:
    from gateway.metrics import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    calls = value("gateway_provider_calls_total", provider="stripe_main",
                  operation="authorize", outcome="succeeded")
    declines = value("gateway_provider_calls_total", provider="stripe_main",
                     operation="authorize", outcome="declined")
    replayed = value("gateway_idempotency_total", result="replayed")
    authorized = value("gateway_payments_total", provider="stripe_main", status="authorized")
    await gw.create("m-1")
    await gw.create("m-1")
    await gw.create("m-2", payment_method={"type": "card", "token": "tok_decline"})
    assert value("gateway_provider_calls_total", provider="stripe_main",
                 operation="authorize", outcome="succeeded") == calls + 1
    assert value("gateway_provider_calls_total", provider="stripe_main",
                 operation="authorize", outcome="declined") == declines + 1
    assert value("gateway_idempotency_total", result="replayed") == replayed + 1
    assert value("gateway_payments_total", provider="stripe_main",
                 status="authorized") == authorized + 1
    text = await (await gw.client.get("/metrics")).text()
    assert 'gateway_provider_call_duration_seconds_bucket{' in text
    assert "pay_" not in text  # no payment ids as label values
