"""Apply one verified provider webhook event to a payment (SPEC sections 4 and 8).

Everything goes through the state machine (forward edges only) inside the payment
writer's compare-and-swap (:meth:`~gateway.payment_writer.PaymentWriter.mutate`), and every
event that reaches a payment lands in its audit trail (``status_changed`` /
``refund_updated`` when applied, ``event_ignored`` otherwise), with source
``webhook:<provider name>``.

Result of :func:`apply_webhook_event` (the ``result`` label of
``gateway_webhooks_total``):

* ``applied`` -- the payment or refund changed;
* ``stale`` -- the state machine refused the event: an out-of-order / late event
  (e.g. an authorization after the capture), a disallowed edge, amounts that would
  break an invariant, a refund already settled the other way;
* ``ignored`` -- nothing to do: a kind that does not move payments, a status the
  payment already has (the webhook confirms a synchronous answer), a non-final
  refund status;
* ``unmatched`` -- no payment (or no refund on it) for the event's references; the
  caller keeps the event for reconciliation.

Finding the payment: ``(provider name, payment_reference)`` through the store's
index; otherwise the ``merchant_reference`` (gateway payment id) if that payment
belongs to the same provider and has no other provider reference yet (a webhook
may overtake the provider's synchronous answer).

Special cases:

* ``capture_pending`` + capture confirmed -> ``captured`` with the pending
  operation's amount (``doc["_operation"]``), else the event's amount; capture
  refused -> ``authorized``; ``void_pending`` + cancel confirmed / refused ->
  ``voided`` / ``authorized``. The pending operation is cleared in each case.
* A dispute event (``target == "dispute"``) creates or updates an entry of the
  payment's ``disputes`` and never moves its status (:mod:`gateway.disputes`).
* An authorization event marked ``captured_if_automatic`` (Adyen ``AUTHORISATION``: Adyen
  captures by itself; see providers/adyen/status.py) means ``captured`` on an
  automatic-capture payment.
"""

from __future__ import annotations

from typing import Any, Literal

from gateway import metrics
from gateway.disputes import DisputeChange, apply_dispute
from gateway.model import apply_status_change, audit
from gateway.orchestrator import apply_refund_result, finish_operation
from gateway.payment_writer import PaymentMissing, PaymentWriter
from gateway.state_machine import (
    MODIFICATION_PENDING,
    SETTLED_REFUND_STATUSES,
    InvariantError,
    PaymentStatus,
    StatusEvent,
)
from gateway.store import Store
from providers.base import Operation, Outcome, RefundResult
from providers.webhook_event import WebhookEvent

Result = Literal["applied", "stale", "ignored", "unmatched"]
S = PaymentStatus
Events = list[dict[str, Any]]


class _Unmatched(Exception):
    """Abort the CAS loop without writing: the event has nothing to act on here."""


async def find_payment(store: Store, provider_name: str, event: WebhookEvent) -> str | None:
    if event.payment_reference:
        pid = await store.find_by_provider_reference(provider_name, event.payment_reference)
        if pid is not None:
            return pid
    if event.merchant_reference:
        doc = await store.get_payment(event.merchant_reference)
        if doc is not None and doc.get("provider") == provider_name:
            ref = doc.get("provider_reference")
            if not ref or not event.payment_reference or ref == event.payment_reference:
                return str(doc["id"])
    return None


def _payment_fn(provider_name: str, event: WebhookEvent, out: list[Result]):
    source = f"webhook:{provider_name}"
    detail = f"{event.kind} ({event.event_id})"

    def fn(d: dict[str, Any]) -> Events:
        target = event.payment_status()
        assert target is not None
        current = S(d["status"])
        raw_op = d.get("_operation")
        op: dict[str, Any] = raw_op if isinstance(raw_op, dict) else {}
        op_name = op.get("op")
        if (event.captured_if_automatic and target == S.AUTHORIZED
                and d.get("capture") == "automatic"):
            target = S.CAPTURED
        authorized: int | None = None
        captured: int | None = None
        if target == S.AUTHORIZED and current not in MODIFICATION_PENDING:
            authorized = event.amount
        if target == S.AUTHORIZED and current == S.CAPTURE_PENDING:
            captured = 0  # capture refused: nothing was captured after all
        if target == S.CAPTURED:
            if current == S.CAPTURE_PENDING and op_name == Operation.CAPTURE:
                captured = int(op["amount"])
            else:
                captured = event.amount
            if captured is not None and captured > d["amount_authorized"] > 0:
                captured = None  # never trust an amount above the hold; the ledger derives
        if event.payment_reference and not d.get("provider_reference"):
            # The webhook overtook the provider's own answer (or that answer was lost):
            # it names the provider's object, which every follow-up needs.
            d["provider_reference"] = event.payment_reference
        change = apply_status_change(
            d, StatusEvent(target, authorized=authorized, captured=captured), source,
            detail=detail)
        events = [change.audit]
        result: Result = ("applied" if change.applied else
                          "ignored" if change.already else "stale")
        if change.applied:
            new = S(d["status"])
            settles_op = (
                (op_name == Operation.CAPTURE
                 and (new == S.CAPTURED or current == S.CAPTURE_PENDING))
                or (op_name == Operation.VOID and (new == S.VOIDED or current == S.VOID_PENDING))
            )
            if op_name == Operation.CONFIRM and new != S.REQUIRES_ACTION:
                settles_op = True  # 3-D Secure finished: the webhook completed the payment
            if settles_op:
                finish_operation(d, "refused"
                                 if new == S.AUTHORIZED and op_name != Operation.CONFIRM
                                 else "succeeded")
            if new == S.AUTHORIZED and current in MODIFICATION_PENDING:
                refused = Operation.CAPTURE if current == S.CAPTURE_PENDING else Operation.VOID
                events.append(audit(f"{refused}_refused", source, detail=detail))
            if new != S.REQUIRES_ACTION:
                d["next_action"] = None
            if new in (S.DECLINED, S.FAILED) and not d.get("failure"):
                d["failure"] = {"code": "provider_declined" if new == S.DECLINED
                                else "settlement_failed",
                                "message": f"reported by the provider's {event.kind} webhook"}
        out[:] = [result]
        return events

    return fn


