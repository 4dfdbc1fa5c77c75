"""Stripe status tables -> canonical statuses (SPEC section 4).

Every documented PaymentIntent / Refund status has an explicit row. A value that is
not in the table maps to ``unknown`` (never success) and is reported through
:data:`providers.status_table.on_unmapped` so the gateway can count it in a metric.

PaymentIntent notes:

* ``requires_payment_method`` is what a PaymentIntent falls back to after a failed
  confirmation (decline, failed 3-D Secure): ``declined``. The adapter only creates
  PaymentIntents with ``confirm=true``, so it never sees the "not yet confirmed" meaning.
* ``requires_confirmation`` (created, not confirmed) -> ``pending``.
* ``canceled`` -> ``voided``. Stripe uses the same status for a cancelled
  authorization and an abandoned/declined intent; the state machine only accepts
  ``voided`` from authorized/processing/unknown, so a canceled intent after a decline
  is simply ignored there (the payment already is ``declined``).
"""

from __future__ import annotations

from providers.status_table import lookup
from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus

P, R, D = PaymentStatus, RefundStatus, DisputeStatus

PAYMENT_INTENT_STATUS: dict[str, PaymentStatus] = {
    "requires_payment_method": P.DECLINED,
    "requires_confirmation": P.PENDING,
    "requires_action": P.REQUIRES_ACTION,
    "processing": P.PROCESSING,
    "requires_capture": P.AUTHORIZED,
    "succeeded": P.CAPTURED,
    "canceled": P.VOIDED,
}

REFUND_STATUS: dict[str, RefundStatus] = {
    "pending": R.PENDING,
    "requires_action": R.PENDING,  # customer must supply details; not settled yet
    "succeeded": R.SUCCEEDED,
    "failed": R.FAILED,
    "canceled": R.FAILED,  # the refund will not happen
}

#: Dispute ``status`` (spec3 ``dispute.status`` enum, all seven values). ``warning_*`` are
#: inquiries (retrievals): no funds withdrawn yet, but a response is still due or under
#: review. ``warning_closed`` is an inquiry closed without becoming a chargeback: the
#: merchant keeps the money, which is what ``won`` means to the merchant.
DISPUTE_STATUS: dict[str, DisputeStatus] = {
    "warning_needs_response": D.NEEDS_RESPONSE,
    "needs_response": D.NEEDS_RESPONSE,
    "warning_under_review": D.UNDER_REVIEW,
    "under_review": D.UNDER_REVIEW,
    "warning_closed": D.WON,
    "won": D.WON,
    "lost": D.LOST,
}

#: Event types whose ``data.object`` is a Dispute; the status comes from the object.
DISPUTE_EVENTS: frozenset[str] = frozenset({
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
})


def map_dispute_status(raw: str | None) -> tuple[DisputeStatus | None, bool]:
    """``(canonical status, mapped)``; unmapped -> ``(None, False)``, reported."""
    status: DisputeStatus | None
    status, mapped = lookup(DISPUTE_STATUS, raw, None, "stripe", "dispute")
    return status, mapped


def map_payment_intent_status(raw: str | None) -> tuple[PaymentStatus, bool]:
    """``(canonical status, mapped)``; unmapped -> ``(unknown, False)``."""
    return lookup(PAYMENT_INTENT_STATUS, raw, P.UNKNOWN, "stripe", "payment_intent")


def map_refund_status(raw: str | None) -> tuple[RefundStatus, bool]:
    """``(canonical status, mapped)``; unmapped -> ``(unknown, False)``."""
    return lookup(REFUND_STATUS, raw, R.UNKNOWN, "stripe", "refund")
