"""Braintree webhooks: ``bt_signature`` / ``bt_payload`` verification and mapping.

The body is ``application/x-www-form-urlencoded`` with ``bt_signature`` and
``bt_payload`` (see :mod:`providers.braintree.webhooks`, which the simulator signs
with). Verification and parsing are the SDK's ``gateway.webhook_notification.parse``
(HMAC-SHA1 keyed by SHA1(private key), constant-time ``secure_compare``; no network
call). A bad signature, an unknown public key or a payload with characters outside
base64 is :class:`InvalidSignature`.

Kinds:

* ``transaction_settled`` -> a sale: payment ``captured`` (amount = the
  transaction amount in minor units); a credit (refund, ``refunded_transaction_id``
  set): refund ``succeeded``.
* ``transaction_settlement_declined`` -> a sale: payment ``failed`` (see
  :mod:`providers.braintree.status`: from ``captured`` the state machine has no
  edge and ignores + audits it); a credit: refund ``failed``.
* ``refund_failed`` -> refund ``failed``.
* ``dispute_*`` (:data:`providers.braintree.status.DISPUTE_KINDS`) -> target
  ``dispute``: :class:`DisputeInfo` with the dispute's id, ``amount_disputed`` (else
  ``amount``) in minor units, reason, status via ``DISPUTE_STATUS`` (unmapped -> None,
  reported) and ``evidence_due_by`` = the end (24:00 UTC) of ``reply_by_date``;
  ``payment_reference`` = the disputed transaction's id, ``merchant_reference`` its
  ``order_id``.
* anything else (``check``, disbursements, subscriptions...) -> ignore.

``event_id`` = ``kind:subject id:timestamp`` (SPEC section 8). ``merchant_reference``
is the transaction's ``order_id`` (the adapter sends the gateway payment id there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import braintree

from providers.braintree.amounts import AmountError, to_minor_units
from providers.braintree.status import DISPUTE_KINDS, map_dispute_status
from providers.statuses import PaymentStatus, RefundStatus
from providers.webhook_event import (
    DisputeInfo,
    InvalidSignature,
    MalformedWebhook,
    StaleTimestamp,
    WebhookEvent,
)

P, R = PaymentStatus, RefundStatus
#: Oldest notification accepted: Braintree's retry schedule (hourly, 24 h) plus an hour.
MAX_AGE_S = 25 * 3600.0
#: Newest: the sender's clock may run this far ahead of ours.
MAX_FUTURE_S = 300.0

_gateways: dict[tuple[str, str], braintree.BraintreeGateway] = {}
_lock = threading.Lock()


def _gateway(public_key: str, private_key: str) -> braintree.BraintreeGateway:
    """A gateway object only used to parse notifications (never makes a request)."""
    key = (public_key, private_key)
    with _lock:
        gw = _gateways.get(key)
        if gw is None:
            config = braintree.Configuration(
                braintree.Environment.Sandbox, "webhook-parser", public_key, private_key)
            gw = _gateways[key] = braintree.BraintreeGateway(config)
    return gw


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _form(raw_body: bytes) -> tuple[str, str]:
    try:
        fields = parse_qs(raw_body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise InvalidSignature("Braintree webhook body is not form-encoded ASCII") from exc
    sig, payload = fields.get("bt_signature"), fields.get("bt_payload")
    if not sig or not payload or not sig[0] or not payload[0]:
        raise InvalidSignature("missing bt_signature / bt_payload")
    return sig[0], payload[0]


def verify_and_parse(
    raw_body: bytes, headers: Mapping[str, str], public_key: str | None,
    private_key: str | None, *, now: float | None = None,
) -> list[WebhookEvent]:
    """Verify and map one Braintree notification (``headers`` unused).

    Freshness (SPEC 8): the signed payload's own ``timestamp`` must lie within
    :data:`MAX_AGE_S` in the past (Braintree retries an undelivered notification hourly for
    up to 24 h, so a shorter window would drop its retries after an outage) and
    :data:`MAX_FUTURE_S` in the future (clock skew); otherwise :class:`StaleTimestamp`.
    Replays inside the window are caught by the event-id dedupe."""
    del headers
    if not public_key or not private_key:
        raise InvalidSignature("no Braintree public/private key configured")
    signature, payload = _form(raw_body)
    try:
        notification = _gateway(public_key, private_key).webhook_notification.parse(
            signature, payload)
    except braintree.exceptions.InvalidSignatureError as exc:
        raise InvalidSignature("bt_signature does not match bt_payload") from exc
    except Exception as exc:  # XML / attribute errors inside the SDK after a valid signature
        raise MalformedWebhook(f"Braintree notification cannot be parsed: "
                               f"{type(exc).__name__}") from exc
    event = to_event(notification)
    current = time.time() if now is None else now
    if event.occurred_at is None:
        raise MalformedWebhook("Braintree notification without a timestamp")
    if not -MAX_FUTURE_S <= current - event.occurred_at <= MAX_AGE_S:
        raise StaleTimestamp("Braintree notification timestamp outside the accepted window")
    return [event]


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        ts = value if value.tzinfo else value.replace(tzinfo=UTC)
        return ts.timestamp()
    return None


def to_event(n: Any) -> WebhookEvent:
    kind = _str(getattr(n, "kind", None))
    if kind is None:
        raise MalformedWebhook("Braintree notification without a kind")
    occurred = _timestamp(getattr(n, "timestamp", None))
    txn = getattr(n, "transaction", None)
    subject_id = _str(getattr(txn, "id", None)) if txn is not None else None
    if subject_id is None:
        subject = getattr(n, "subject", None)
        subject_id = "-"
        if isinstance(subject, Mapping):
            for value in subject.values():
                if isinstance(value, Mapping) and _str(value.get("id")):
                    subject_id = str(value["id"])
                    break
    stamp = getattr(n, "timestamp", None)
    event_id = f"{kind}:{subject_id}:{stamp.isoformat() if isinstance(stamp, datetime) else ''}"
    fields: dict[str, Any] = {
        "provider_type": "braintree", "event_id": event_id, "kind": kind,
        "occurred_at": occurred, "payment_reference": None, "merchant_reference": None,
        "target": "ignore", "status": None,
        "raw_summary": f"{kind} {subject_id}"
                       + (f" status={getattr(txn, 'status', None)}" if txn is not None else ""),
    }
    dispute = getattr(n, "dispute", None)
    if kind in DISPUTE_KINDS and dispute is not None:
        return _dispute_event(fields, dispute)
    if txn is None or kind not in ("transaction_settled", "transaction_settlement_declined",
                                   "refund_failed"):
        return WebhookEvent(**fields)
    amount = None
    currency = _str(getattr(txn, "currency_iso_code", None))
    raw_amount = getattr(txn, "amount", None)
    if currency and raw_amount is not None:
        try:
            amount = to_minor_units(raw_amount, currency)
        except AmountError:
            amount = None
    refunded = _str(getattr(txn, "refunded_transaction_id", None))
    is_credit = getattr(txn, "type", None) == "credit" or refunded is not None
    order_id = _str(getattr(txn, "order_id", None))
    fields["merchant_reference"] = order_id
    fields["amount"] = amount
    if is_credit or kind == "refund_failed":
        fields.update(target="refund", payment_reference=refunded,
                      refund_reference=subject_id,
                      status=R.SUCCEEDED if kind == "transaction_settled" else R.FAILED)
    else:
        fields.update(target="payment", payment_reference=subject_id,
                      status=P.CAPTURED if kind == "transaction_settled" else P.FAILED)
    return WebhookEvent(**fields)


def _minor(raw: Any, currency: str | None) -> int | None:
    if raw is None or not currency:
        return None
    try:
        return to_minor_units(raw, currency)
    except AmountError:
        return None


def _end_of_day(value: Any) -> float | None:
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() + \
            timedelta(days=1).total_seconds()
    return None


def _dispute_event(fields: dict[str, Any], dispute: Any) -> WebhookEvent:
    dispute_id = _str(getattr(dispute, "id", None))
    if dispute_id is None:
        raise MalformedWebhook("Braintree dispute notification without a dispute id")
    raw_status = _str(getattr(dispute, "status", None))
    status, _ = map_dispute_status(raw_status)
    currency = _str(getattr(dispute, "currency_iso_code", None))
    raw_amount = getattr(dispute, "amount_disputed", None)
    if raw_amount is None:
        raw_amount = getattr(dispute, "amount", None)
    txn = getattr(dispute, "transaction", None)
    info = DisputeInfo(
        dispute_reference=dispute_id, amount=_minor(raw_amount, currency),
        currency=currency.upper() if currency else None,
        reason=_str(getattr(dispute, "reason", None)), status=status,
        evidence_due_by=_end_of_day(getattr(dispute, "reply_by_date", None)))
    fields.update(
        target="dispute", status=None, amount=info.amount, dispute=info,
        payment_reference=_str(getattr(txn, "id", None)) if txn is not None else None,
        merchant_reference=_str(getattr(txn, "order_id", None)) if txn is not None else None,
        raw_summary=f"{fields['kind']} {dispute_id} status={raw_status}")
    return WebhookEvent(**fields)


def challenge_response(challenge: str, public_key: str, private_key: str) -> str:
    """Answer to Braintree's endpoint-verification ``bt_challenge`` (20-32 hex chars;
    anything else is :class:`MalformedWebhook`)."""
    try:
        return str(_gateway(public_key, private_key).webhook_notification.verify(challenge))
    except braintree.exceptions.InvalidChallengeError as exc:
        raise MalformedWebhook("bt_challenge is not 20-32 hex characters") from exc


__all__ = ["challenge_response", "to_event", "verify_and_parse"]