def _refund_fn(provider_name: str, event: WebhookEvent, out: list[Result]):
    source = f"webhook:{provider_name}"

    def fn(d: dict[str, Any]) -> Events:
        refund = None
        for r in d.get("refunds") or []:
            if event.refund_reference and r.get("provider_reference") == event.refund_reference:
                refund = r
                break
        if refund is None and event.refund_id:
            refund = next((r for r in d.get("refunds") or [] if r["id"] == event.refund_id),
                          None)
        if refund is None:
            raise _Unmatched
        status = event.refund_status()
        if status not in SETTLED_REFUND_STATUSES:
            out[:] = ["ignored"]
            return [audit("event_ignored", source, refund_id=refund["id"],
                          reported_status=str(status) if status else None,
                          reason="not a final refund status",
                          detail=f"{event.kind} ({event.event_id})")]
        old = refund["status"]
        if old in SETTLED_REFUND_STATUSES:
            out[:] = ["ignored" if old == status else "stale"]
            return [audit("event_ignored", source, refund_id=refund["id"],
                          reported_status=status.value, reason=f"refund already {old}",
                          detail=f"{event.kind} ({event.event_id})")]
        result = RefundResult(Outcome.SUCCEEDED, status,
                              provider_reference=event.refund_reference, raw_status=event.kind)
        try:
            events = apply_refund_result(d, refund["id"], result, source)
        except InvariantError as exc:
            out[:] = ["stale"]
            return [audit("event_ignored", source, refund_id=refund["id"],
                          reported_status=status.value, reason=f"amounts rejected: {exc}",
                          detail=f"{event.kind} ({event.event_id})")]
        out[:] = ["applied"]
        return events

    return fn


def _dispute_fn(provider_name: str, event: WebhookEvent, out: list[DisputeChange]):
    source = f"webhook:{provider_name}"
    info = event.dispute
    assert info is not None

    def fn(d: dict[str, Any]) -> Events:
        change, events = apply_dispute(d, info, source=source,
                                       detail=f"{event.kind} ({event.event_id})",
                                       occurred_at=event.occurred_at)
        out[:] = [change]
        return events

    return fn


async def _apply_dispute_event(writer: PaymentWriter, provider_name: str, event: WebhookEvent
                               ) -> tuple[Result, str | None]:
    pid = await find_payment(writer.store, provider_name, event)
    if pid is None:
        return "unmatched", None
    out: list[DisputeChange] = [DisputeChange("ignored")]
    try:
        await writer.mutate(pid, _dispute_fn(provider_name, event, out))
    except PaymentMissing:
        return "unmatched", pid
    change = out[0]
    if change.result == "applied" and change.status is not None:
        metrics.DISPUTES.labels(provider_name, change.status.value).inc()
    return change.result, pid


async def apply_webhook_event(writer: PaymentWriter, provider_name: str, event: WebhookEvent
                              ) -> tuple[Result, str | None]:
    """Apply ``event``; returns ``(result, payment id or None)``.

    An applied change is notified to the merchant (source ``webhook:<provider>``) by the
    write itself (:meth:`gateway.payment_writer.PaymentWriter.mutate`)."""
    store = writer.store
    if event.target == "dispute" and event.dispute is not None:
        return await _apply_dispute_event(writer, provider_name, event)
    if event.target == "ignore" or event.status is None:
        return "ignored", None
    pid = await find_payment(store, provider_name, event)
    if pid is None:
        return "unmatched", None
    out: list[Result] = ["ignored"]
    fn = (_payment_fn if event.target == "payment" else _refund_fn)(provider_name, event, out)
    try:
        await writer.mutate(pid, fn)  # an applied change owes the merchant a notification
    except (PaymentMissing, _Unmatched):
        return "unmatched", pid
    return out[0], pid


def unmatched_record(provider_name: str, event: WebhookEvent) -> dict[str, Any]:
    """What is kept for reconciliation (no secrets, no card data)."""
    return {
        "provider_name": provider_name, "provider_type": event.provider_type,
        "event_id": event.event_id, "kind": event.kind, "occurred_at": event.occurred_at,
        "payment_reference": event.payment_reference,
        "merchant_reference": event.merchant_reference, "target": event.target,
        "status": None if event.status is None else str(event.status),
        "amount": event.amount, "refund_reference": event.refund_reference,
        "refund_id": event.refund_id, "summary": event.raw_summary,
        "dispute": None if event.dispute is None else {
            "dispute_reference": event.dispute.dispute_reference,
            "amount": event.dispute.amount, "currency": event.dispute.currency,
            "reason": event.dispute.reason,
            "status": None if event.dispute.status is None else str(event.dispute.status),
            "evidence_due_by": event.dispute.evidence_due_by},
    }


__all__ = ["Result", "apply_webhook_event", "find_payment", "unmatched_record"]
