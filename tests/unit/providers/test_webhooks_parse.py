"""Provider webhook verification and mapping (providers/*/webhook.py), on payloads the
simulators' own signing code produces."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from gateway.state_machine import PaymentStatus, RefundStatus
from providers.adyen import sim_notify
from providers.adyen import webhook as adyen_webhook
from providers.adyen.simulator import DEFAULT_HMAC_KEY
from providers.braintree import webhook as bt_webhook
from providers.braintree import webhooks as bt_sim
from providers.braintree.simulator import SANDBOX_PRIVATE_KEY, SANDBOX_PUBLIC_KEY
from providers.registry import declaration
from providers.stripe import sim_events
from providers.stripe import webhook as stripe_webhook
from providers.stripe.simulator import DEFAULT_WEBHOOK_SECRET
from providers.webhook_event import InvalidSignature, MalformedWebhook, StaleTimestamp

P, R = PaymentStatus, RefundStatus
WHSEC = "whsec_test_parse"
HEX = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF"


def test_sandbox_defaults_match_the_simulators() -> None:
    """The declarations' sandbox secrets are the ones the simulators sign with."""
    assert declaration("stripe").sandbox_credentials["webhook_secret"] == DEFAULT_WEBHOOK_SECRET
    assert declaration("adyen").sandbox_credentials["hmac_key"] == DEFAULT_HMAC_KEY
    bt = declaration("braintree").sandbox_credentials
    assert (bt["public_key"], bt["private_key"]) == (SANDBOX_PUBLIC_KEY, SANDBOX_PRIVATE_KEY)


# ------------------------------------------------------------------ stripe


def _pi(status: str, **kw: Any) -> dict[str, Any]:
    pi = {"id": "pi_1", "object": "payment_intent", "amount": 1000, "amount_capturable": 0,
          "amount_received": 0, "currency": "eur", "status": status,
          "metadata": {"gateway_payment_id": "pay_abc"}}
    pi.update(kw)
    return pi


def _stripe(body: bytes, secret: str = WHSEC, ts: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": sim_events.sign(body, secret, ts)}


@pytest.mark.parametrize(("etype", "obj", "status", "amount"), [
    ("payment_intent.amount_capturable_updated",
     _pi("requires_capture", amount_capturable=1000), P.AUTHORIZED, 1000),
    ("payment_intent.succeeded", _pi("succeeded", amount_received=700), P.CAPTURED, 700),
    ("payment_intent.canceled", _pi("canceled"), P.VOIDED, None),
    ("payment_intent.payment_failed", _pi("requires_payment_method"), P.DECLINED, None),
    ("payment_intent.processing", _pi("processing"), P.PROCESSING, None),
    ("payment_intent.requires_action", _pi("requires_action"), P.REQUIRES_ACTION, None),
])
def test_stripe_payment_events(etype: str, obj: dict[str, Any], status: PaymentStatus,
                               amount: int | None) -> None:
    body = sim_events.build_event(etype, obj)
    [ev] = stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)
    assert ev.event_id == json.loads(body)["id"] and ev.kind == etype
    assert ev.target == "payment" and ev.status == status and ev.amount == amount
    assert ev.payment_reference == "pi_1" and ev.merchant_reference == "pay_abc"


@pytest.mark.parametrize(("currency", "wire", "iso"), [
    ("jpy", 500, 500), ("mga", 550, 55000), ("isk", 55000, 550), ("kwd", 1230, 1230),
])
def test_stripe_event_amounts_are_read_back_in_iso_minor_units(
    currency: str, wire: int, iso: int
) -> None:
    obj = _pi("succeeded", amount=wire, amount_received=wire, currency=currency)
    body = sim_events.build_event("payment_intent.succeeded", obj)
    [ev] = stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)
    assert ev.amount == iso


def test_stripe_refund_and_other_events() -> None:
    refund = {"id": "re_1", "object": "refund", "amount": 300, "currency": "eur",
              "payment_intent": "pi_1", "status": "succeeded",
              "metadata": {"gateway_refund_id": "ref_1", "gateway_payment_id": "pay_abc"}}
    body = sim_events.build_event("refund.updated", refund)
    [ev] = stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)
    assert (ev.target, ev.status, ev.amount) == ("refund", R.SUCCEEDED, 300)
    assert (ev.refund_reference, ev.refund_id, ev.payment_reference) == ("re_1", "ref_1", "pi_1")
    body = sim_events.build_event("refund.failed", {**refund, "status": "failed"})
    [ev] = stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)
    assert ev.status == R.FAILED
    charge = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1",
              "refunds": {"data": [{**refund, "id": "re_1"}, {**refund, "id": "re_2",
                                                               "status": "pending"}]}}
    body = sim_events.build_event("charge.refunded", charge)
    evs = stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)
    assert [(e.refund_reference, e.status) for e in evs] == [("re_1", R.SUCCEEDED),
                                                             ("re_2", R.PENDING)]
    assert len({e.event_id for e in evs}) == 2
    body = sim_events.build_event("payment_intent.created", _pi("requires_confirmation"))
    [ev] = stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)
    assert ev.target == "ignore" and ev.status is None


