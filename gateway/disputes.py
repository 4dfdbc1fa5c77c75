"""Disputes (chargebacks) on a payment (SPEC section 16), from verified provider webhooks.

A dispute notification (:class:`providers.webhook_event.DisputeInfo`) never moves the
payment's own status: it creates or updates one entry of ``doc["disputes"]``, found by the
provider's dispute reference. :func:`apply_dispute` is called inside the payment writer's
compare-and-swap, so the dispute, its audit event and the merchant notification
(``dispute.created|updated|won|lost``) are one atomic write.

Rules
  * The dispute must be about money this payment captured: a currency other than the
    payment's, or an amount above ``amount_captured`` (or not positive), is refused
    (``stale``, audited with the reason) and counts as nothing.
  * A new dispute whose provider status is not in that provider's table is recorded as
    ``needs_response``: the merchant must look at it before a deadline, and the unmapped
    value has been reported by :data:`providers.status_table.on_unmapped`. A known dispute
    keeps its status on such an event (``ignored``).
  * Order: an event older (provider's ``occurred_at``) than the last one applied to the
    dispute is ``stale``. ``won`` and ``lost`` are final, except ``won`` -> ``lost``
    (Adyen ``SECOND_CHARGEBACK`` after ``CHARGEBACK_REVERSED``). Moving back from
    ``under_review`` to ``needs_response`` is allowed (a Stripe inquiry escalated to a
    chargeback).
  * The same status again, with nothing else new, is ``ignored`` (a duplicate delivery
    under another event id, or a stage that confirms what is known).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.model import audit, derived_id, now
from providers.statuses import DisputeStatus
from providers.webhook_event import DisputeInfo

D = DisputeStatus
FINAL: frozenset[DisputeStatus] = frozenset({D.WON, D.LOST})
#: Merchant event type when an existing dispute's status became one of these.
_UPDATE_TYPES: dict[str, str] = {D.WON.value: "dispute.won", D.LOST.value: "dispute.lost"}

DisputeResult = Literal["applied", "stale", "ignored"]


@dataclass(frozen=True)
class DisputeChange:
    """What :func:`apply_dispute` did: the result label, and for an applied change the
    dispute's id and its status after the change."""

    result: DisputeResult
    dispute_id: str | None = None
    status: DisputeStatus | None = None


def dispute_id(payment_id: str, provider_reference: str) -> str:
    """Deterministic: the same provider dispute is always the same gateway dispute."""
    return derived_id("dsp_", payment_id, provider_reference)


def _refusal(doc: dict[str, Any], info: DisputeInfo) -> str | None:
    if info.currency is not None and info.currency != doc["currency"]:
        return f"dispute currency {info.currency} is not the payment's {doc['currency']}"
    if info.amount is not None:
        captured = int(doc.get("amount_captured") or 0)
        if info.amount <= 0:
            return f"dispute amount {info.amount} is not positive"
        if info.amount > captured:
            return f"dispute amount {info.amount} is above the captured amount {captured}"
    return None


def _ordered_out(existing: dict[str, Any], new: DisputeStatus, occurred_at: float | None
                 ) -> str | None:
    old = D(existing["status"])
    last = existing.get("_event_at")
    if occurred_at is not None and last is not None and occurred_at < float(last):
        return "older than the dispute's last applied event"
    if old in FINAL and new != old and not (old == D.WON and new == D.LOST):
        return f"dispute already {old.value}"
    return None


