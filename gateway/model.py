"""The payment document: ids, construction, public view, and state changes with audit.

A payment is stored as one JSON document. Fields starting with ``_`` are internal
(fingerprint, payment-method token, in-flight operation, provider keys) and never
leave the gateway. The typed models (:mod:`gateway.payment_types`) declare every field
and which ones are public; :func:`public_view` is their projection of a stored document.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, NamedTuple

from gateway.payment_types import Dispute, Payment, iso
from gateway.state_machine import (
    OPEN_REFUND_STATUSES,
    Applied,
    Ledger,
    PaymentStatus,
    Snapshot,
    StatusEvent,
    apply_event,
)
from providers.base import Operation


def now() -> float:
    return time.time()


def derived_id(prefix: str, *parts: str) -> str:
    """Deterministic id from (merchant, idempotency key): a retry finds the same resource."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest[:15]).decode().lower()


def new_payment(
    payment_id: str, merchant_id: str, body: dict[str, Any], fingerprint: str
) -> dict[str, Any]:
    ts = now()
    pm = body["payment_method"]
    return {
        "id": payment_id,
        "object": "payment",
        "merchant_id": merchant_id,
        "status": PaymentStatus.PENDING.value,
        "amount": body["amount"],
        "currency": body["currency"],
        "capture": body.get("capture", "automatic"),
        "amount_authorized": 0,
        "amount_captured": 0,
        "amount_refunded": 0,
        "provider": None,
        "provider_reference": None,
        "reference": body.get("reference"),
        "routing": None,
        "attempts": [],
        "refunds": [],
        "disputes": [],
        "failure": None,
        "next_action": None,
        "metadata": body.get("metadata") or {},
        "customer": body.get("customer") or {},
        "payment_method": {k: v for k, v in pm.items() if k in ("type", "brand")},
        "created_at": ts,
        "updated_at": ts,
        "_fingerprint": fingerprint,
        "_token": pm.get("token"),
        "_provider_tokens": pm.get("provider_tokens") or {},
        "_refund_pending": 0,
        "_operation": None,
    }


def needs_reconcile(doc: dict[str, Any]) -> bool:
    """Whether reconciliation must look at a payment whatever its status: a refund still
    pending/unknown, a capture/void not finished (its request may have crashed), or a
    notification not yet moved to the outbox."""
    return bool(doc.get("_outbox")) or bool(doc.get("_operation")) or any(
        r["status"] in OPEN_REFUND_STATUSES for r in doc.get("refunds") or [])


def busy_until(doc: dict[str, Any] | Payment, request_deadline_s: float) -> float:
    """Until when (unix s) a request of the gateway may still be working on ``doc``: the
    last attempt's lease, a follow-up operation's lease, a refund in flight, or -- for a
    payment recorded before any attempt -- the creating request's deadline. Reconciliation
    leaves the payment alone until then (SPEC 9.1). Read through the types (a malformed
    document raises :class:`~gateway.payment_types.MalformedDocument`)."""
    p = doc if isinstance(doc, Payment) else Payment.from_doc(doc)
    leases = [float(p.created_at) + request_deadline_s]
    if p.attempts:
        leases.append(float(p.attempts[-1].live_until or 0))
    if p.operation is not None:
        leases.append(float(p.operation.lease_until or 0))
    leases += [float(r.live_until or 0) for r in p.refunds if r.in_flight]
    return max(leases)


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The payment object of a stored document: :meth:`Payment.public_of
    <gateway.payment_types.Payment.public_of>` (exactly the fields declared public,
    checked; a malformed document raises :class:`~gateway.payment_types.MalformedDocument`)."""
    return Payment.public_of(doc)


def dispute_view(dispute: dict[str, Any]) -> dict[str, Any]:
    """One dispute as the merchant sees it (:meth:`Dispute.public_of
    <gateway.payment_types.Dispute.public_of>`)."""
    return Dispute.public_of(dispute)


def snapshot(doc: dict[str, Any]) -> Snapshot:
    return Snapshot(
        PaymentStatus(doc["status"]),
        Ledger(
            amount=doc["amount"],
            authorized=doc["amount_authorized"],
            captured=doc["amount_captured"],
            refunded=doc["amount_refunded"],
            refund_pending=doc["_refund_pending"],
        ),
    )


def store_snapshot(doc: dict[str, Any], snap: Snapshot) -> None:
    doc["status"] = snap.status.value
    doc["amount_authorized"] = snap.ledger.authorized
    doc["amount_captured"] = snap.ledger.captured
    doc["amount_refunded"] = snap.ledger.refunded
    doc["_refund_pending"] = snap.ledger.refund_pending


def audit(kind: str, source: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "source": source, "at": iso(now())}
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


class StatusChange(NamedTuple):
    """What :func:`apply_status_change` did: the audit event it wrote, and how it ended."""

    audit: dict[str, Any]
    applied: bool
    #: not applied because the payment already had that status (a confirmation)
    already: bool


def apply_status(
    doc: dict[str, Any], event: StatusEvent, source: str, detail: str | None = None
) -> dict[str, Any]:
    """Apply a status report to ``doc`` in place; return the audit event (applied or ignored)."""
    return apply_status_change(doc, event, source, detail).audit


def apply_status_change(
    doc: dict[str, Any], event: StatusEvent, source: str, detail: str | None = None
) -> StatusChange:
    """:func:`apply_status`, also saying whether it applied (and if not, why, as a type)."""
    result = apply_event(snapshot(doc), event)
    if isinstance(result, Applied):
        return StatusChange(_applied(doc, event, result, source, detail), True, False)
    return StatusChange(audit(
        "event_ignored", source, status=doc["status"], reported_status=event.status.value,
        reason=result.reason, detail=detail,
    ), False, result.already)


def _applied(doc: dict[str, Any], event: StatusEvent, result: Applied, source: str,
             detail: str | None) -> dict[str, Any]:
    store_snapshot(doc, result.snapshot)
    doc["updated_at"] = now()
    if event.status == PaymentStatus.CAPTURE_PENDING:
        # what was asked to be captured, shown as amount_capture_pending until the
        # provider confirms (it never counts as captured before that)
        op = doc.get("_operation")
        doc["_capture_pending"] = event.captured or (
            int(op["amount"]) if isinstance(op, dict) and op.get("op") == Operation.CAPTURE
            else result.snapshot.ledger.authorized)
    else:
        doc.pop("_capture_pending", None)
    if result.correction:
        # "no money moved" was wrong: the provider holds money. The failure no longer
        # describes the payment; the audit event keeps what it was.
        previous_failure, doc["failure"] = doc.get("failure"), None
        return audit(
            "status_changed", source, from_status=result.previous.value,
            to_status=event.status.value, detail=detail, correction=True,
            previous_failure=previous_failure,
        )
    return audit(
        "status_changed", source, from_status=result.previous.value,
        to_status=event.status.value, detail=detail,
    )
