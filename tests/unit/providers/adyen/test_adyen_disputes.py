"""Adyen disputes (#14 item 1, provider side): the chargeback notifications
(``NOTIFICATION_OF_CHARGEBACK``, ``CHARGEBACK``, ``CHARGEBACK_REVERSED``,
``SECOND_CHARGEBACK``) -> DisputeInfo, and the simulator's ``POST /_sim/adyen/disputes``.

Witnesses: Adyen's Webhooks-v1 OpenAPI (the four webhooks' request schemas, the
``disputeStatus`` enum of ``DisputesNotificationAdditionalData`` and the four published
examples, vendored in tests/fixtures/provider_specs/) and the Adyen SDK's HMAC helpers
(``Adyen.util.generate_notification_sig`` / ``is_valid_hmac_notification``).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import Adyen
import Adyen.util
import pytest

from providers.adyen import status as st
from providers.adyen import webhook as adyen_webhook
from providers.adyen.simulator import AdyenSimulator
from providers.simulator import SimulatorHost
from providers.statuses import DisputeStatus
from tests.dispute_harness import (
    EXAMPLES,
    Unmapped,
    check_open_twice_and_closed,
    check_refusals,
    dispute,
)
from tests.fixtures.provider_specs.schemas import ADYEN_WEBHOOKS, Conformance, document
from tests.webhook_receiver import Receiver

D = DisputeStatus
KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
API_KEY, MERCHANT = "adyen_disputes_key", "AcmeDisputes"
CODES = ("NOTIFICATION_OF_CHARGEBACK", "CHARGEBACK", "CHARGEBACK_REVERSED",
         "SECOND_CHARGEBACK")

EXPECTED_CODE: dict[str, DisputeStatus] = {
    "NOTIFICATION_OF_CHARGEBACK": D.NEEDS_RESPONSE,
    "CHARGEBACK": D.NEEDS_RESPONSE,
    "CHARGEBACK_REVERSED": D.WON,
    "SECOND_CHARGEBACK": D.LOST,
}
EXPECTED_DISPUTE_STATUS: dict[str, DisputeStatus] = {
    "Undefended": D.NEEDS_RESPONSE,
    "Unresponded": D.NEEDS_RESPONSE,
    "Responded": D.UNDER_REVIEW,
    "Pending": D.UNDER_REVIEW,
    "Accepted": D.LOST,
    "Expired": D.LOST,
    "Lost": D.LOST,
    "Won": D.WON,
}


def published() -> dict[str, Any]:
    return document(ADYEN_WEBHOOKS)


def test_tables_cover_the_published_codes_and_enum_exactly() -> None:
    doc = published()
    assert set(CODES) <= set(doc["webhooks"])  # each is a published webhook
    assert dict(st.DISPUTE_EVENT_CODES) == EXPECTED_CODE
    extra = doc["components"]["schemas"]["DisputesNotificationAdditionalData"]["properties"]
    assert set(extra["disputeStatus"]["enum"]) == set(st.DISPUTE_STATUS)
    assert dict(st.DISPUTE_STATUS) == EXPECTED_DISPUTE_STATUS
    assert not set(CODES) & st.IGNORED_EVENT_CODES
    assert not {code for code, _ in st.EVENT_CODES} & set(CODES)


def signed(body: dict[str, Any]) -> bytes:
    """The published example with a real signature (the example carries a placeholder),
    made by the SDK's own helper."""
    out = copy.deepcopy(body)
    for wrapper in out["notificationItems"]:
        item = wrapper["NotificationRequestItem"]
        unsigned = {k: v for k, v in item.items() if k != "additionalData"}
        item.setdefault("additionalData", {})["hmacSignature"] = (
            Adyen.util.generate_notification_sig(unsigned, KEY).decode())
        assert Adyen.util.is_valid_hmac_notification(out, KEY) is True
    return json.dumps(out).encode()


def example(code: str) -> dict[str, Any]:
    return copy.deepcopy(EXAMPLES["adyen"][code])


def test_published_examples_validate_against_their_schemas() -> None:
    c = Conformance("adyen dispute examples", ADYEN_WEBHOOKS)
    for code in CODES:
        c.schema(code, example(code), published()["webhooks"][code])
    c.assert_all()


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


#: code -> (payment_reference, reason, evidence_due_by) of the published example
EXAMPLE_FACTS: dict[str, tuple[str | None, str, float | None]] = {
    "CHARGEBACK": ("9913140798220028", "4853", ts("2021-07-31T03:03:07+02:00")),
    "NOTIFICATION_OF_CHARGEBACK": ("9913140798220028", "4853",
                                   ts("2021-07-31T03:03:08+02:00")),
    "CHARGEBACK_REVERSED": (None, "Fraudulent Processing of Transactions", None),
    "SECOND_CHARGEBACK": (None, "502", None),
}