def test_stripe_signature_failures() -> None:
    body = sim_events.build_event("payment_intent.succeeded", _pi("succeeded"))
    good = _stripe(body)
    with pytest.raises(InvalidSignature):
        stripe_webhook.verify_and_parse(body.replace(b"1000", b"9000"), good, WHSEC)
    with pytest.raises(InvalidSignature):
        stripe_webhook.verify_and_parse(body, _stripe(body, "whsec_other"), WHSEC)
    with pytest.raises(InvalidSignature):
        stripe_webhook.verify_and_parse(body, {}, WHSEC)
    with pytest.raises(InvalidSignature):
        stripe_webhook.verify_and_parse(body, good, None)
    with pytest.raises(InvalidSignature):
        stripe_webhook.verify_and_parse(body, {"Stripe-Signature": "garbage"}, WHSEC)
    # lower-case header names work with a plain dict too
    assert stripe_webhook.verify_and_parse(body, {"stripe-signature": good["Stripe-Signature"]},
                                           WHSEC)


def test_stripe_timestamp_tolerance() -> None:
    body = sim_events.build_event("payment_intent.succeeded", _pi("succeeded"))
    now = time.time()
    old = _stripe(body, ts=int(now) - 301)
    with pytest.raises(StaleTimestamp):
        stripe_webhook.verify_and_parse(body, old, WHSEC, now=now)
    with pytest.raises(StaleTimestamp):
        stripe_webhook.verify_and_parse(body, _stripe(body, ts=int(now) + 400), WHSEC, now=now)
    # configurable tolerance; a bad signature is reported as such even when old
    assert stripe_webhook.verify_and_parse(body, old, WHSEC, now=now, tolerance_s=600)
    with pytest.raises(InvalidSignature):
        stripe_webhook.verify_and_parse(body, _stripe(body, "whsec_x", int(now) - 301), WHSEC,
                                        now=now)


def test_stripe_malformed_after_valid_signature() -> None:
    for body in (b"not json", b"[]", b'{"id": "evt_1"}'):
        with pytest.raises(MalformedWebhook):
            stripe_webhook.verify_and_parse(body, _stripe(body), WHSEC)


# ------------------------------------------------------------------ braintree


def _bt_txn(**kw: Any) -> dict[str, Any]:
    txn = {"id": "txn1", "status": "settled", "type": "sale", "amount": "12.34",
           "currency_iso_code": "EUR", "order_id": "pay_abc", "refunded_transaction_id": None}
    txn.update(kw)
    return {"transaction": txn}


def test_braintree_kinds() -> None:
    body = bt_sim.form_body("pub", "priv", "transaction_settled", _bt_txn())
    [ev] = bt_webhook.verify_and_parse(body, {}, "pub", "priv")
    assert (ev.target, ev.status, ev.amount) == ("payment", P.CAPTURED, 1234)
    assert ev.payment_reference == "txn1" and ev.merchant_reference == "pay_abc"
    assert ev.event_id.startswith("transaction_settled:txn1:")
    body = bt_sim.form_body("pub", "priv", "transaction_settled",
                            _bt_txn(id="cr1", type="credit", refunded_transaction_id="txn1",
                                    amount="500", currency_iso_code="JPY"))
    [ev] = bt_webhook.verify_and_parse(body, {}, "pub", "priv")
    assert (ev.target, ev.status, ev.amount) == ("refund", R.SUCCEEDED, 500)
    assert (ev.payment_reference, ev.refund_reference) == ("txn1", "cr1")
    body = bt_sim.form_body("pub", "priv", "transaction_settlement_declined", _bt_txn())
    [ev] = bt_webhook.verify_and_parse(body, {}, "pub", "priv")
    assert (ev.target, ev.status) == ("payment", P.FAILED)
    body = bt_sim.form_body("pub", "priv", "transaction_disbursed", _bt_txn())
    [ev] = bt_webhook.verify_and_parse(body, {}, "pub", "priv")
    assert ev.target == "ignore"


def test_braintree_signature_failures() -> None:
    body = bt_sim.form_body("pub", "priv", "transaction_settled", _bt_txn())
    fields = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    xml = base64.decodebytes(fields["bt_payload"].encode()).replace(b"12.34", b"99.99")
    tampered = urlencode({**fields, "bt_payload": base64.encodebytes(xml).decode()}).encode()
    for bad, pub, priv in ((tampered, "pub", "priv"), (body, "pub", "other"),
                           (body, "other_pub", "priv"), (b"bt_payload=abc", "pub", "priv"),
                           (body, None, None), (b"\xff\xfe", "pub", "priv")):
        with pytest.raises(InvalidSignature):
            bt_webhook.verify_and_parse(bad, {}, pub, priv)


