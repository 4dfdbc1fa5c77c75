"""Adyen status tables -> canonical statuses (SPEC section 4).

Three explicit tables, each row documented:

* :data:`RESULT_CODES`: the ``resultCode`` of a ``/payments`` answer;
* :data:`MODIFICATION_STATUS`: the ``status`` of a capture/cancel/refund answer;
* :data:`EVENT_CODES`: the ``eventCode`` (+ ``success``) of a standard notification.

A value that is not in a table maps to ``unknown`` (never success) and is reported
through :data:`providers.status_table.on_unmapped` so the gateway can count it in a metric.

resultCode decisions
--------------------
* ``Authorised`` -> ``authorized`` when the payment was sent with manual capture
  (``additionalData.manualCapture = "true"``), ``captured`` otherwise. The adapter
  knows which one it sent (``AuthorizeRequest.capture_manual``); Adyen's answer does
  not say. With automatic capture Adyen captures without a further request.
* ``PartiallyAuthorised`` -> same as ``Authorised`` with the amount Adyen returns
  (``amount.value``) as the authorized amount. The adapter never opts in to partial
  authorisation (``allowPartialAuth``), so this is not expected; if it happens the
  ledger holds the smaller amount, which bounds every capture.
* ``Refused`` -> ``declined`` (issuer / risk refusal; see ``refusalReasonCode``).
* ``Cancelled`` -> ``declined``: on a ``/payments`` answer it means the payment was
  cancelled before it was authorised (e.g. risk rules, shopper cancelled). Nothing
  is held; ``pending -> voided`` is not an edge of the state machine, and the
  customer-facing meaning is "did not go through".
* ``Error`` -> ``failed``: Adyen's docs call it a final technical error while
  processing (reason in ``refusalReason``); no authorisation exists. It is a
  definite answer, so the adapter reports it (outcome ``declined``, status
  ``failed``, code ``processing_error``) rather than a fault; it is not one of the
  "provably not processed" transport cases that allow failover.
* ``Pending`` / ``Received`` -> ``processing``: the final result comes by webhook.
* ``RedirectShopper`` / ``IdentifyShopper`` / ``ChallengeShopper`` /
  ``PresentToShopper`` -> ``requires_action`` (the ``action`` object is next_action).
* ``AuthenticationFinished`` / ``AuthenticationNotRequired`` -> ``unknown`` (mapped,
  not counted as unmapped): these only answer authentication-only requests, which
  the adapter never sends. No authorisation exists and none will follow by itself,
  so it is neither success nor a decline; reconciliation resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from providers.status_table import lookup, report_unmapped
from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus

P, R, D = PaymentStatus, RefundStatus, DisputeStatus

#: Result codes that become ``captured`` when the payment used automatic capture.
AUTHORISED_RESULT_CODES = frozenset({"Authorised", "PartiallyAuthorised"})

RESULT_CODES: Mapping[str, PaymentStatus] = {
    "Authorised": P.AUTHORIZED,  # captured when the payment uses automatic capture
    "PartiallyAuthorised": P.AUTHORIZED,  # idem; amount from the answer
    "Refused": P.DECLINED,
    "Cancelled": P.DECLINED,
    "Error": P.FAILED,
    "Pending": P.PROCESSING,
    "Received": P.PROCESSING,
    "RedirectShopper": P.REQUIRES_ACTION,
    "IdentifyShopper": P.REQUIRES_ACTION,
    "ChallengeShopper": P.REQUIRES_ACTION,
    "PresentToShopper": P.REQUIRES_ACTION,
    "AuthenticationFinished": P.UNKNOWN,
    "AuthenticationNotRequired": P.UNKNOWN,
}


class Modification(StrEnum):
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"


#: ``status`` of a modification answer (201). ``received`` only means "accepted";
#: the outcome comes as a CAPTURE / CANCELLATION / REFUND notification.
MODIFICATION_STATUS: Mapping[Modification, Mapping[str, PaymentStatus | RefundStatus]] = {
    Modification.CAPTURE: {"received": P.CAPTURE_PENDING},
    Modification.CANCEL: {"received": P.VOID_PENDING},
    Modification.REFUND: {"received": R.PENDING},
}

def _report(kind: str, raw: object) -> None:
    report_unmapped("adyen", kind, raw)


def map_result_code(raw: str | None, *, capture_manual: bool = True) -> tuple[PaymentStatus, bool]:
    """``(canonical status, mapped)`` for a ``/payments`` resultCode."""
    status, mapped = lookup(RESULT_CODES, raw, P.UNKNOWN, "adyen", "result_code")
    if not mapped:
        return status, False
    if raw in AUTHORISED_RESULT_CODES and not capture_manual:
        return P.CAPTURED, True
    return status, True


def map_payment_modification(kind: Modification, raw: str | None) -> tuple[PaymentStatus, bool]:
    """Capture / cancel answer status -> ``capture_pending`` / ``void_pending``."""
    status = MODIFICATION_STATUS[kind].get(raw) if isinstance(raw, str) else None
    if not isinstance(status, PaymentStatus):
        _report("modification_status", f"{kind}:{raw}")
        return P.UNKNOWN, False
    return status, True


def map_refund_modification(raw: str | None) -> tuple[RefundStatus, bool]:
    """Refund answer status -> refund ``pending``."""
    status = MODIFICATION_STATUS[Modification.REFUND].get(raw) if isinstance(raw, str) else None
    if not isinstance(status, RefundStatus):
        _report("modification_status", f"refund:{raw}")
        return R.UNKNOWN, False
    return status, True


# --------------------------------------------------------------------------- webhooks


class Target(StrEnum):
    PAYMENT = "payment"  # moves the payment status (forward edges only)
    REFUND = "refund"  # settles the refund whose pspReference is the item's pspReference
    DISPUTE = "dispute"  # a chargeback stage on the payment (dispute_status set)
    IGNORE = "ignore"  # acknowledged and audited, no state change
    UNKNOWN = "unknown"  # unmapped: acknowledged, counted, kept for reconciliation


@dataclass(frozen=True)
class WebhookEffect:
    target: Target
    payment_status: PaymentStatus | None = None
    refund_status: RefundStatus | None = None
    note: str = ""
    #: Adyen captures an automatic-capture payment by itself once authorised.
    captured_if_automatic: bool = False
    #: for Target.DISPUTE: None when additionalData.disputeStatus is unmapped (reported)
    dispute_status: DisputeStatus | None = None


def _pay(status: PaymentStatus, note: str = "") -> WebhookEffect:
    return WebhookEffect(Target.PAYMENT, payment_status=status, note=note)


def _refund(status: RefundStatus, note: str = "") -> WebhookEffect:
    return WebhookEffect(Target.REFUND, refund_status=status, note=note)


def _ignore(note: str) -> WebhookEffect:
    return WebhookEffect(Target.IGNORE, note=note)


#: ``(eventCode, success)`` -> effect. ``success`` is the notification's STRING
#: "true"/"false" turned into a bool. Codes listed under IGNORED_EVENT_CODES are
#: ignored for both values.
EVENT_CODES: Mapping[tuple[str, bool], WebhookEffect] = {
    # authorised; the gateway turns it into captured for auto-capture payments
    ("AUTHORISATION", True): WebhookEffect(Target.PAYMENT, payment_status=P.AUTHORIZED,
                                           note="captured when the payment is auto-capture",
                                           captured_if_automatic=True),
    ("AUTHORISATION", False): _pay(P.DECLINED, "refused / cancelled / error"),
    ("CAPTURE", True): _pay(P.CAPTURED),
    ("CAPTURE", False): _pay(P.AUTHORIZED, "capture refused: capture_pending -> authorized"),
    # the scheme rejected a capture Adyen had accepted: only capture_pending can go
    # back; from captured it is ignored by the state machine (reconciliation flags it)
    ("CAPTURE_FAILED", True): _pay(P.AUTHORIZED, "capture rejected by the scheme"),
    ("CAPTURE_FAILED", False): _ignore("CAPTURE_FAILED with success=false has no meaning"),
    ("CANCELLATION", True): _pay(P.VOIDED),
    ("CANCELLATION", False): _pay(P.AUTHORIZED, "void refused: void_pending -> authorized"),
    ("TECHNICAL_CANCEL", True): _pay(P.VOIDED, "Adyen cancelled the authorisation"),
    ("TECHNICAL_CANCEL", False): _ignore("technical cancel failed: nothing changed"),
    ("REFUND", True): _refund(R.SUCCEEDED),
    ("REFUND", False): _refund(R.FAILED),
    ("REFUND_FAILED", True): _refund(R.FAILED, "the scheme rejected the refund"),
    ("REFUND_FAILED", False): _ignore("REFUND_FAILED with success=false has no meaning"),
    # funds of a refund came back to the merchant: the refund did not happen
    ("REFUNDED_REVERSED", True): _refund(R.FAILED, "refund reversed; a succeeded refund "
                                                  "stays succeeded (reconciliation flags it)"),
    ("REFUNDED_REVERSED", False): _ignore("REFUNDED_REVERSED with success=false"),
    # /reversals: cancel or refund, decided by additionalData (see webhook_effect)
    ("CANCEL_OR_REFUND", True): WebhookEffect(Target.UNKNOWN, note="needs modification.action"),
    ("CANCEL_OR_REFUND", False): _ignore("reversal refused: nothing changed"),
    ("PENDING", True): _pay(P.PROCESSING, "asynchronous payment method pending"),
    ("PENDING", False): _ignore("PENDING with success=false"),
    ("OFFER_CLOSED", True): _pay(P.EXPIRED, "shopper never completed the payment"),
    ("OFFER_CLOSED", False): _ignore("offer not closed"),
    ("EXPIRE", True): _pay(P.EXPIRED, "authorisation expired before capture"),
    ("EXPIRE", False): _ignore("expiry failed"),
}

#: Known event codes that never change a payment here (disputes, orders, reports,
#: adjustments the gateway does not request, recurring contracts, review results).
IGNORED_EVENT_CODES = frozenset({
    "AUTHORISATION_ADJUSTMENT", "NOTIFICATION_OF_FRAUD", "PREARBITRATION_WON",
    "PREARBITRATION_LOST", "REQUEST_FOR_INFORMATION", "INFORMATION_SUPPLIED",
    "DISPUTE_DEFENSE_PERIOD_ENDED", "ISSUER_RESPONSE_TIMEFRAME_EXPIRED", "ISSUER_COMMENTS",
    "ORDER_OPENED", "ORDER_CLOSED", "REPORT_AVAILABLE", "RECURRING_CONTRACT",
    "MANUAL_REVIEW_ACCEPT", "MANUAL_REVIEW_REJECT", "AUTORESCUE", "CANCEL_AUTORESCUE",
    "POSTPONED_REFUND", "VOID_PENDING_REFUND", "HANDLED_EXTERNALLY", "PAIDOUT_REVERSED",
    "PAYOUT_THIRDPARTY", "PAYOUT_DECLINE", "PAYOUT_EXPIRE", "FRAUD_ONLY",
    "DONATION", "ACH_NOTIFICATION_OF_CHANGE",
})


#: Dispute (chargeback) notifications (Webhooks-v1 ``DisputesNotificationRequestItem``):
#: the status a stage means when the item carries no ``additionalData.disputeStatus``.
#: ``NOTIFICATION_OF_CHARGEBACK``: the issuer announced a chargeback, defence possible;
#: ``CHARGEBACK``: the funds were debited, defence possible until defensePeriodEndsAt;
#: ``CHARGEBACK_REVERSED``: the defence succeeded, funds returned; ``SECOND_CHARGEBACK``:
#: the issuer rejected the defence (funds debited again): lost.
DISPUTE_EVENT_CODES: Mapping[str, DisputeStatus] = {
    "NOTIFICATION_OF_CHARGEBACK": D.NEEDS_RESPONSE,
    "CHARGEBACK": D.NEEDS_RESPONSE,
    "CHARGEBACK_REVERSED": D.WON,
    "SECOND_CHARGEBACK": D.LOST,
}

#: ``additionalData.disputeStatus`` (the published enum, all eight), which wins over the
#: event code's default when present. ``Undefended`` / ``Unresponded``: no defence or
#: answer yet; ``Responded`` / ``Pending``: defended, the scheme decides; ``Accepted``
#: (by the merchant) / ``Expired`` (defence period over) / ``Lost``: the funds stay with
#: the cardholder; ``Won``.
DISPUTE_STATUS: Mapping[str, DisputeStatus] = {
    "Undefended": D.NEEDS_RESPONSE,
    "Unresponded": D.NEEDS_RESPONSE,
    "Responded": D.UNDER_REVIEW,
    "Pending": D.UNDER_REVIEW,
    "Accepted": D.LOST,
    "Expired": D.LOST,
    "Lost": D.LOST,
    "Won": D.WON,
}


def map_dispute_status(code: str, additional_data: Any) -> tuple[DisputeStatus | None, bool]:
    """Status of a dispute item: ``disputeStatus`` via :data:`DISPUTE_STATUS` when present
    (unmapped -> ``(None, False)``, reported), else the code's default."""
    raw = additional_data.get("disputeStatus") if isinstance(additional_data, Mapping) else None
    if raw is None:
        return DISPUTE_EVENT_CODES[code], True
    status: DisputeStatus | None
    status, mapped = lookup(DISPUTE_STATUS, raw, None, "adyen", "dispute_status")
    return status, mapped


