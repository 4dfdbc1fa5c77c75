"""``POST /v1/payments/{id}/confirm``: finish a ``requires_action`` payment (SPEC 3.3).

The customer has been through the provider's 3-D Secure challenge (see
:mod:`gateway.three_ds`); the merchant asks the gateway to finish the payment. The
provider is asked through :meth:`providers.base.Provider.complete_action` (Stripe: retrieve
the PaymentIntent, confirming it if it waits in ``requires_confirmation``; Adyen:
``/payments/details`` with the ``redirectResult`` the customer's return carried), behind the
provider's breaker and the SPEC 5 retry rules (:meth:`Orchestrator._guarded`), and its answer
goes through the same state machine, audit trail and amount/currency checks as an
authorization (:meth:`Orchestrator._apply_result`, the adapter's checks), in one
:class:`~gateway.payment_writer.PaymentWriter` write.

Like capture and void, the confirm is write-ahead: ``_operation = {"op": "confirm", "key",
"returned", "lease_until"}`` is recorded before the provider is called, with the provider
idempotency key ``{payment_id}:confirm:{hash of what the return carried}``, the same for every
retry and for reconciliation. Outcomes:

* a definite answer: applied (``authorized`` / ``captured`` / ``declined`` with the
  provider's failure). Still ``requires_action`` (the customer has not finished): the
  payment stays so and the answer says it. The provider refused the details themselves
  (Adyen 422 for a redirectResult it did not issue): 409 ``provider_refused``, the recorded
  return is dropped, the payment unchanged;
* a safe failure (nothing was processed): 503 with Retry-After, nothing changed;
* an ambiguous answer: the payment stays ``requires_action`` with the confirm recorded and
  its lease cut short, so reconciliation (or the next confirm) asks again with the same key;
  never ``declined`` on a doubt. An answer about another amount or currency is never a
  success: the payment is ``failed`` only if the adapter provably released it.

A payment that went through ``requires_action`` and has been finished meanwhile (the
provider's webhook can arrive before the merchant's confirm) answers its current state;
one that never required action is a 409 ``invalid_state``.

The customer's window (:mod:`gateway.three_ds`): an answer "not finished yet" within it
re-arms the waiting operation until the window's end, so reconciliation asks again then.
Past it, the payment is ended only on the provider's guarantee that nothing can be charged
any more (:meth:`providers.base.Provider.abandon_action`, key ``{payment_id}:abandon``):
``voided`` there -> ``expired`` with ``failure.code = "action_expired"`` (audit
``action_expired``); finished meanwhile -> that state, applied. No answer (a fault): it
stays ``requires_action`` and the next pass asks again. A provider without such an answer
(Adyen): it stays ``requires_action``, flagged for an operator (audit ``flagged``), never
``failed`` or ``expired`` on a guess.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeGuard

from gateway import three_ds
from gateway.model import apply_status, audit, iso, now
from gateway.orchestrator import (
    OperationError,
    Orchestrator,
    ProviderUnavailable,
    _count_mismatch,
    finish_operation,
)
from gateway.payment_writer import Events
from gateway.state_machine import PaymentStatus, StatusEvent
from providers.base import (
    Ambiguous,
    Operation,
    Outcome,
    Provider,
    ProviderFault,
    ProviderMismatch,
    ProviderResult,
    RejectedSafe,
)

S = PaymentStatus
OPERATION = Operation.CONFIRM


def provider_key(payment_id: str, returned: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(returned, sort_keys=True).encode()).hexdigest()[:16]
    return f"{payment_id}:{OPERATION}:{digest}"


def _is_confirm(op: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(op, dict) and op.get("op") == OPERATION


async def confirm(orch: Orchestrator, payment_id: str) -> dict[str, Any]:
    """The merchant's confirm. Returns the payment as stored; raises
    :class:`OperationError` (409 / 503)."""
    state: dict[str, Any] = {}

    def reserve(d: dict[str, Any]) -> Events:
        state.clear()
        status = S(d["status"])
        op = d.get("_operation")
        if status != S.REQUIRES_ACTION:
            if d.get("_action"):
                state["answer"] = True  # finished meanwhile (webhook, earlier confirm)
                return []
            raise OperationError("invalid_state", f"cannot confirm a payment in status "
                                 f"{status.value}: only a requires_action payment can be "
                                 "confirmed")
        provider = orch.providers.get(d.get("provider") or "")
        if provider is None or not d.get("provider_reference"):
            raise OperationError("no_authorization",
                                 "the payment has no provider payment to confirm")
        lease_s = orch._live_s(provider.name)
        if op and not _is_confirm(op):
            raise OperationError("operation_in_progress",
                                 f"a {op.get('op')} is in progress for this payment")
        if _is_confirm(op) and not op.get("await_customer"):
            if float(op.get("lease_until") or 0) > now():
                raise OperationError("operation_in_progress",
                                     "another confirm is in progress for this payment")
            op["lease_until"] = now() + lease_s  # ours now: resumed with its own key
            state["fresh"] = False
            return [audit("confirm_resumed", "merchant")]
        returned = dict(d.get("_action_return") or {})
        started = now()
        d["_operation"] = {"op": OPERATION, "key": provider_key(d["id"], returned),
                           "returned": returned, "started_at": started,
                           "lease_until": started + lease_s}
        state["fresh"] = True
        return [audit("confirm_requested", "merchant")]

    doc = await orch.writer.mutate(payment_id, reserve)
    if state.get("answer"):
        return doc
    return await resume(orch, doc, fresh=bool(state.get("fresh")), source="provider_response")


async def resume(orch: Orchestrator, doc: dict[str, Any], *, fresh: bool = False,
                 source: str = "provider_response") -> dict[str, Any]:
    """Send the recorded confirm (again, with its key). Reconciliation and a stale
    operation's takeover come here through :meth:`Orchestrator._resume_operation`. A
    waiting operation (the customer's window, :mod:`gateway.three_ds`) is a lookup with
    what the customer's return carried so far."""
    op = doc.get("_operation")
    if not _is_confirm(op):
        return doc
    assert isinstance(op, dict)
    provider = orch.providers.get(doc.get("provider") or "")
    if provider is None or S(doc["status"]) != S.REQUIRES_ACTION:
        return await orch.writer.mutate(doc["id"], _drop_confirm)
    returned = dict(op.get("returned") or doc.get("_action_return") or {})
    key = op.get("key") or provider_key(doc["id"], returned)
    ref = orch._ref(doc)
    try:
        result: ProviderResult = await orch._guarded(
            provider, OPERATION, lambda: provider.complete_action(ref, returned, key),
            orch._deadline())
    except RejectedSafe as exc:
        await orch.writer.mutate(doc["id"], _released(op, exc.error_code, fresh, source))
        raise ProviderUnavailable.of(provider.name, exc) from None
    except (Ambiguous, ProviderMismatch) as exc:
        _count_mismatch(provider, exc)
        return await orch.writer.mutate(doc["id"], _parked(op, exc, provider, source))
    done = await orch.writer.mutate(doc["id"], _finished(orch, result, source, provider))
    if result.outcome == Outcome.DECLINED and result.status == S.REQUIRES_ACTION:
        message = result.failure.message if result.failure else "refused"
        raise OperationError("provider_refused",
                             f"{provider.name} refused the confirmation: {message}")
    if (result.status == S.REQUIRES_ACTION and S(done["status"]) == S.REQUIRES_ACTION
            and provider.abandons_action and three_ds.window_passed(done)):
        done = await _expire(orch, provider, done, source)
    orch._count_payment(done)
    return done


async def _expire(orch: Orchestrator, provider: Provider, doc: dict[str, Any],
                  source: str) -> dict[str, Any]:
    """The window has passed and the customer has not finished: ask the provider to end
    the payment (:meth:`Provider.abandon_action`) and apply its answer."""
    key = f"{doc['id']}:{Operation.ABANDON}"
    ref = orch._ref(doc)
    try:
        result = await orch._guarded(provider, Operation.ABANDON,
                                     lambda: provider.abandon_action(ref, key),
                                     orch._deadline())
    except ProviderFault as exc:
        _count_mismatch(provider, exc)
        code, detail = exc.error_code, exc.message

        def retry_later(d: dict[str, Any]) -> Events:
            if S(d["status"]) != S.REQUIRES_ACTION:
                return []
            if not d.get("_operation"):
                three_ds.await_customer(d)  # lapsed: the next pass asks again
            return [audit("expire_unknown", source, error_code=code, detail=detail)]

        return await orch.writer.mutate(doc["id"], retry_later)

    def apply(d: dict[str, Any]) -> Events:
        if S(d["status"]) != S.REQUIRES_ACTION:
            return []  # a webhook or the merchant's confirm finished it meanwhile
        if _is_confirm(d.get("_operation")):
            finish_operation(d, "succeeded")
        return _ended(orch, d, result, source)

    return await orch.writer.mutate(doc["id"], apply)


def _ended(orch: Orchestrator, d: dict[str, Any], result: ProviderResult,
           source: str) -> Events:
    """Apply a provider's answer to a ``requires_action`` payment. ``voided`` (the
    provider cancelled it: nothing was or can be charged) ends it ``expired``; any other
    answer goes through the state machine as it is."""
    if result.status != S.VOIDED:
        return orch._apply_result(d, result, source)
    if result.provider_reference:
        d["provider_reference"] = result.provider_reference
    passed = three_ds.window_passed(d)
    message = (f"the customer did not complete 3-D Secure within "
               f"{three_ds.window_s(d):g} s; {d.get('provider')} cancelled the payment, "
               "nothing was charged" if passed else
               f"{d.get('provider')} cancelled the payment before the customer completed "
               "3-D Secure; nothing was charged")
    ev = apply_status(d, StatusEvent(S.EXPIRED), source, detail=result.raw_status)
    events = [ev]
    if ev["type"] == "status_changed":
        d["failure"] = {"code": three_ds.EXPIRED_CODE if passed else three_ds.CANCELED_CODE,
                        "message": message}
        d["next_action"] = None
        events.append(audit("action_expired", source, detail=message))
    return events


def _same(d: dict[str, Any], op: dict[str, Any]) -> bool:
    current = d.get("_operation")
    return _is_confirm(current) and current.get("key") == op.get("key") and \
        current.get("started_at") == op.get("started_at")


def _drop_confirm(d: dict[str, Any]) -> Events:
    if _is_confirm(d.get("_operation")):
        finish_operation(d, "succeeded")
    return []


def _released(op: dict[str, Any], code: str, fresh: bool, source: str):
    def fn(d: dict[str, Any]) -> Events:
        if _same(d, op):
            current = d["_operation"]
            if fresh or current.get("await_customer"):
                d["_operation"] = None  # nothing was processed: nothing to resume
            else:
                current["lease_until"] = now()  # an earlier send may have been processed
        return [audit("confirm_failed_safe", source, error_code=code)]
    return fn


def _parked(op: dict[str, Any], exc: Ambiguous | ProviderMismatch, provider: Provider,
            source: str):
    def fn(d: dict[str, Any]) -> Events:
        events = [audit("confirm_unknown", source, error_code=exc.error_code,
                        detail=exc.message)]
        if isinstance(exc, ProviderMismatch) and exc.released:
            events.append(apply_status(d, StatusEvent(S.FAILED), "gateway", detail=exc.message))
            if d["status"] == S.FAILED:
                d["failure"] = {"code": exc.error_code, "message": "the provider answered "
                                "for another amount or currency than requested; it was "
                                "voided, no money moved"}
                d["next_action"] = None
                finish_operation(d, "succeeded")
            return events
        if _same(d, op):
            current = d["_operation"]
            current.pop("await_customer", None)
            current["key"] = current.get("key") or op.get("key")
            current["lease_until"] = now()  # reconciliation may ask again at once
        return events
    return fn


def _finished(orch: Orchestrator, result: ProviderResult, source: str, provider: Provider):
    def fn(d: dict[str, Any]) -> Events:
        if not _is_confirm(d.get("_operation")):
            if S(d["status"]) != S.REQUIRES_ACTION:
                return orch._apply_result(d, result, source)
            return _ended(orch, d, result, source) \
                if result.status != S.REQUIRES_ACTION else []
        if result.outcome == Outcome.DECLINED and result.status == S.REQUIRES_ACTION:
            finish_operation(d, "refused")
            d.pop("_action_return", None)  # refused: a fresh return may replace it
            _rearm(d)
            return [audit("confirm_refused", source,
                          reason=result.failure.message if result.failure else None)]
        if result.status == S.REQUIRES_ACTION:
            finish_operation(d, "pending")
            events = [audit("confirm_pending", source,
                            detail="the customer has not completed the challenge yet")]
            if not three_ds.window_passed(d):
                three_ds.await_customer(d)  # ask again at the window's end
            elif not provider.abandons_action and not d.get("_flagged"):
                reason = (f"3-D Secure not completed within {three_ds.window_s(d):g} s; "
                          f"{provider.type} gives no answer that proves nothing can be "
                          "charged: its notification or an operator ends it")
                d["_flagged"] = iso(now())
                events.append(audit("flagged", source, reason=reason))
            return events
        finish_operation(d, "succeeded")
        if S(d["status"]) == S.REQUIRES_ACTION:
            return _ended(orch, d, result, source)
        return orch._apply_result(d, result, source)
    return fn


def _rearm(d: dict[str, Any]) -> None:
    """Still requires_action with nothing recorded: wait for the customer again (until
    the window's end), so that the payment is not forgotten."""
    if S(d["status"]) == S.REQUIRES_ACTION and not d.get("_operation"):
        three_ds.await_customer(d)


__all__ = ["confirm", "provider_key", "resume"]