def test_braintree_challenge() -> None:
    answer = bt_webhook.challenge_response("0123456789abcdef0123", "pub", "priv")
    assert answer.startswith("pub|") and len(answer) == len("pub|") + 40
    with pytest.raises(MalformedWebhook):
        bt_webhook.challenge_response("not-hex", "pub", "priv")


# ------------------------------------------------------------------ adyen


def _adyen_item(code: str, success: bool, key: str = HEX, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"event_code": code, "success": success, "psp": "PSPMOD",
                            "merchant_account": "SandboxECOM", "reference": "pay_abc",
                            "value": 600, "currency": "EUR", "hex_key": key,
                            "original_reference": "PSPPAY"}
    args.update(kw)
    return sim_notify.build_item(**args)


@pytest.mark.parametrize(("code", "success", "target", "status"), [
    ("AUTHORISATION", True, "payment", P.AUTHORIZED),
    ("AUTHORISATION", False, "payment", P.DECLINED),
    ("CAPTURE", True, "payment", P.CAPTURED),
    ("CAPTURE", False, "payment", P.AUTHORIZED),
    ("CAPTURE_FAILED", True, "payment", P.AUTHORIZED),
    ("CANCELLATION", True, "payment", P.VOIDED),
    ("CANCELLATION", False, "payment", P.AUTHORIZED),
    ("REFUND", True, "refund", R.SUCCEEDED),
    ("REFUND", False, "refund", R.FAILED),
    ("REFUND_FAILED", True, "refund", R.FAILED),
    ("CHARGEBACK", True, "dispute", None),  # status in .dispute: test_adyen_disputes.py
    ("SOMETHING_NEW", True, "ignore", None),
])
def test_adyen_event_codes(code: str, success: bool, target: str, status: Any) -> None:
    body = sim_notify.build_body([_adyen_item(code, success)])
    [ev] = adyen_webhook.verify_and_parse(body, {}, HEX)
    assert (ev.target, ev.status) == (target, status)
    assert ev.event_id == f"PSPMOD:{code}:{'true' if success else 'false'}"
    assert ev.payment_reference == "PSPPAY" and ev.amount == 600
    if target == "refund":
        assert ev.refund_reference == "PSPMOD" and ev.refund_id == "pay_abc"


def test_adyen_every_item_verified() -> None:
    good = _adyen_item("CAPTURE", True)
    other = _adyen_item("AUTHORISATION", True, psp="PSPPAY", original_reference=None)
    assert len(adyen_webhook.verify_and_parse(sim_notify.build_body([good, other]), {}, HEX)) == 2
    tampered = {**other, "amount": {"currency": "EUR", "value": 1}}
    with pytest.raises(InvalidSignature):
        adyen_webhook.verify_and_parse(sim_notify.build_body([good, tampered]), {}, HEX)
    wrong = _adyen_item("CAPTURE", True, key="AA" * 32)
    with pytest.raises(InvalidSignature):
        adyen_webhook.verify_and_parse(sim_notify.build_body([wrong]), {}, HEX)
    unsigned = {k: v for k, v in good.items() if k != "additionalData"}
    with pytest.raises(InvalidSignature):
        adyen_webhook.verify_and_parse(sim_notify.build_body([unsigned]), {}, HEX)
    boolean = {**good, "success": True}  # a JSON boolean is not the signed "true"
    with pytest.raises(InvalidSignature):
        adyen_webhook.verify_and_parse(sim_notify.build_body([boolean]), {}, HEX)
    with pytest.raises(InvalidSignature):
        adyen_webhook.verify_and_parse(sim_notify.build_body([good]), {}, None)


def test_adyen_malformed() -> None:
    for body in (b"nope", b"{}", b'{"notificationItems": []}', b'{"notificationItems": [1]}'):
        with pytest.raises(MalformedWebhook):
            adyen_webhook.verify_and_parse(body, {}, HEX)


def test_adyen_body_with_a_duplicate_key_is_malformed_not_last_wins() -> None:
    """A duplicated key would let the signed value and the applied value differ."""
    body = sim_notify.build_body([_adyen_item("CAPTURE", True)])
    assert adyen_webhook.verify_and_parse(body, {}, HEX)
    duplicated = body.replace(b'"success":', b'"success": "false", "success":', 1)
    assert duplicated != body
    with pytest.raises(MalformedWebhook):
        adyen_webhook.verify_and_parse(duplicated, {}, HEX)


def test_stripe_body_with_a_duplicate_key_is_malformed() -> None:
    obj = _pi("succeeded", amount_received=700)
    body = sim_events.build_event("payment_intent.succeeded", obj)
    duplicated = body.replace(b'"type":', b'"type": "charge.refunded", "type":', 1)
    assert duplicated != body
    with pytest.raises(MalformedWebhook):
        stripe_webhook.verify_and_parse(duplicated, _stripe(duplicated), WHSEC)