@pytest.mark.parametrize("code", CODES)
def test_published_examples_parse(code: str) -> None:
    [ev] = adyen_webhook.verify_and_parse(signed(example(code)), {}, KEY)
    assert ev.target == "dispute" and ev.status is None and ev.kind == code
    assert ev.payment_status() is None and ev.refund_status() is None
    assert ev.event_id == f"QFQTPCQ8HXSKGK82:{code}:true"
    assert ev.merchant_reference == "YOUR_MERCHANT_REFERENCE"
    payment_reference, reason, due = EXAMPLE_FACTS[code]
    assert ev.payment_reference == payment_reference
    info = ev.dispute
    assert info is not None
    assert info.dispute_reference == "QFQTPCQ8HXSKGK82"
    assert (info.amount, info.currency) == (1000, "EUR")
    assert info.status is EXPECTED_CODE[code]
    assert (info.reason, info.evidence_due_by) == (reason, due)


@pytest.mark.parametrize("code", CODES)
def test_a_stage_repeated_with_a_new_dispute_status_is_a_new_event(code: str) -> None:
    """The gateway dedupes on event_id: the same code whose disputeStatus moved on
    (Undefended -> Responded) must not be taken for a duplicate delivery."""
    ids = []
    for raw in ("Undefended", "Responded", "Responded"):
        body = example(code)
        body["notificationItems"][0]["NotificationRequestItem"]["additionalData"][
            "disputeStatus"] = raw
        [ev] = adyen_webhook.verify_and_parse(signed(body), {}, KEY)
        ids.append(ev.event_id)
    assert ids[0] == f"QFQTPCQ8HXSKGK82:{code}:true:Undefended"
    assert ids[0] != ids[1] == ids[2]


@pytest.mark.parametrize("raw", sorted(EXPECTED_DISPUTE_STATUS))
@pytest.mark.parametrize("code", CODES)
def test_dispute_status_decides_when_present(code: str, raw: str) -> None:
    body = example(code)
    body["notificationItems"][0]["NotificationRequestItem"]["additionalData"][
        "disputeStatus"] = raw
    [ev] = adyen_webhook.verify_and_parse(signed(body), {}, KEY)
    assert ev.dispute is not None and ev.dispute.status is EXPECTED_DISPUTE_STATUS[raw]


def test_unmapped_dispute_status_is_reported_not_guessed() -> None:
    body = example("CHARGEBACK")
    body["notificationItems"][0]["NotificationRequestItem"]["additionalData"][
        "disputeStatus"] = "Arbitration"
    with Unmapped() as unmapped:
        [ev] = adyen_webhook.verify_and_parse(signed(body), {}, KEY)
    assert ev.target == "dispute" and ev.dispute is not None and ev.dispute.status is None
    assert unmapped.seen == [("adyen", "dispute_status", "Arbitration")]


@pytest.mark.parametrize("code", CODES)
def test_success_false_is_ignored(code: str) -> None:
    body = example(code)
    body["notificationItems"][0]["NotificationRequestItem"]["success"] = "false"
    with Unmapped() as unmapped:
        [ev] = adyen_webhook.verify_and_parse(signed(body), {}, KEY)
    assert (ev.target, ev.dispute) == ("ignore", None)
    assert unmapped.seen == []


def test_a_bad_hmac_rejects_the_dispute_notification() -> None:
    body = json.loads(signed(example("CHARGEBACK")))
    body["notificationItems"][0]["NotificationRequestItem"]["amount"]["value"] = 1
    with pytest.raises(adyen_webhook.InvalidSignature):
        adyen_webhook.verify_and_parse(json.dumps(body).encode(), {}, KEY)


# ------------------------------------------------------------------ simulator


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def host(receiver: Receiver) -> AsyncIterator[SimulatorHost]:
    sim = AdyenSimulator(api_key=API_KEY, merchant_account=MERCHANT, webhook_secret=KEY,
                         webhook_url=receiver.url)
    h = SimulatorHost([sim], control_port=0)
    await h.start()
    yield h
    await h.stop()


async def pay(host: SimulatorHost, ref: str, *, manual: bool = False,
              value: int = 2000, currency: str = "EUR") -> str:
    client = Adyen.Adyen(xapikey=API_KEY, platform="test", http_timeout=5)
    client.checkout.payments_api.baseUrl = f"{host.base_url('adyen')}/checkout/v71"
    body: dict[str, Any] = {
        "merchantAccount": MERCHANT, "reference": ref,
        "amount": {"value": value, "currency": currency},
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "tok_visa"},
        "returnUrl": "https://example.test/return"}
    if manual:
        body["additionalData"] = {"manualCapture": "true"}
    answer = await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(client.checkout.payments_api.payments, body))
    return str(answer.message["pspReference"])