def apply_dispute(doc: dict[str, Any], info: DisputeInfo, *, source: str, detail: str,
                  occurred_at: float | None) -> tuple[DisputeChange, list[dict[str, Any]]]:
    """Apply one dispute notification to ``doc`` in place; returns what happened and the
    audit events to write with it."""
    disputes: list[dict[str, Any]] = doc.setdefault("disputes", [])
    ref = info.dispute_reference
    base = {"dispute_reference": ref, "detail": detail}
    refusal = _refusal(doc, info)
    if refusal is not None:
        return DisputeChange("stale"), [audit("event_ignored", source, reason=refusal,
                                              reported_status=_value(info.status), **base)]
    existing = next((d for d in disputes if d.get("provider_reference") == ref), None)
    ts = now()
    if existing is None:
        status = info.status or D.NEEDS_RESPONSE
        new_id = dispute_id(str(doc["id"]), ref)
        dispute: dict[str, Any] = {
            "id": new_id, "amount": info.amount,
            "currency": info.currency or doc["currency"], "reason": info.reason,
            "status": status.value, "evidence_due_by": info.evidence_due_by,
            "provider_reference": ref, "created_at": ts, "updated_at": ts,
            "_event_at": occurred_at,
        }
        disputes.append(dispute)
        event = audit("dispute_created", source, dispute_id=new_id,
                      to_status=status.value, amount=info.amount,
                      reported_status=_value(info.status), **base)
        return DisputeChange("applied", new_id, status), [event]
    if info.status is None:
        return DisputeChange("ignored"), [audit(
            "event_ignored", source, dispute_id=existing["id"],
            reason="dispute status not in the provider's table; kept", **base)]
    out_of_order = _ordered_out(existing, info.status, occurred_at)
    if out_of_order is not None:
        return DisputeChange("stale"), [audit(
            "event_ignored", source, dispute_id=existing["id"],
            reported_status=info.status.value, reason=out_of_order, **base)]
    changes = {k: v for k, v in (("status", info.status.value), ("amount", info.amount),
                                 ("reason", info.reason),
                                 ("evidence_due_by", info.evidence_due_by))
               if v is not None and existing.get(k) != v}
    if occurred_at is not None:
        existing["_event_at"] = occurred_at
    if not changes:
        return DisputeChange("ignored"), [audit(
            "event_ignored", source, dispute_id=existing["id"],
            reported_status=info.status.value, reason=f"already {info.status.value}", **base)]
    from_status = existing["status"]
    existing.update(changes, updated_at=ts)
    event = audit("dispute_updated", source, dispute_id=existing["id"],
                  from_status=from_status, to_status=existing["status"],
                  changed=sorted(changes), **base)
    return DisputeChange("applied", existing["id"], D(existing["status"])), [event]


def merchant_event(events: list[dict[str, Any]]) -> tuple[str, str] | None:
    """``(event type, dispute id)`` of the merchant notification a write's audit events
    call for when they hold a dispute change (``dispute.created|updated|won|lost``)."""
    for ev in events:
        if ev.get("type") == "dispute_created":
            return "dispute.created", str(ev["dispute_id"])
        if ev.get("type") == "dispute_updated":
            kind = ("dispute.updated" if "status" not in ev.get("changed", ())
                    else _UPDATE_TYPES.get(str(ev.get("to_status")), "dispute.updated"))
            return kind, str(ev["dispute_id"])
    return None


def disputed_amount(dispute: Mapping[str, Any], captured: int) -> int:
    """A dispute's amount; one the provider sent none for counts as all that was
    ``captured``."""
    amount = dispute.get("amount")
    return captured if amount is None else int(amount)


def lost_amount(doc: dict[str, Any]) -> int:
    """What lost disputes gave back to the cardholder."""
    captured = int(doc.get("amount_captured") or 0)
    return sum(disputed_amount(d, captured) for d in doc.get("disputes") or []
               if d.get("status") == D.LOST.value)


def refund_refusal(doc: dict[str, Any], amount: int, refundable: int
                   ) -> tuple[str, str] | None:
    """Why a refund of ``amount`` must not be sent (``(code, message)``), or None.
    ``refundable`` is the ledger's refundable amount. A refund while a dispute is open,
    or of money a lost dispute already gave back to the cardholder, would return the
    money twice (Stripe refuses the first itself, with ``charge_disputed``)."""
    for d in doc.get("disputes") or []:
        if D(d["status"]) not in FINAL:
            return ("payment_disputed",
                    f"the payment has an open dispute ({d['id']}, {d['status']}): a refund "
                    "now would return the money twice; answer or accept the dispute")
    lost = lost_amount(doc)
    if lost and (amount > refundable - lost or refundable <= lost):
        return ("amount_exceeds_refundable",
                f"{lost} of this payment went back to the cardholder with a lost dispute; "
                f"at most {max(0, refundable - lost)} can still be refunded")
    return None


def _value(status: DisputeStatus | None) -> str | None:
    return None if status is None else status.value


__all__ = ["FINAL", "DisputeChange", "DisputeResult", "apply_dispute", "dispute_id",
           "disputed_amount", "lost_amount", "merchant_event", "refund_refusal"]
