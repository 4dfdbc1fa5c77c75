"""Braintree disputes (#14 item 1, provider side): ``dispute_*`` notifications ->
DisputeInfo, and the simulator's ``POST /_sim/braintree/disputes``.

The witness is the braintree SDK itself: its ``WebhookNotification.Kind.Dispute*`` and
``Dispute.Status`` constants, the sample notifications ``webhook_testing.sample_notification``
generates (real signed payloads, new and legacy layouts), and its
``webhook_notification.parse``, which both the gateway's verifier and these tests use on
what the simulator sends.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode

import braintree
import pytest

from providers.braintree import webhook as bt_webhook
from providers.braintree.simulator import BraintreeSimulator
from providers.braintree.status import DISPUTE_KINDS, DISPUTE_STATUS, map_dispute_status
from providers.braintree.webhooks import form_body
from providers.simulator import SimulatorHost
from providers.statuses import DisputeStatus
from tests.dispute_harness import (
    Unmapped,
    check_open_twice_and_closed,
    check_refusals,
    dispute,
)
from tests.webhook_receiver import Receiver

D = DisputeStatus
MERCHANT, PUBLIC, PRIVATE = "merch_disputes", "pub_disputes", "priv_disputes"

EXPECTED_STATUS: dict[str, DisputeStatus] = {
    "open": D.NEEDS_RESPONSE,
    "disputed": D.UNDER_REVIEW,
    "under_review": D.UNDER_REVIEW,
    "won": D.WON,
    "lost": D.LOST,
    "accepted": D.LOST,
    "auto_accepted": D.LOST,
    "expired": D.LOST,
}
#: what each SDK sample notification kind parses to (its sample's dispute status)
EXPECTED_KIND: dict[str, DisputeStatus] = {
    "dispute_opened": D.NEEDS_RESPONSE,
    "dispute_under_review": D.UNDER_REVIEW,
    "dispute_disputed": D.UNDER_REVIEW,
    "dispute_won": D.WON,
    "dispute_lost": D.LOST,
    "dispute_accepted": D.LOST,
    "dispute_auto_accepted": D.LOST,
    "dispute_expired": D.LOST,
}


def sdk_constants(cls: type, prefix: str = "") -> set[str]:
    return {v for k, v in vars(cls).items()
            if not k.startswith("_") and k.startswith(prefix) and isinstance(v, str)}


def parser() -> braintree.BraintreeGateway:
    return braintree.BraintreeGateway(braintree.Configuration(
        braintree.Environment.Sandbox, MERCHANT, PUBLIC, PRIVATE))


def test_tables_cover_the_sdk_constants_exactly() -> None:
    assert sdk_constants(braintree.Dispute.Status) == set(DISPUTE_STATUS) == set(EXPECTED_STATUS)
    assert DISPUTE_STATUS == EXPECTED_STATUS
    kinds = sdk_constants(braintree.WebhookNotification.Kind, "Dispute")
    assert kinds == set(DISPUTE_KINDS) == set(EXPECTED_KIND)


@pytest.mark.parametrize("dispute_id", ["dp_sample", "legacy_dispute_id"])
@pytest.mark.parametrize("kind", sorted(EXPECTED_KIND))
def test_sdk_sample_notifications_parse(kind: str, dispute_id: str) -> None:
    sample = parser().webhook_testing.sample_notification(kind, dispute_id)
    [ev] = bt_webhook.verify_and_parse(urlencode(sample).encode(), {}, PUBLIC, PRIVATE)
    assert ev.target == "dispute" and ev.status is None and ev.kind == kind
    assert ev.dispute is not None
    assert ev.dispute.dispute_reference == dispute_id
    assert ev.dispute.status is EXPECTED_KIND[kind]
    assert ev.dispute.currency == "USD" and ev.dispute.reason == "fraud"
    assert ev.payment_reference == dispute_id  # the samples reuse the id for the transaction
    if dispute_id == "legacy_dispute_id":  # <amount>250.00</amount>, reply by 2014-03-21
        assert ev.dispute.amount == 25000
        assert ev.dispute.evidence_due_by == 1395446400.0  # 2014-03-22T00:00:00Z
    else:  # <amount-disputed>100.00</amount-disputed>, reply by 2016-02-22
        assert ev.dispute.amount == 10000
        assert ev.dispute.evidence_due_by == 1456185600.0  # 2016-02-23T00:00:00Z
    assert ev.event_id.startswith(f"{kind}:{dispute_id}:")


def test_unmapped_status_is_reported_not_guessed() -> None:
    subject = {"dispute": {"id": "dp_x", "amount": "5.00", "currency_iso_code": "EUR",
                           "status": "pre_arbitration", "reason": "general",
                           "transaction": {"id": "txn_x", "order_id": "pay_x"}}}
    body = form_body(PUBLIC, PRIVATE, "dispute_under_review", subject)
    with Unmapped() as unmapped:
        [ev] = bt_webhook.verify_and_parse(body, {}, PUBLIC, PRIVATE)
        assert map_dispute_status(None) == (None, False)
    assert ev.target == "dispute" and ev.dispute is not None and ev.dispute.status is None
    assert (ev.payment_reference, ev.merchant_reference, ev.dispute.amount) == (
        "txn_x", "pay_x", 500)
    assert ("braintree", "dispute", "pre_arbitration") in unmapped.seen


# ------------------------------------------------------------------ simulator


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def host(receiver: Receiver) -> AsyncIterator[SimulatorHost]:
    sim = BraintreeSimulator(merchant_id=MERCHANT, public_key=PUBLIC, private_key=PRIVATE,
                             webhook_url=receiver.url, settle_delay_s=3600)
    h = SimulatorHost([sim], control_port=0)
    await h.start()
    yield h
    await h.stop()


async def sale(host: SimulatorHost, order_id: str, *, submit: bool = True,
               amount: str = "20.00") -> Any:
    env = braintree.Environment("simulator", "127.0.0.1", str(host.port("braintree")),
                                "http://127.0.0.1", False, None)
    gw = braintree.BraintreeGateway(braintree.Configuration(
        environment=env, merchant_id=MERCHANT, public_key=PUBLIC, private_key=PRIVATE,
        timeout=5))
    params = {"amount": amount, "payment_method_nonce": "tok_visa", "order_id": order_id,
              "options": {"submit_for_settlement": submit}}
    result = await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(gw.transaction.sale, params))
    assert result.is_success
    return result.transaction


def sdk_parse(raw: bytes) -> Any:
    form = parse_qs(raw.decode("ascii"))
    return parser().webhook_notification.parse(form["bt_signature"][0], form["bt_payload"][0])


async def dispute_notifications(receiver: Receiver, count: int) -> list[tuple[Any, Any]]:
    def bodies() -> list[bytes]:
        return [b for b, _ in receiver.requests if sdk_parse(b).kind in DISPUTE_KINDS]

    for _ in range(250):
        if len(bodies()) >= count:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    got = bodies()
    assert len(got) == count
    out = []
    for raw in got:
        [ev] = bt_webhook.verify_and_parse(raw, {}, PUBLIC, PRIVATE)
        out.append((sdk_parse(raw), ev))
    return out


@pytest.mark.parametrize("action,kind,closed", [("win", "dispute_won", D.WON),
                                                ("lose", "dispute_lost", D.LOST)])
async def test_simulator_open_then_close_sends_sdk_parsable_notifications(
        host: SimulatorHost, receiver: Receiver, action: str, kind: str,
        closed: DisputeStatus) -> None:
    txn = await sale(host, "pay_bt1")
    status, opened = await dispute(host, "braintree", {"reference": "pay_bt1",
                                                       "action": "open", "amount": 1250})
    assert status == 200, opened
    status, answer = await dispute(host, "braintree", {"reference": "pay_bt1",
                                                       "action": action})
    assert status == 200, answer
    [(n1, ev1), (n2, ev2)] = await dispute_notifications(receiver, 2)
    # the SDK's own objects
    assert (n1.kind, n2.kind) == ("dispute_opened", kind)
    assert isinstance(n1.dispute, braintree.Dispute)
    assert (n1.dispute.status, n2.dispute.status) == (
        braintree.Dispute.Status.Open,
        braintree.Dispute.Status.Won if action == "win" else braintree.Dispute.Status.Lost)
    assert n1.dispute.transaction.id == txn.id
    assert str(n1.dispute.amount_disputed) == "12.50"
    assert n1.dispute.reply_by_date is not None
    # the gateway's parse
    for ev in (ev1, ev2):
        assert ev.target == "dispute" and ev.dispute is not None
        assert (ev.payment_reference, ev.merchant_reference) == (txn.id, "pay_bt1")
        assert ev.dispute.dispute_reference == opened["dispute"]["id"]
        assert (ev.dispute.amount, ev.dispute.currency) == (1250, "USD")
        assert ev.dispute.evidence_due_by is not None
    assert ev1.dispute is not None and ev2.dispute is not None
    assert (ev1.dispute.status, ev2.dispute.status) == (D.NEEDS_RESPONSE, closed)
    assert ev1.event_id != ev2.event_id
    await check_open_twice_and_closed(host, "braintree", "pay_bt1")


async def test_simulator_refusals(host: SimulatorHost, receiver: Receiver) -> None:
    await sale(host, "pay_cap", amount="20.00")
    await sale(host, "pay_auth", submit=False)
    await check_refusals(host, "braintree", captured="pay_cap", uncaptured="pay_auth",
                         captured_amount=2000)
    status, answer = await dispute(host, "braintree", {"reference": "pay_cap",
                                                       "action": "open"})
    assert status == 200 and answer["dispute"]["amount"] == 2000
    status, answer = await dispute(host, "braintree", {"reference": "pay_cap",
                                                       "action": "open"})
    assert (status, answer["error"]["code"]) == (409, "dispute_already_open")
    await dispute_notifications(receiver, 1)