async def dispute_items(receiver: Receiver, count: int) -> list[tuple[dict[str, Any], Any]]:
    def bodies() -> list[tuple[bytes, dict[str, str]]]:
        return [(b, h) for b, h in receiver.requests
                if json.loads(b)["notificationItems"][0]["NotificationRequestItem"][
                    "eventCode"] in CODES]

    for _ in range(250):
        if len(bodies()) >= count:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    got = bodies()
    assert len(got) == count
    out = []
    for raw, headers in got:
        body = json.loads(raw)
        assert Adyen.util.is_valid_hmac_notification(body, KEY) is True
        [ev] = adyen_webhook.verify_and_parse(raw, headers, KEY)
        out.append((body, ev))
    return out


@pytest.mark.parametrize("action,code,closed", [
    ("win", "CHARGEBACK_REVERSED", D.WON), ("lose", "SECOND_CHARGEBACK", D.LOST)])
async def test_simulator_open_then_close_sends_signed_published_notifications(
        host: SimulatorHost, receiver: Receiver, action: str, code: str,
        closed: DisputeStatus) -> None:
    psp = await pay(host, "pay_ad1")
    status, opened = await dispute(host, "adyen", {"reference": "pay_ad1", "action": "open",
                                                   "amount": 1500})
    assert status == 200, opened
    status, answer = await dispute(host, "adyen", {"reference": "pay_ad1", "action": action})
    assert status == 200, answer
    [(b1, ev1), (b2, ev2)] = await dispute_items(receiver, 2)
    c = Conformance("adyen dispute notifications", ADYEN_WEBHOOKS)
    for body in (b1, b2):
        item_code = body["notificationItems"][0]["NotificationRequestItem"]["eventCode"]
        c.schema(item_code, body, published()["webhooks"][item_code])
    c.assert_all()
    assert (ev1.kind, ev2.kind) == ("CHARGEBACK", code)
    for ev in (ev1, ev2):
        assert ev.target == "dispute" and ev.dispute is not None
        assert (ev.payment_reference, ev.merchant_reference) == (psp, "pay_ad1")
        assert ev.dispute.dispute_reference == opened["dispute"]["pspReference"] != psp
        assert (ev.dispute.amount, ev.dispute.currency, ev.dispute.reason) == (
            1500, "EUR", "10.4")
        assert ev.dispute.evidence_due_by is not None
    assert ev1.dispute is not None and ev2.dispute is not None
    assert (ev1.dispute.status, ev2.dispute.status) == (D.NEEDS_RESPONSE, closed)
    assert ev1.event_id != ev2.event_id
    await check_open_twice_and_closed(host, "adyen", "pay_ad1")


async def test_simulator_refusals(host: SimulatorHost, receiver: Receiver) -> None:
    await pay(host, "pay_cap", value=2000)
    await pay(host, "pay_auth", manual=True)
    await check_refusals(host, "adyen", captured="pay_cap", uncaptured="pay_auth",
                         captured_amount=2000)
    status, answer = await dispute(host, "adyen", {"reference": "pay_cap", "action": "open"})
    assert status == 200 and answer["dispute"]["amount"] == 2000
    status, answer = await dispute(host, "adyen", {"reference": "pay_cap", "action": "open"})
    assert (status, answer["error"]["code"]) == (409, "dispute_already_open")
    await dispute_items(receiver, 1)


async def test_wire_units_follow_adyen_decimals(host: SimulatorHost, receiver: Receiver
                                               ) -> None:
    """ISO minor units in the control request, Adyen's decimals on the wire: IDR has two
    ISO decimals and none at Adyen (its published currency table)."""
    await pay(host, "pay_idr", value=1000, currency="IDR")  # 1000 IDR = 100000 ISO units
    status, answer = await dispute(host, "adyen", {"reference": "pay_idr", "action": "open",
                                                   "amount": 150})  # 1.50 IDR
    assert (status, answer["error"]["code"]) == (400, "invalid_amount"), answer
    status, answer = await dispute(host, "adyen", {"reference": "pay_idr", "action": "open",
                                                   "amount": 100100})
    assert (status, answer["error"]["code"]) == (400, "amount_too_large"), answer
    status, answer = await dispute(host, "adyen", {"reference": "pay_idr", "action": "open",
                                                   "amount": 50000})
    assert status == 200 and answer["dispute"]["amount"] == 50000, answer
    [(body, ev)] = await dispute_items(receiver, 1)
    item = body["notificationItems"][0]["NotificationRequestItem"]
    assert item["amount"] == {"currency": "IDR", "value": 500}
    assert ev.dispute is not None and (ev.dispute.amount, ev.dispute.currency) == (50000, "IDR")
