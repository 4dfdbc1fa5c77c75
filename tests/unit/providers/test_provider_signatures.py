"""Webhook signatures, checked against the providers' official SDK helpers both ways.

For each provider: what the simulator signs verifies with the SDK's own verifier and
with the gateway's; what the SDK's own helper signs is accepted by the gateway's
verifier; anything tampered with (body, signature, key) is rejected by both.

* Stripe: ``stripe.WebhookSignature.verify_header`` / ``generate_signature_header`` /
  ``stripe.Webhook.construct_event`` vs ``providers/stripe/webhook.py``;
* Adyen: ``Adyen.util.is_valid_hmac_notification`` / ``generate_notification_sig`` vs
  ``providers/adyen/webhook.py`` (and ``hmac_signature.py``);
* Braintree: ``gateway.webhook_testing.sample_notification`` /
  ``gateway.webhook_notification.parse`` vs ``providers/braintree/webhook.py``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

import Adyen.util
import braintree
import pytest
import stripe

from providers.adyen import webhook as adyen_webhook
from providers.adyen.simulator import AdyenSimulator
from providers.braintree import webhook as braintree_webhook
from providers.braintree.simulator import BraintreeSimulator
from providers.simulator import SimulatorHost
from providers.stripe import webhook as stripe_webhook
from providers.stripe.simulator import StripeSimulator
from providers.webhook_event import InvalidSignature, StaleTimestamp, WebhookError
from tests.fixtures.provider_specs.schemas import Conformance
from tests.webhook_receiver import Receiver

T = TypeVar("T")
STRIPE_SECRET = "whsec_signatures"
ADYEN_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
BT_MERCHANT, BT_PUBLIC, BT_PRIVATE = "merch_sig", "pub_sig", "priv_sig"




@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs))


def rejected(fn: Callable[[], Any], *errors: type[BaseException]) -> bool:
    try:
        fn()
    except errors:
        return True
    return False


# ------------------------------------------------------------------ Stripe


async def test_stripe_signatures_agree_with_the_sdk(receiver: Receiver) -> None:
    c = Conformance("stripe signatures", "")
    sim = StripeSimulator(webhook_secret=STRIPE_SECRET, webhook_url=receiver.url)
    host = SimulatorHost([sim], control_port=None)
    await host.start()
    try:
        client = stripe.StripeClient("sk_test_sig", base_addresses={"api": host.base_url(
            "stripe")}, http_client=stripe.AIOHTTPClient(), max_network_retries=0)
        pi = await client.v1.payment_intents.create_async({
            "amount": 1000, "currency": "eur", "capture_method": "manual", "confirm": True,
            "payment_method": "tok_visa", "metadata": {"gateway_payment_id": "sig1"}})
        await client.v1.payment_intents.capture_async(pi.id)
        await receiver.wait(3)
    finally:
        await host.stop()

    for raw, headers in receiver.requests:
        header = headers.get("Stripe-Signature", "")
        kind = json.loads(raw)["type"]
        c.expect(f"simulator {kind}: SDK verify_header", not rejected(
            lambda r=raw, h=header: stripe.WebhookSignature.verify_header(
                r.decode(), h, STRIPE_SECRET, tolerance=300),
            stripe.SignatureVerificationError))
        c.expect(f"simulator {kind}: SDK construct_event", not rejected(
            lambda r=raw, h=header: stripe.Webhook.construct_event(r, h, STRIPE_SECRET),
            stripe.SignatureVerificationError))
        events = stripe_webhook.verify_and_parse(raw, headers, STRIPE_SECRET)
        c.expect(f"simulator {kind}: gateway verifier", events[0].event_id
                 == json.loads(raw)["id"], f"{events}")
        tampered = raw.replace(b'"amount":1000', b'"amount":1001')
        c.expect(f"simulator {kind} tampered: SDK rejects", tampered != raw and rejected(
            lambda t=tampered, h=header: stripe.WebhookSignature.verify_header(
                t.decode(), h, STRIPE_SECRET), stripe.SignatureVerificationError))
        c.expect(f"simulator {kind} tampered: gateway rejects", rejected(
            lambda t=tampered, h=headers: stripe_webhook.verify_and_parse(
                t, h, STRIPE_SECRET), InvalidSignature))

    # events signed by the SDK's own helper
    event = {"id": "evt_sdk_signed", "object": "event", "type": "payment_intent.succeeded",
             "api_version": "2026-10-28.endive", "created": int(time.time()),
             "livemode": False, "pending_webhooks": 1,
             "request": {"id": None, "idempotency_key": None},
             "data": {"object": {"id": "pi_sdk", "object": "payment_intent", "amount": 700,
                                 "amount_received": 700, "currency": "eur",
                                 "status": "succeeded",
                                 "metadata": {"gateway_payment_id": "sig2"}}}}
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, STRIPE_SECRET)
    events = stripe_webhook.verify_and_parse(payload.encode(), {"Stripe-Signature": header},
                                             STRIPE_SECRET)
    c.expect("SDK-signed event accepted by the gateway", [(e.event_id, e.merchant_reference)
                                                         for e in events]
             == [("evt_sdk_signed", "sig2")], f"{events}")
    c.expect("SDK-signed event, lower-case header name", not rejected(
        lambda: stripe_webhook.verify_and_parse(payload.encode(), {"stripe-signature": header},
                                                STRIPE_SECRET), WebhookError))
    c.expect("SDK-signed event with another secret rejected", rejected(
        lambda: stripe_webhook.verify_and_parse(payload.encode(), {"Stripe-Signature": header},
                                                "whsec_other"), InvalidSignature))
    c.expect("SDK-signed event, body tampered, rejected", rejected(
        lambda: stripe_webhook.verify_and_parse(payload.replace("700", "701").encode(),
                                                {"Stripe-Signature": header}, STRIPE_SECRET),
        InvalidSignature))
    old = int(time.time()) - 3600
    stale = stripe.WebhookSignature.generate_signature_header(payload, STRIPE_SECRET,
                                                              timestamp=old)
    c.expect("SDK-signed event an hour old rejected as stale", rejected(
        lambda: stripe_webhook.verify_and_parse(payload.encode(), {"Stripe-Signature": stale},
                                                STRIPE_SECRET), StaleTimestamp))
    c.expect("SDK refuses the same stale event", rejected(
        lambda: stripe.Webhook.construct_event(payload, stale, STRIPE_SECRET),
        stripe.SignatureVerificationError))
    c.assert_all()


# ------------------------------------------------------------------ Adyen


async def test_adyen_hmac_agrees_with_the_sdk(receiver: Receiver) -> None:
    c = Conformance("adyen signatures", "")
    sim = AdyenSimulator(webhook_secret=ADYEN_KEY, webhook_url=receiver.url)
    host = SimulatorHost([sim], control_port=None)
    await host.start()
    try:
        client = Adyen.Adyen(xapikey="AQE_sig", platform="test", http_timeout=5)
        base = host.base_url("adyen") + "/checkout/v71"
        client.checkout.payments_api.baseUrl = base
        client.checkout.modifications_api.baseUrl = base
        res = await off_loop(client.checkout.payments_api.payments, {
            "merchantAccount": "AcmeECOM", "reference": "sig-a",
            "amount": {"value": 1000, "currency": "EUR"},
            "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "tok_visa"},
            "additionalData": {"manualCapture": "true"}})
        psp = res.message["pspReference"]
        await off_loop(client.checkout.modifications_api.capture_authorised_payment, {
            "merchantAccount": "AcmeECOM", "amount": {"value": 1000, "currency": "EUR"},
            "reference": "sig-a"}, psp)
        await off_loop(client.checkout.modifications_api.refund_captured_payment, {
            "merchantAccount": "AcmeECOM", "amount": {"value": 400, "currency": "EUR"},
            "reference": "sig-r"}, psp)
        await receiver.wait(3)
    finally:
        await host.stop()

    for raw, headers in receiver.requests:
        body = json.loads(raw)
        item = body["notificationItems"][0]["NotificationRequestItem"]
        code = item["eventCode"]
        unsigned = {k: v for k, v in item.items() if k != "additionalData"}
        c.expect(f"simulator {code}: same signature as SDK generate_notification_sig",
                 Adyen.util.generate_notification_sig(unsigned, ADYEN_KEY).decode()
                 == item["additionalData"]["hmacSignature"])
        c.expect(f"simulator {code}: SDK is_valid_hmac_notification",
                 Adyen.util.is_valid_hmac_notification(body, ADYEN_KEY) is True)
        events = adyen_webhook.verify_and_parse(raw, headers, ADYEN_KEY)
        c.expect(f"simulator {code}: gateway verifier", [e.kind for e in events] == [code],
                 f"{events}")
        tampered = copy.deepcopy(body)
        tampered["notificationItems"][0]["NotificationRequestItem"]["amount"]["value"] += 1
        c.expect(f"simulator {code} tampered: SDK rejects",
                 Adyen.util.is_valid_hmac_notification(tampered, ADYEN_KEY) is False)
        c.expect(f"simulator {code} tampered: gateway rejects", rejected(
            lambda t=tampered: adyen_webhook.verify_and_parse(json.dumps(t).encode(), {},
                                                              ADYEN_KEY), InvalidSignature))

    # items signed by the SDK's own helper, two per batch (the gateway checks each)
    def sdk_item(psp: str, code: str, value: int, original: str | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "amount": {"currency": "EUR", "value": value}, "eventCode": code,
            "eventDate": "2026-01-01T01:00:00+01:00", "merchantAccountCode": "AcmeECOM",
            "merchantReference": "sig-b", "pspReference": psp, "reason": "",
            "success": "true"}
        if original:
            item["originalReference"] = original
        item["additionalData"] = {"hmacSignature": Adyen.util.generate_notification_sig(
            item, ADYEN_KEY).decode()}
        return item

    batch = {"live": "false", "notificationItems": [
        {"NotificationRequestItem": sdk_item("PSPB000000000001", "AUTHORISATION", 900)},
        {"NotificationRequestItem": sdk_item("PSPB000000000002", "CAPTURE", 900,
                                             "PSPB000000000001")}]}
    events = adyen_webhook.verify_and_parse(json.dumps(batch).encode(), {}, ADYEN_KEY)
    c.expect("SDK-signed batch accepted by the gateway", [(e.kind, e.payment_reference)
                                                         for e in events]
             == [("AUTHORISATION", "PSPB000000000001"), ("CAPTURE", "PSPB000000000001")],
             f"{events}")
    second_bad = copy.deepcopy(batch)
    second_bad["notificationItems"][1]["NotificationRequestItem"]["success"] = "false"
    c.expect("SDK-signed batch, second item tampered: gateway rejects the batch", rejected(
        lambda: adyen_webhook.verify_and_parse(json.dumps(second_bad).encode(), {}, ADYEN_KEY),
        InvalidSignature))
    c.expect("... while the SDK's body check only looks at item 0",
             Adyen.util.is_valid_hmac_notification(second_bad, ADYEN_KEY) is True)
    other_key = "00" * 32
    c.expect("SDK-signed batch under another key rejected", rejected(
        lambda: adyen_webhook.verify_and_parse(json.dumps(batch).encode(), {}, other_key),
        InvalidSignature))
    c.assert_all()


# ------------------------------------------------------------------ Braintree


def bt_gateway(public: str = BT_PUBLIC, private: str = BT_PRIVATE) -> braintree.BraintreeGateway:
    return braintree.BraintreeGateway(braintree.Configuration(
        braintree.Environment.Sandbox, BT_MERCHANT, public, private))


def form(sample: dict[str, Any]) -> bytes:
    payload = sample["bt_payload"]
    payload = payload.decode() if isinstance(payload, bytes) else payload
    return urlencode({"bt_signature": sample["bt_signature"], "bt_payload": payload}).encode()


async def test_braintree_notifications_agree_with_the_sdk(receiver: Receiver) -> None:
    c = Conformance("braintree signatures", "")
    kinds = [braintree.WebhookNotification.Kind.TransactionSettled,
             braintree.WebhookNotification.Kind.TransactionSettlementDeclined,
             braintree.WebhookNotification.Kind.Check]
    for kind in kinds:
        sample = bt_gateway().webhook_testing.sample_notification(kind, "txn_sig")
        events = braintree_webhook.verify_and_parse(form(sample), {}, BT_PUBLIC, BT_PRIVATE)
        c.expect(f"SDK sample {kind}: accepted by the gateway",
                 [e.kind for e in events] == [kind], f"{events}")
        payload = sample["bt_payload"]
        text = payload.decode() if isinstance(payload, bytes) else payload
        flipped = ("B" if text[10] != "B" else "C")
        tampered = {**sample, "bt_payload": text[:10] + flipped + text[11:]}
        c.expect(f"SDK sample {kind}, payload tampered: gateway rejects", rejected(
            lambda t=tampered: braintree_webhook.verify_and_parse(form(t), {}, BT_PUBLIC,
                                                                  BT_PRIVATE),
            InvalidSignature))
        c.expect(f"SDK sample {kind}, another private key: gateway rejects", rejected(
            lambda s=sample: braintree_webhook.verify_and_parse(form(s), {}, BT_PUBLIC,
                                                                "priv_other"),
            InvalidSignature))
        foreign = bt_gateway("pub_other", BT_PRIVATE).webhook_testing.sample_notification(
            kind, "txn_sig")
        c.expect(f"SDK sample {kind}, unknown public key: gateway rejects", rejected(
            lambda f=foreign: braintree_webhook.verify_and_parse(form(f), {}, BT_PUBLIC,
                                                                 BT_PRIVATE),
            InvalidSignature))

    # what the simulator sends: the SDK parses it, and so does the gateway
    sim = BraintreeSimulator(merchant_id=BT_MERCHANT, public_key=BT_PUBLIC,
                             private_key=BT_PRIVATE, webhook_url=receiver.url)
    host = SimulatorHost([sim], control_port=None)
    await host.start()
    try:
        env = braintree.Environment("simulator", "127.0.0.1", str(host.port("braintree")),
                                    "http://127.0.0.1", False, None)
        gw = braintree.BraintreeGateway(braintree.Configuration(
            environment=env, merchant_id=BT_MERCHANT, public_key=BT_PUBLIC,
            private_key=BT_PRIVATE, timeout=5))
        r = await off_loop(gw.transaction.sale, {
            "amount": "12.34", "payment_method_nonce": "tok_visa", "order_id": "sig-bt",
            "options": {"submit_for_settlement": True}})
        assert r.is_success, r
        await receiver.wait(1)
    finally:
        await host.stop()
    for raw, headers in receiver.requests:
        fields = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        note = bt_gateway().webhook_notification.parse(fields["bt_signature"],
                                                       fields["bt_payload"])
        c.expect("simulator notification: SDK parses it", note.kind == "transaction_settled"
                 and note.transaction.order_id == "sig-bt", f"{note.kind}")
        events = braintree_webhook.verify_and_parse(raw, headers, BT_PUBLIC, BT_PRIVATE)
        c.expect("simulator notification: gateway verifier",
                 [(e.kind, e.merchant_reference, e.amount) for e in events]
                 == [("transaction_settled", "sig-bt", 1234)], f"{events}")
        bad = {**fields, "bt_signature": fields["bt_signature"][:-1] + (
            "0" if fields["bt_signature"][-1] != "0" else "1")}
        c.expect("simulator notification, signature tampered: SDK rejects", rejected(
            lambda b=bad: bt_gateway().webhook_notification.parse(b["bt_signature"],
                                                                  b["bt_payload"]),
            braintree.exceptions.InvalidSignatureError))
        c.expect("simulator notification, signature tampered: gateway rejects", rejected(
            lambda b=bad: braintree_webhook.verify_and_parse(urlencode(b).encode(), {},
                                                             BT_PUBLIC, BT_PRIVATE),
            InvalidSignature))
    c.assert_all()