def parse_success(raw: Any) -> bool | None:
    """The notification ``success`` field: the STRING "true"/"false" (case-insensitive)."""
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return None


def webhook_effect(item: Mapping[str, Any]) -> WebhookEffect:
    """Effect of one ``NotificationRequestItem`` (unmapped -> ``Target.UNKNOWN``)."""
    code = item.get("eventCode")
    success = parse_success(item.get("success"))
    if not isinstance(code, str) or success is None:
        _report("event_code", f"{code}:{item.get('success')}")
        return WebhookEffect(Target.UNKNOWN, note="malformed eventCode/success")
    if code in IGNORED_EVENT_CODES:
        return _ignore(f"{code} does not change payments here")
    if code in DISPUTE_EVENT_CODES:
        if not success:  # like CAPTURE_FAILED false: Adyen sends disputes as success=true
            return _ignore(f"{code} with success=false has no meaning")
        status, _ = map_dispute_status(code, item.get("additionalData"))
        return WebhookEffect(Target.DISPUTE, dispute_status=status, note=f"dispute {code}")
    if code == "CANCEL_OR_REFUND" and success:
        extra = item.get("additionalData")
        action = extra.get("modification.action") if isinstance(extra, Mapping) else None
        if action == "cancel":
            return _pay(P.VOIDED, "reversal cancelled the authorisation")
        if action == "refund":
            return _refund(R.SUCCEEDED, "reversal refunded the payment")
    effect = EVENT_CODES.get((code, success))
    if effect is None or effect.target is Target.UNKNOWN:
        _report("event_code", f"{code}:{str(success).lower()}")
        return WebhookEffect(Target.UNKNOWN, note=f"unmapped {code}")
    return effect
