"""Adyen standard notifications: per-item HMAC verification and mapping (SPEC section 8).

Body: ``{"live": "false", "notificationItems": [{"NotificationRequestItem": {...}}]}``.
EVERY item must carry a valid ``additionalData.hmacSignature`` =
base64(HMAC-SHA256(hex-decoded key, ``pspReference:originalReference:
merchantAccountCode:merchantReference:value:currency:eventCode:success``)); the
comparison is ``hmac.compare_digest``. One bad item rejects the whole request
(:class:`InvalidSignature`, nothing is applied) -- Adyen then retries the batch.
(``Adyen.util.is_valid_hmac_notification`` on a full body only checks item 0, so
the check is done here per item with the same scheme.)

Mapping: :func:`providers.adyen.status.webhook_effect` (the ``EVENT_CODES`` table),
with these consequences for the gateway:

* ``AUTHORISATION`` true -> authorized (the gateway upgrades it to captured for an
  auto-capture payment), false -> declined;
* ``CAPTURE`` true -> captured, false -> authorized (capture refused);
* ``CAPTURE_FAILED`` true -> authorized: only ``capture_pending -> authorized`` is an
  edge; from ``captured`` the state machine ignores and audits it (the gateway
  never silently un-captures; reconciliation / an operator deals with it);
* ``CANCELLATION`` true -> voided, false -> authorized (void refused);
* ``REFUND`` true -> refund succeeded, false -> refund failed; ``REFUND_FAILED`` /
  ``REFUNDED_REVERSED`` -> refund failed;
* ``NOTIFICATION_OF_CHARGEBACK`` / ``CHARGEBACK`` / ``CHARGEBACK_REVERSED`` /
  ``SECOND_CHARGEBACK`` -> target ``dispute`` (:class:`DisputeInfo`: the item's
  ``pspReference`` is the dispute's, ``originalReference`` the payment's; amount;
  ``additionalData.chargebackReasonCode`` (else the item's ``reason``); status from
  ``disputeStatus`` or the code (``DISPUTE_EVENT_CODES``); ``evidence_due_by`` =
  ``defensePeriodEndsAt``);
* unmapped / informational codes -> ignore.

References: ``payment_reference`` = ``originalReference`` (modifications) or
``pspReference`` (AUTHORISATION); ``refund_reference`` = the refund modification's
``pspReference``. The adapter sends the gateway payment id as ``reference`` of the
payment, capture and cancel, and the gateway refund id for refunds, so
``merchantReference`` is ``merchant_reference`` or ``refund_id`` accordingly.
``event_id`` = ``pspReference:eventCode:success`` (``:disputeStatus`` appended on dispute
items that carry one).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from providers import strict_json
from providers.adyen.hmac_signature import hmac_key, signature, signing_string
from providers.adyen.parse import amount_currency, iso_amount
from providers.adyen.status import Target, webhook_effect
from providers.statuses import PaymentStatus
from providers.webhook_event import (
    DisputeInfo,
    InvalidSignature,
    MalformedWebhook,
    WebhookEvent,
)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _key(hex_key: str) -> bytes:
    try:
        return hmac_key(hex_key)
    except ValueError as exc:
        raise InvalidSignature(f"the configured {exc.args[0][4:]}") from exc


def item_signature_valid(item: Mapping[str, Any], key: bytes) -> bool:
    extra = item.get("additionalData")
    given = extra.get("hmacSignature") if isinstance(extra, Mapping) else None
    if not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(signature(item, key), given.encode("utf-8", "replace"))


def _items(raw_body: bytes) -> list[Mapping[str, Any]]:
    try:
        body = strict_json.loads(raw_body)
    except strict_json.BodyError as exc:
        raise MalformedWebhook(f"Adyen notification body is not strict JSON: {exc.code}") from exc
    items = body.get("notificationItems") if isinstance(body, Mapping) else None
    if not isinstance(items, list) or not items:
        raise MalformedWebhook("Adyen notification without notificationItems")
    out: list[Mapping[str, Any]] = []
    for wrapper in items:
        item = wrapper.get("NotificationRequestItem") if isinstance(wrapper, Mapping) else None
        if not isinstance(item, Mapping):
            raise MalformedWebhook("notificationItems entry without NotificationRequestItem")
        out.append(item)
    return out


def verify_and_parse(
    raw_body: bytes, headers: Mapping[str, str], hmac_key: str | None, *,
    now: float | None = None,
) -> list[WebhookEvent]:
    """Verify every item, then map each (``headers`` / ``now`` unused: Adyen items are
    not timestamp-signed; replays are caught by the event-id dedupe)."""
    del headers, now
    if not hmac_key:
        raise InvalidSignature("no Adyen HMAC key configured")
    key = _key(hmac_key)
    items = _items(raw_body)
    for item in items:
        if not item_signature_valid(item, key):
            raise InvalidSignature("an Adyen notification item has a bad hmacSignature")
    return [to_event(item) for item in items]


def _occurred(raw: Any) -> float | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return None


def to_event(item: Mapping[str, Any]) -> WebhookEvent:
    psp, code = _str(item.get("pspReference")), _str(item.get("eventCode"))
    if psp is None or code is None:
        raise MalformedWebhook("Adyen item without pspReference / eventCode")
    success = str(item.get("success"))
    original = _str(item.get("originalReference"))
    merchant_ref = _str(item.get("merchantReference"))
    amount = iso_amount(item)
    effect = webhook_effect(item)
    fields: dict[str, Any] = {
        "provider_type": "adyen", "event_id": f"{psp}:{code}:{success}", "kind": code,
        "occurred_at": _occurred(item.get("eventDate")),
        "payment_reference": original or psp, "merchant_reference": merchant_ref,
        "target": "ignore", "status": None, "amount": amount,
        "raw_summary": f"{code} success={success} psp={psp}"
                       + (f" original={original}" if original else "")
                       + (f" ({effect.note})" if effect.note else ""),
    }
    if effect.target is Target.PAYMENT and effect.payment_status is not None:
        fields.update(target="payment", status=PaymentStatus(effect.payment_status),
                      captured_if_automatic=effect.captured_if_automatic)
    elif effect.target is Target.DISPUTE:
        extra = item.get("additionalData")
        extra = extra if isinstance(extra, Mapping) else {}
        reason = _str(extra.get("chargebackReasonCode"))
        currency = amount_currency(item)
        info = DisputeInfo(
            dispute_reference=psp, amount=amount,
            currency=currency.upper() if currency else None,
            reason=reason.strip() if reason else _str(item.get("reason")),
            status=effect.dispute_status,
            evidence_due_by=_occurred(extra.get("defensePeriodEndsAt")))
        fields.update(target="dispute", dispute=info, payment_reference=original)
        stage = _str(extra.get("disputeStatus"))
        if stage:  # Adyen repeats a stage's code when only its disputeStatus moves on
            fields["event_id"] = f"{psp}:{code}:{success}:{stage}"
    elif effect.target is Target.REFUND and effect.refund_status is not None:
        fields.update(target="refund", status=effect.refund_status, refund_reference=psp,
                      refund_id=merchant_ref, merchant_reference=None)
        if code == "CANCEL_OR_REFUND":  # the reversal is its own refund on the payment
            fields.update(refund_id=None)
    return WebhookEvent(**fields)


__all__ = ["item_signature_valid", "signing_string", "to_event", "verify_and_parse"]
