"""Braintree status tables -> canonical statuses (SPEC section 4).

Every ``braintree.Transaction.Status`` has an explicit row. A value not in a table
maps to ``unknown`` (never success) and is reported through
:data:`providers.status_table.on_unmapped` so the gateway can count it in a metric;
the mapping functions also return a ``mapped`` flag.

Sale transactions (:data:`TRANSACTION_STATUS`):

* ``authorizing`` -> processing: the processor has not answered yet.
* ``submitted_for_settlement`` / ``settling`` / ``settled`` / ``settlement_pending`` /
  ``settlement_confirmed`` -> captured: Braintree treats submission for settlement as
  the capture; the rest is the funds moving.
* ``settlement_declined`` / ``settlement_failed`` -> **failed** (documented choice).
  Settlement was refused after the capture was accepted, so no money moved. From
  pending / processing / unknown (e.g. a lookup after a lost response) ``failed`` is a
  legal edge and tells the truth. From ``captured`` the state machine has no edge to
  ``failed`` and will *ignore and audit* the event -- that is deliberate: the gateway
  never silently un-captures, and :data:`NEEDS_ATTENTION` lists these raw statuses
  so callers can alert on them. Mapping them to ``unknown`` instead would park the
  payment in reconciliation forever, since Braintree never changes them again.
* ``processor_declined`` / ``gateway_rejected`` / ``failed`` -> declined.
* Braintree's card API has no "requires action" status: 3-D Secure happens
  client-side before the nonce exists, and a failed/required 3DS shows up as
  ``gateway_rejected`` with reason ``three_d_secure`` (-> declined).

Refunds are credit transactions with their own status (:data:`REFUND_STATUS`).
"""

from __future__ import annotations

from providers.status_table import lookup
from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus

P, R, D = PaymentStatus, RefundStatus, DisputeStatus

TRANSACTION_STATUS: dict[str, PaymentStatus] = {
    "authorization_expired": P.EXPIRED,
    "authorized": P.AUTHORIZED,
    "authorizing": P.PROCESSING,
    "submitted_for_settlement": P.CAPTURED,
    "settling": P.CAPTURED,
    "settled": P.CAPTURED,
    "settlement_pending": P.CAPTURED,
    "settlement_confirmed": P.CAPTURED,
    "settlement_declined": P.FAILED,
    "settlement_failed": P.FAILED,
    "voided": P.VOIDED,
    "processor_declined": P.DECLINED,
    "gateway_rejected": P.DECLINED,
    "failed": P.DECLINED,
}

#: Raw statuses that map to a canonical status but deserve an operator's attention.
NEEDS_ATTENTION: frozenset[str] = frozenset({"settlement_declined", "settlement_failed"})

#: Statuses of a transaction whose processor answer was a refusal (ErrorResult).
DECLINE_STATUSES: frozenset[str] = frozenset({"processor_declined", "gateway_rejected", "failed"})

#: A refund is a credit transaction; its status says how far the money has gone back.
REFUND_STATUS: dict[str, RefundStatus] = {
    "submitted_for_settlement": R.SUCCEEDED,
    "settling": R.SUCCEEDED,
    "settled": R.SUCCEEDED,
    "settlement_confirmed": R.SUCCEEDED,
    "authorized": R.PENDING,
    "authorizing": R.PENDING,
    "settlement_pending": R.PENDING,
    "processor_declined": R.FAILED,
    "gateway_rejected": R.FAILED,
    "failed": R.FAILED,
    "voided": R.FAILED,
    "settlement_declined": R.FAILED,
    "settlement_failed": R.FAILED,
    "authorization_expired": R.FAILED,
}

#: ``braintree.Dispute.Status`` (all eight) -> SPEC 16. ``disputed``: the merchant answered
#: with evidence, the processor is deciding. ``accepted`` (by the merchant),
#: ``auto_accepted`` (by Braintree's settings) and ``expired`` (no answer by the
#: reply-by date) end with the funds kept by the cardholder: ``lost``.
DISPUTE_STATUS: dict[str, DisputeStatus] = {
    "open": D.NEEDS_RESPONSE,
    "disputed": D.UNDER_REVIEW,
    "under_review": D.UNDER_REVIEW,
    "won": D.WON,
    "lost": D.LOST,
    "accepted": D.LOST,
    "auto_accepted": D.LOST,
    "expired": D.LOST,
}

#: ``braintree.WebhookNotification.Kind.Dispute*``: notifications whose subject is a
#: dispute; the status comes from the dispute's own ``status``.
DISPUTE_KINDS: frozenset[str] = frozenset({
    "dispute_opened", "dispute_under_review", "dispute_disputed", "dispute_won",
    "dispute_lost", "dispute_accepted", "dispute_auto_accepted", "dispute_expired",
})


def map_dispute_status(raw: str | None) -> tuple[DisputeStatus | None, bool]:
    """``(canonical status, mapped)``; unmapped -> ``(None, False)``, reported."""
    status: DisputeStatus | None
    status, mapped = lookup(DISPUTE_STATUS, raw, None, "braintree", "dispute")
    return status, mapped


def map_transaction_status(raw: str | None) -> tuple[PaymentStatus, bool]:
    """``(canonical status, mapped)``; unmapped -> ``(unknown, False)``."""
    return lookup(TRANSACTION_STATUS, raw, P.UNKNOWN, "braintree", "transaction")


def map_refund_status(raw: str | None) -> tuple[RefundStatus, bool]:
    """``(canonical status, mapped)``; unmapped -> ``(unknown, False)``."""
    return lookup(REFUND_STATUS, raw, R.UNKNOWN, "braintree", "refund")
