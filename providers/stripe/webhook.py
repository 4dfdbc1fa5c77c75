"""Stripe webhooks: ``Stripe-Signature`` verification and event mapping (SPEC section 8).

Verification (on the RAW body, never re-serialised): the SDK's
``stripe.WebhookSignature.verify_header`` checks ``v1 = HMAC-SHA256(secret,
"<t>.<body>")`` against every ``v1=`` entry with a constant-time comparison. The
timestamp is then checked here against ``now`` (both directions, ``tolerance_s``,
default 300 s like the SDK): a valid signature with an old timestamp is a replay
-> :class:`StaleTimestamp`; a bad signature is :class:`InvalidSignature` first.

Event mapping (``data.object`` is the PaymentIntent / Refund / Charge):

==========================================  =========  ===========================
type                                        target     status
==========================================  =========  ===========================
payment_intent.amount_capturable_updated    payment    authorized (amount_capturable)
payment_intent.succeeded                    payment    captured (amount_received)
payment_intent.canceled                     payment    voided
payment_intent.payment_failed               payment    declined
payment_intent.processing                   payment    processing
payment_intent.requires_action              payment    requires_action
refund.created / refund.updated /           refund     refund ``status`` via the
refund.failed                                          REFUND_STATUS table
charge.refunded                             refund     one event per refund in
                                                       ``refunds.data`` (if listed)
charge.dispute.created / .updated /         dispute    ``dispute`` = DisputeInfo,
.closed / .funds_withdrawn /                           its status via DISPUTE_STATUS
.funds_reinstated                                      (unmapped -> None, reported)
anything else                               ignore     --
==========================================  =========  ===========================

``payment_reference`` is the PaymentIntent id; ``merchant_reference`` the
``metadata.gateway_payment_id`` the adapter sets; refunds carry
``metadata.gateway_refund_id`` as ``refund_id``. A Dispute carries no metadata of the
payment: its ``payment_intent`` (or, when null, its ``charge``) is the
``payment_reference`` and ``merchant_reference`` stays None.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import stripe

from providers import strict_json
from providers.statuses import PaymentStatus
from providers.stripe.parse import iso_amount
from providers.stripe.status import DISPUTE_EVENTS, map_dispute_status, map_refund_status
from providers.webhook_event import (
    DisputeInfo,
    InvalidSignature,
    MalformedWebhook,
    StaleTimestamp,
    WebhookEvent,
)

DEFAULT_TOLERANCE_S = 300.0
SIGNATURE_HEADER = "Stripe-Signature"

P = PaymentStatus

PAYMENT_EVENTS: dict[str, PaymentStatus] = {
    "payment_intent.amount_capturable_updated": P.AUTHORIZED,
    "payment_intent.succeeded": P.CAPTURED,
    "payment_intent.canceled": P.VOIDED,
    "payment_intent.payment_failed": P.DECLINED,
    "payment_intent.processing": P.PROCESSING,
    "payment_intent.requires_action": P.REQUIRES_ACTION,
}
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed"})


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up case-insensitively
        lname = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lname), None)
    return value


def _timestamp(header: str) -> int:
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                break
    raise InvalidSignature("Stripe-Signature without a valid timestamp")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def verify(raw_body: bytes, header: str | None, secret: str | None, *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> None:
    """Raise InvalidSignature / StaleTimestamp unless ``header`` signs ``raw_body``."""
    if not secret:
        raise InvalidSignature("no Stripe webhook secret configured")
    if not header:
        raise InvalidSignature("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(raw_body, header, secret, tolerance=None)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature("Stripe-Signature does not match the body") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidSignature("Stripe-Signature cannot be checked") from exc
    ts = _timestamp(header)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise StaleTimestamp(f"Stripe-Signature timestamp outside the {tolerance_s:g}s tolerance")


def verify_and_parse(
    raw_body: bytes, headers: Mapping[str, str], secret: str | None, *,
    tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None,
) -> list[WebhookEvent]:
    verify(raw_body, _header(headers, SIGNATURE_HEADER), secret, tolerance_s=tolerance_s,
           now=now)
    try:
        event = strict_json.loads(raw_body)
    except strict_json.BodyError as exc:
        raise MalformedWebhook(f"Stripe webhook body is not strict JSON: {exc.code}") from exc
    if not isinstance(event, dict):
        raise MalformedWebhook("Stripe webhook body is not an object")
    return parse_event(event)


def parse_event(event: Mapping[str, Any]) -> list[WebhookEvent]:
    """Map an (already verified) Stripe event to WebhookEvents."""
    event_id, etype = _str(event.get("id")), _str(event.get("type"))
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if event_id is None or etype is None or not isinstance(obj, Mapping):
        raise MalformedWebhook("Stripe event needs id, type and data.object")
    created = _int(event.get("created"))
    occurred = float(created) if created is not None else None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)

    def base(**kw: Any) -> WebhookEvent:
        fields: dict[str, Any] = {
            "provider_type": "stripe", "event_id": event_id, "kind": etype,
            "occurred_at": occurred, "payment_reference": None,
            "merchant_reference": _str(metadata.get("gateway_payment_id")),
            "target": "ignore", "status": None,
            "raw_summary": f"{etype} {obj.get('id')} status={obj.get('status')}",
        }
        fields.update(kw)
        return WebhookEvent(**fields)

    if etype in PAYMENT_EVENTS:
        status = PAYMENT_EVENTS[etype]
        amount = None
        if status is P.CAPTURED:
            amount = iso_amount(obj, "amount_received")
        elif status is P.AUTHORIZED:
            amount = iso_amount(obj, "amount_capturable")
        return [base(payment_reference=_str(obj.get("id")), target="payment", status=status,
                     amount=amount)]
    if etype in REFUND_EVENTS:
        return [_refund_event(base, obj, etype)]
    if etype in DISPUTE_EVENTS:
        return [_dispute_event(base, obj, etype)]
    if etype == "charge.refunded":
        refunds = obj.get("refunds")
        items = refunds.get("data") if isinstance(refunds, Mapping) else None
        out = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, Mapping) and _str(item.get("id")):
                out.append(_refund_event(base, item, etype,
                                         event_id=f"{event_id}:{item['id']}",
                                         fallback_pi=_str(obj.get("payment_intent"))))
        if out:
            return out
    return [base(payment_reference=_str(obj.get("payment_intent")) or _str(obj.get("id")))]


def _charge_id(value: Any) -> str | None:
    if isinstance(value, Mapping):  # expanded
        return _str(value.get("id"))
    return _str(value)


def _dispute_event(base: Any, obj: Mapping[str, Any], etype: str) -> WebhookEvent:
    dispute_id = _str(obj.get("id"))
    if dispute_id is None:
        raise MalformedWebhook(f"Stripe {etype} without a dispute id")
    status, _ = map_dispute_status(_str(obj.get("status")))
    details = obj.get("evidence_details")
    due = _int(details.get("due_by")) if isinstance(details, Mapping) else None
    currency = _str(obj.get("currency"))
    info = DisputeInfo(
        dispute_reference=dispute_id, amount=iso_amount(obj, "amount"),
        currency=currency.upper() if currency else None, reason=_str(obj.get("reason")),
        status=status, evidence_due_by=float(due) if due is not None else None)
    event: WebhookEvent = base(
        payment_reference=_charge_id(obj.get("payment_intent")) or _charge_id(obj.get("charge")),
        target="dispute", status=None, amount=info.amount, dispute=info)
    return event


def _refund_event(base: Any, obj: Mapping[str, Any], etype: str, *,
                  event_id: str | None = None, fallback_pi: str | None = None) -> WebhookEvent:
    status, mapped = map_refund_status(_str(obj.get("status")))
    if etype == "refund.failed" and not mapped:
        status = map_refund_status("failed")[0]
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    kw: dict[str, Any] = {
        "payment_reference": _str(obj.get("payment_intent")) or fallback_pi,
        "target": "refund", "status": status, "amount": iso_amount(obj, "amount"),
        "refund_reference": _str(obj.get("id")),
        "refund_id": _str(meta.get("gateway_refund_id")),
        "raw_summary": f"{etype} {obj.get('id')} status={obj.get('status')}",
    }
    if _str(meta.get("gateway_payment_id")):
        kw["merchant_reference"] = meta["gateway_payment_id"]
    if event_id is not None:
        kw["event_id"] = event_id
    event: WebhookEvent = base(**kw)
    return event


__all__ = ["DEFAULT_TOLERANCE_S", "PAYMENT_EVENTS", "parse_event", "verify",
           "verify_and_parse"]
