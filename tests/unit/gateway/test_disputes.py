"""Disputes on the gateway side (#14 item 1, SPEC 16): gateway/disputes.py's rules, and end
to end per provider -- the simulator opens, wins and loses a dispute through its control
API and sends the provider's real signed notification; the gateway verifies it, records
the dispute on the payment, audits it, counts it and notifies the merchant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway import metrics
from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config
from gateway.disputes import (
    apply_dispute,
    dispute_id,
    lost_amount,
    merchant_event,
    refund_refusal,
)
from gateway.model import dispute_view, new_payment, public_view
from gateway.notification_signing import verify_signature
from providers.statuses import DisputeStatus
from providers.webhook_event import DisputeInfo
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import free_port
from tests.unit.gateway.test_notifications import FAST, Receiver, merchants

D = DisputeStatus
SRC = "webhook:stripe_main"
MERCHANT_SECRET = "whsec_merchant_acme_0123456789"  # test_notifications.merchants()


def captured_doc(amount: int = 1000, currency: str = "EUR") -> dict[str, Any]:
    body = payment_body(amount=amount, currency=currency)
    doc = new_payment("pay_d1", "acme", body, "fp")
    doc.update(status="captured", amount_authorized=amount, amount_captured=amount,
               provider="stripe_main", provider_reference="pi_1")
    return doc


def info(status: DisputeStatus | None, ref: str = "dp_1", amount: int | None = 1000,
         currency: str | None = "EUR", reason: str | None = "fraudulent",
         due: float | None = 1_900_000_000.0) -> DisputeInfo:
    return DisputeInfo(dispute_reference=ref, amount=amount, currency=currency,
                       reason=reason, status=status, evidence_due_by=due)


def apply(doc: dict[str, Any], i: DisputeInfo, at: float | None = None):
    return apply_dispute(doc, i, source=SRC, detail="test (evt)", occurred_at=at)


# --------------------------------------------------------------------------- rules


def test_a_new_dispute_is_recorded_with_every_public_field() -> None:
    doc = captured_doc()
    change, events = apply(doc, info(D.NEEDS_RESPONSE), at=100.0)
    assert change.result == "applied" and change.status == D.NEEDS_RESPONSE
    assert change.dispute_id == dispute_id("pay_d1", "dp_1") == doc["disputes"][0]["id"]
    [ev] = events
    assert ev["type"] == "dispute_created" and ev["source"] == SRC
    assert ev["to_status"] == "needs_response" and ev["dispute_reference"] == "dp_1"
    view = public_view(doc)["disputes"]
    assert view == [{"id": change.dispute_id, "amount": 1000, "currency": "EUR",
                     "reason": "fraudulent", "status": "needs_response",
                     "evidence_due_by": "2030-03-17T17:46:40.000Z",
                     "provider_reference": "dp_1"}]
    assert "_event_at" not in json.dumps(view)
    assert merchant_event(events) == ("dispute.created", change.dispute_id)


def test_a_payment_without_disputes_shows_an_empty_list() -> None:
    doc = captured_doc()
    del doc["disputes"]  # stored before disputes existed
    assert public_view(doc)["disputes"] == []


def test_the_same_dispute_twice_is_ignored_and_keeps_one_entry() -> None:
    doc = captured_doc()
    apply(doc, info(D.NEEDS_RESPONSE), at=100.0)
    change, [ev] = apply(doc, info(D.NEEDS_RESPONSE), at=101.0)
    assert change.result == "ignored" and ev["type"] == "event_ignored"
    assert "already needs_response" in ev["reason"]
    assert len(doc["disputes"]) == 1
    assert merchant_event([ev]) is None


@pytest.mark.parametrize(("final", "kind"), [(D.WON, "dispute.won"), (D.LOST, "dispute.lost")])
def test_a_dispute_moves_to_its_end_and_stays_there(final: DisputeStatus, kind: str) -> None:
    doc = captured_doc()
    apply(doc, info(D.NEEDS_RESPONSE), at=100.0)
    change, events = apply(doc, info(D.UNDER_REVIEW), at=110.0)
    assert change.result == "applied" and merchant_event(events)[0] == "dispute.updated"
    assert events[0]["from_status"] == "needs_response"
    change, events = apply(doc, info(final), at=120.0)
    assert change.result == "applied" and merchant_event(events)[0] == kind
    assert doc["disputes"][0]["status"] == final.value
    # nothing later reopens it, except won -> lost (a second chargeback)
    for later in (D.NEEDS_RESPONSE, D.UNDER_REVIEW):
        change, [ev] = apply(doc, info(later), at=130.0)
        assert change.result == "stale" and f"already {final.value}" in ev["reason"]
    other = D.LOST if final == D.WON else D.WON
    change, _ = apply(doc, info(other), at=140.0)
    assert change.result == ("applied" if final == D.WON else "stale")


def test_an_older_event_than_the_last_applied_is_stale() -> None:
    doc = captured_doc()
    apply(doc, info(D.UNDER_REVIEW), at=200.0)
    change, [ev] = apply(doc, info(D.NEEDS_RESPONSE), at=150.0)
    assert change.result == "stale" and "older" in ev["reason"]
    assert doc["disputes"][0]["status"] == "under_review"
    # a newer one may move back: a Stripe inquiry escalated to a chargeback
    change, _ = apply(doc, info(D.NEEDS_RESPONSE), at=250.0)
    assert change.result == "applied" and doc["disputes"][0]["status"] == "needs_response"


def test_an_unmapped_status_opens_as_needs_response_and_never_moves_a_known_one() -> None:
    doc = captured_doc()
    change, [ev] = apply(doc, info(None), at=100.0)
    assert change.result == "applied" and doc["disputes"][0]["status"] == "needs_response"
    assert "reported_status" not in ev
    apply(doc, info(D.UNDER_REVIEW), at=110.0)
    change, [ev] = apply(doc, info(None), at=120.0)
    assert change.result == "ignored" and doc["disputes"][0]["status"] == "under_review"


@pytest.mark.parametrize(("kw", "reason"), [
    ({"currency": "USD"}, "dispute currency USD is not the payment's EUR"),
    ({"amount": 1001}, "above the captured amount 1000"),
    ({"amount": 0}, "not positive"),
    ({"amount": -5}, "not positive"),
])
def test_a_dispute_for_other_money_than_captured_is_refused(kw: dict[str, Any], reason: str
                                                            ) -> None:
    doc = captured_doc()
    change, [ev] = apply(doc, info(D.NEEDS_RESPONSE, **kw), at=100.0)
    assert change.result == "stale" and reason in ev["reason"]
    assert doc["disputes"] == []


def test_an_amount_or_deadline_change_is_an_update() -> None:
    doc = captured_doc()
    apply(doc, info(D.NEEDS_RESPONSE, amount=1000), at=100.0)
    change, events = apply(doc, info(D.NEEDS_RESPONSE, amount=600, due=1_950_000_000.0),
                           at=110.0)
    assert change.result == "applied"
    assert events[0]["changed"] == ["amount", "evidence_due_by"]
    assert merchant_event(events)[0] == "dispute.updated"
    assert dispute_view(doc["disputes"][0])["amount"] == 600


def test_refunds_are_refused_while_disputed_and_limited_after_a_loss() -> None:
    doc = captured_doc(amount=1000)
    assert refund_refusal(doc, 1000, 1000) is None
    apply(doc, info(D.NEEDS_RESPONSE, amount=400), at=100.0)
    code, message = refund_refusal(doc, 100, 1000) or ("", "")
    assert code == "payment_disputed" and doc["disputes"][0]["id"] in message
    apply(doc, info(D.LOST, amount=400), at=110.0)
    assert lost_amount(doc) == 400
    assert refund_refusal(doc, 600, 1000) is None
    code, message = refund_refusal(doc, 601, 1000) or ("", "")
    assert code == "amount_exceeds_refundable" and "at most 600" in message
    apply(doc, info(D.LOST, ref="dp_2", amount=None), at=120.0)  # no amount: all of it
    assert lost_amount(doc) == 1400
    assert refund_refusal(doc, 1, 1000) is not None


def test_a_won_dispute_leaves_the_refund_alone() -> None:
    doc = captured_doc()
    apply(doc, info(D.WON), at=100.0)
    assert lost_amount(doc) == 0 and refund_refusal(doc, 1000, 1000) is None


def test_a_dispute_without_amount_or_deadline_is_still_recorded() -> None:
    doc = captured_doc()
    change, _ = apply(doc, info(D.NEEDS_RESPONSE, amount=None, currency=None, due=None))
    assert change.result == "applied"
    view = public_view(doc)["disputes"][0]
    assert view["amount"] is None and view["currency"] == "EUR"
    assert view["evidence_due_by"] is None


# --------------------------------------------------------------------------- end to end

PROVIDERS: dict[str, dict[str, Any]] = {
    "stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR"]},
    "braintree_main": {"type": "braintree", "sandbox": True, "currencies": ["EUR"]},
    "adyen_main": {"type": "adyen", "sandbox": True, "currencies": ["EUR"],
                   "merchant_account": "DisputeECOM"},
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def env(tmp_path: Path, store_url: str, aiohttp_client, receiver: Receiver
              ) -> AsyncIterator[tuple[TestClient, SimControl]]:
    # both stores (store_url is parametrized sqlite / redis in tests/conftest.py)
    config = write_config(tmp_path, store_url, providers=PROVIDERS,
                          merchants=merchants(receiver.url), notifications=FAST)
    port = free_port()  # the simulators deliver their signed notifications here
    app = create_app(load_config(config), public_url=f"http://127.0.0.1:{port}")
    client = await aiohttp_client(app, server_kwargs={"port": port})
    async with aiohttp.ClientSession() as session:
        yield client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)


async def _captured_payment(client: TestClient, provider: str, idem: str) -> dict[str, Any]:
    kind = PROVIDERS[provider]["type"]
    body = payment_body(amount=1500, capture="automatic", reference=f"order-{idem}",
                        payment_method={"type": "card",
                                        "provider_tokens": {provider: "tok_visa"}})
    r = await client.post("/v1/payments", data=json.dumps(body), headers=headers(idem=idem))
    pay = await r.json()
    assert r.status == 201, pay

    async def captured() -> dict[str, Any] | None:  # Adyen confirms by webhook
        got = await (await client.get(f"/v1/payments/{pay['id']}", headers=headers())).json()
        return got if got["status"] == "captured" else None

    pay = await wait_for(captured, 15)
    assert pay["provider"] == provider, (kind, pay)
    return pay


async def _control(sim: SimControl, kind: str, pid: str, action: str) -> None:
    async with sim.session.post(f"{sim.base}/_sim/{kind}/disputes",
                                json={"reference": pid, "action": action}) as r:
        assert r.status == 200, await r.text()


async def _dispute_status(client: TestClient, pid: str, status: str) -> dict[str, Any] | None:
    pay = await (await client.get(f"/v1/payments/{pid}", headers=headers())).json()
    disputes = pay["disputes"]
    return pay if disputes and disputes[0]["status"] == status else None


async def _refund(client: TestClient, pid: str, idem: str) -> tuple[int, dict[str, Any]]:
    r = await client.post(f"/v1/payments/{pid}/refunds", data=json.dumps({}),
                          headers=headers(idem=idem))
    return r.status, await r.json()


def _merchant_events(receiver: Receiver, pid: str) -> list[dict[str, Any]]:
    out = []
    for raw, hdrs in receiver.requests:
        body = json.loads(raw)
        if body["data"]["object"]["id"] == pid and body["type"].startswith("dispute."):
            assert verify_signature(raw, hdrs["Gateway-Signature"], MERCHANT_SECRET)
            out.append(body)
    return out


def _disputes_counted(provider: str, status: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "gateway_disputes_total", {"provider": provider, "status": status})
    return value or 0.0


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("action", ["win", "lose"])
async def test_a_dispute_from_the_simulator_lands_on_the_payment_and_the_merchant_hears(
        env: tuple[TestClient, SimControl], receiver: Receiver, provider: str, action: str
) -> None:
    client, sim = env
    kind = PROVIDERS[provider]["type"]
    final = "won" if action == "win" else "lost"
    before = _disputes_counted(provider, "needs_response"), _disputes_counted(provider, final)
    pay = await _captured_payment(client, provider, f"dsp-{provider}-{action}")
    pid = pay["id"]
    assert pay["disputes"] == []

    await _control(sim, kind, pid, "open")
    pay = await wait_for(lambda: _dispute_status(client, pid, "needs_response"), 15)
    [d] = pay["disputes"]
    assert (d["amount"], d["currency"]) == (1500, "EUR")
    assert d["id"].startswith("dsp_") and d["provider_reference"]
    assert d["reason"]
    assert pay["status"] == "captured"  # a dispute never moves the payment's own status
    status, refused = await _refund(client, pid, f"dsp-{provider}-{action}-r1")
    assert (status, refused["error"]["code"]) == (409, "payment_disputed"), refused

    await _control(sim, kind, pid, action)
    pay = await wait_for(lambda: _dispute_status(client, pid, final), 15)
    assert [x["id"] for x in pay["disputes"]] == [d["id"]]
    assert pay["status"] == "captured"

    async def notified() -> list[dict[str, Any]] | None:
        got = _merchant_events(receiver, pid)
        return got if {e["type"] for e in got} >= {"dispute.created", f"dispute.{final}"} else None

    events = await wait_for(notified, 15)
    created = next(e for e in events if e["type"] == "dispute.created")
    assert created["data"]["dispute"]["id"] == d["id"]
    assert created["source"] == f"webhook:{provider}"
    closed = next(e for e in events if e["type"] == f"dispute.{final}")
    assert closed["data"]["dispute"]["status"] == final

    trail = await (await client.get(f"/v1/payments/{pid}/events", headers=headers())).json()
    mine = [e for e in trail["data"] if e["type"] in ("dispute_created", "dispute_updated")]
    assert [e["source"] for e in mine] == [f"webhook:{provider}"] * len(mine)
    assert mine[0]["type"] == "dispute_created" and mine[-1]["to_status"] == final
    # won: the merchant kept the money and may refund it; lost: it went back already
    status, answer = await _refund(client, pid, f"dsp-{provider}-{action}-r2")
    if final == "won":
        assert status == 201 and answer["amount"] == 1500, answer
    else:
        assert (status, answer["error"]["code"]) == (409, "amount_exceeds_refundable"), answer
        assert "lost dispute" in answer["error"]["message"]
    assert len(await sim.charges(kind, pid)) == 1  # one charge at the provider
    # the ledger: the chargeback took the money back, a won dispute returned it (and the
    # refund after it is booked once it settles -- Adyen confirms it by webhook)
    want = ["capture", "dispute", "dispute_reversal", "refund"] if final == "won" else [
        "capture", "dispute"]

    async def booked() -> list[dict[str, Any]] | None:
        r = await client.get(f"/v1/payments/{pid}/ledger", headers=headers())
        entries: list[dict[str, Any]] = (await r.json())["data"]
        return entries if sorted(e["entry_type"] for e in entries) == want else None

    entries = await wait_for(booked, 15)
    assert all(e["amount"] == 1500 and e["currency"] == "EUR" for e in entries), entries
    account = f"provider:{provider}"
    held = (sum(e["amount"] for e in entries if e["debit"] == account)
            - sum(e["amount"] for e in entries if e["credit"] == account))
    assert held == 0, entries  # captured - refunded - what the dispute holds
    assert _disputes_counted(provider, "needs_response") >= before[0] + 1
    assert _disputes_counted(provider, final) >= before[1] + 1
