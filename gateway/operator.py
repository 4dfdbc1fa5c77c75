"""Operator tools (SPEC 9.2), shared by the admin API and the CLI.

``sync``
  :meth:`gateway.reconcile.Reconciler.sync`: the reconciliation of one payment, now --
  the same lease, the same 9.1 check (a payment a live request may still own answers
  409, nothing looked up), the same lookup/replay and the same forward-only application
  of what the provider proves, audited with source ``reconciliation`` and counted in
  ``gateway_reconciliation_corrections_total`` like a pass's changes. A payment in a
  final status (or any status with nothing open) is answered unchanged (200): there is
  nothing to ask the provider. A provider that does not answer: 503, nothing changed.

``resolve``
  An operator's verdict, for a payment the provider cannot settle (past the replay
  window, no lookup): allowed only from an unresolved status
  (:data:`~gateway.state_machine.UNRESOLVED`, or ``requires_action`` once the customer's
  3-D Secure window, ``reconciliation.action_window_s``, has passed: a challenge nobody
  finished whose provider gives no proof that nothing can be charged -- Adyen -- is
  flagged for an operator and nothing else ends it), only to a resolved status
  (:data:`RESOLUTIONS`) along an edge of the state machine
  (:func:`~gateway.state_machine.can_transition`), only when no live request owns the
  payment (9.1) and no reconciliation is working on it (its store lease is held
  meanwhile). ``authorized`` and ``captured`` say the provider holds money: they need a
  provider reference (the payment's or the one given), since capture, void and refund act
  on it. One :meth:`~gateway.payment_writer.PaymentWriter.mutate` writes the status, the
  audit event (``status_changed``, source ``operator``, with the operator's ``reason``),
  the merchant notification and the reconcile flag.

Both count in ``gateway_operator_actions_total{action, result}``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gateway import metrics, three_ds
from gateway.config import GatewayConfig
from gateway.logs import contains_card_number
from gateway.model import apply_status, busy_until
from gateway.orchestrator import ProviderUnavailable, finish_operation
from gateway.payment_writer import Events, PaymentMissing, PaymentWriter
from gateway.reconcile import BUSY_RETRY_S, Busy, Reconciler, Report, lease_name
from gateway.state_machine import (
    MODIFICATION_PENDING,
    TRANSITIONS,
    UNRESOLVED,
    PaymentStatus,
    StatusEvent,
    can_transition,
)
from gateway.store import Store
from providers.base import Operation

log = logging.getLogger("gateway.operator")
S = PaymentStatus
SOURCE = "operator"
#: What an operator may resolve a payment to (requires_action needs the provider's
#: next_action; processing and unknown resolve nothing).
RESOLUTIONS: frozenset[PaymentStatus] = frozenset(
    {S.AUTHORIZED, S.CAPTURED, S.VOIDED, S.DECLINED, S.FAILED})
#: Resolutions that say the provider holds money: they need its provider reference.
MONEY_MOVED: frozenset[PaymentStatus] = frozenset({S.AUTHORIZED, S.CAPTURED})
RESOLVE_FIELDS = frozenset({"status", "reason", "provider_reference"})
REASON_MAX = 500
REFERENCE_MAX = 255
UNAVAILABLE_RETRY_S = 5


class OperatorRefused(Exception):
    """The operator's request is refused; nothing was changed. Maps to the API's error
    envelope (``status``, ``type``, ``code``, ``param``) and to CLI exit 1."""

    def __init__(self, status: int, type: str, code: str, message: str, *,
                 param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after


def _bad(param: str, message: str, code: str = "parameter_invalid") -> OperatorRefused:
    return OperatorRefused(400, "invalid_request", code, message, param=param)


def _missing(payment_id: str) -> OperatorRefused:
    return OperatorRefused(404, "not_found", "resource_missing", "no such payment")


def _busy(exc: Busy) -> OperatorRefused:
    return OperatorRefused(409, "invalid_state", "payment_busy", exc.message,
                           retry_after=exc.retry_after)


def count(action: str, result: str) -> None:
    metrics.OPERATOR_ACTIONS.labels(action, result).inc()


# ---------------------------------------------------------------- sync


@dataclass(frozen=True)
class Synced:
    payment: dict[str, Any]
    result: str  # corrected | unchanged | unresolved
    summary: str  # one line for people (CLI, logs)


async def sync(reconciler: Reconciler, payment_id: str) -> Synced:
    """Look the payment up at its provider now (:meth:`Reconciler.sync`)."""
    try:
        doc, report = await reconciler.sync(payment_id)
    except PaymentMissing:
        count("sync", "refused")
        raise _missing(payment_id) from None
    except Busy as exc:
        count("sync", "refused")
        raise _busy(exc) from None
    except ProviderUnavailable as exc:
        count("sync", "unavailable")
        raise OperatorRefused(503, "provider_unavailable", exc.code, exc.message,
                              retry_after=UNAVAILABLE_RETRY_S) from None
    result, summary = _sync_summary(doc, report)
    count("sync", result)
    log.info("operator sync", extra={"payment_id": payment_id, "result": result,
                                     "status": doc["status"]})
    return Synced(doc, result, summary)


def _sync_summary(doc: dict[str, Any], report: Report) -> tuple[str, str]:
    if report.corrected:
        d = report.corrected[0]
        line = f"corrected {doc['id']} ({d.provider}): {d.from_status} -> {d.to_status}"
        line += "".join(f"; refund {rid}: {old} -> {new}" for rid, old, new in d.refunds)
        return "corrected", line
    if report.unresolved:
        u = report.unresolved[0]
        return "unresolved", f"unresolved {doc['id']} ({u.provider}): {u.status}: {u.reason}"
    return "unchanged", f"unchanged {doc['id']}: {doc['status']}"


# ---------------------------------------------------------------- resolve


@dataclass(frozen=True)
class Resolution:
    status: PaymentStatus
    reason: str
    provider_reference: str | None = None


def parse_resolution(body: Any) -> Resolution:
    """``{"status", "reason", "provider_reference"?}``; anything else is a 400."""
    if not isinstance(body, dict):
        raise _bad("body", "the request body must be a JSON object", "invalid_json")
    for key in body:
        if key not in RESOLVE_FIELDS:
            raise _bad(str(key), f"unknown parameter {key}", "parameter_unknown")
    status = body.get("status")
    if status is None:
        raise _bad("status", "status is required", "parameter_missing")
    known = [s.value for s in PaymentStatus]
    if not isinstance(status, str) or status not in known:
        raise _bad("status", f"status must be a payment status ({', '.join(known)})")
    reason = body.get("reason")
    if reason is None:
        raise _bad("reason", "reason is required: say why (ticket, what the provider showed)",
                   "parameter_missing")
    if not isinstance(reason, str) or not reason.strip():
        raise _bad("reason", "reason must be a non-empty string")
    reason = reason.strip()
    if len(reason) > REASON_MAX:
        raise _bad("reason", f"reason must be at most {REASON_MAX} characters")
    ref = body.get("provider_reference")
    if ref is not None and (not isinstance(ref, str) or not 1 <= len(ref) <= REFERENCE_MAX
                            or not ref.isascii() or not ref.isprintable() or " " in ref):
        raise _bad("provider_reference", "provider_reference must be the provider's id of "
                   f"the charge: 1-{REFERENCE_MAX} printable ASCII characters, no spaces")
    for param, value in (("reason", reason), ("provider_reference", ref)):
        if value is not None and contains_card_number(value):
            raise OperatorRefused(400, "invalid_request", "raw_card_data_rejected",
                                  f"{param} must not contain a card number", param=param)
    return Resolution(PaymentStatus(status), reason, ref)


def resolvable(d: dict[str, Any]) -> bool:
    """Whether the payment's status lets an operator resolve it now (an unresolved
    status, or requires_action past its 3-D Secure window); leases are checked apart."""
    try:
        _check_status(d)
    except OperatorRefused:
        return False
    return True


def _check_status(d: dict[str, Any]) -> None:
    current = PaymentStatus(d["status"])
    if current == S.REQUIRES_ACTION:
        left = three_ds.window_end(d) - time.time()
        if left > 0:  # the customer may still finish the challenge: not abandoned yet
            raise OperatorRefused(409, "invalid_state", "payment_busy",
                                  f"the customer may still complete 3-D Secure for "
                                  f"{math.ceil(left)} s (reconciliation.action_window_s)",
                                  retry_after=left)
    elif current not in UNRESOLVED:
        names = ", ".join(sorted(s.value for s in UNRESOLVED))
        raise OperatorRefused(409, "invalid_state", "payment_not_unresolved",
                              f"the payment is {current.value}: an operator resolves only an "
                              f"unresolved payment ({names}, or requires_action after its "
                              "3-D Secure window)")


def _resolve_in_place(d: dict[str, Any], res: Resolution, request_deadline_s: float) -> Events:
    """The one write's function (raises :class:`OperatorRefused` to write nothing)."""
    current, target = PaymentStatus(d["status"]), res.status
    _check_status(d)
    left = busy_until(d, request_deadline_s) - time.time()
    if left > 0:
        raise OperatorRefused(409, "invalid_state", "payment_busy",
                              f"a request may still be working on this payment for "
                              f"{math.ceil(left)} s (SPEC 9.1)", retry_after=left)
    if target not in RESOLUTIONS or not can_transition(current, target):
        allowed = sorted(t.value for t in TRANSITIONS[current] if t in RESOLUTIONS)
        raise OperatorRefused(409, "invalid_state", "transition_not_allowed",
                              f"{current.value} -> {target.value} is not allowed: a "
                              f"{current.value} payment can be resolved to "
                              f"{', '.join(allowed)}", param="status")
    have, given = d.get("provider_reference"), res.provider_reference
    if have and given and have != given:
        raise OperatorRefused(409, "invalid_state", "provider_reference_mismatch",
                              f"the payment already has provider reference {have}; it cannot "
                              "be replaced", param="provider_reference")
    if target in MONEY_MOVED:
        if not d.get("provider"):
            raise OperatorRefused(409, "invalid_state", "no_provider",
                                  f"no provider was ever called for this payment: it cannot be "
                                  f"{target.value}", param="status")
        if not (have or given):
            raise _bad("provider_reference", f"resolving to {target.value} says the provider "
                       "holds money: give its provider_reference (capture, void and refund "
                       "act on it)", "parameter_missing")
    op = d.get("_operation")
    captured = None
    if target == S.CAPTURED and isinstance(op, dict) and op.get("op") == Operation.CAPTURE:
        captured = int(op["amount"]) or None  # the capture that was pending
    event = apply_status(d, StatusEvent(target, captured=captured), SOURCE, detail=res.reason)
    if event["type"] != "status_changed":
        raise OperatorRefused(409, "invalid_state", "resolution_rejected",
                              f"{current.value} -> {target.value} refused: {event['reason']}",
                              param="status")
    event["reason"] = res.reason
    if given and not have:
        d["provider_reference"] = given
        event["provider_reference"] = given
    if isinstance(op, dict):  # the pending capture/void ends with the verdict
        refused = target == S.AUTHORIZED and current in MODIFICATION_PENDING
        finish_operation(d, "refused" if refused else "succeeded")
    if target in (S.DECLINED, S.FAILED):
        d["failure"] = {"code": "resolved_by_operator",
                        "message": f"an operator resolved the payment as {target.value}"
                                   + ("; no money moved" if target == S.FAILED else "")}
    if d["status"] != S.REQUIRES_ACTION:
        d["next_action"] = None
    return [event]


async def resolve(store: Store, writer: PaymentWriter, config: GatewayConfig,
                  payment_id: str, res: Resolution) -> dict[str, Any]:
    """Apply the operator's verdict in one write; returns the payment as stored."""
    try:
        doc = await _resolve(store, writer, config, payment_id, res)
    except OperatorRefused:
        count("resolve", "refused")
        raise
    count("resolve", "applied")
    log.warning("payment resolved by an operator", extra={
        "payment_id": payment_id, "status": doc["status"], "reason": res.reason})
    return doc


async def _resolve(store: Store, writer: PaymentWriter, config: GatewayConfig,
                   payment_id: str, res: Resolution) -> dict[str, Any]:
    if await store.get_payment(payment_id) is None:
        raise _missing(payment_id)
    owner = f"operator-{uuid.uuid4().hex[:12]}"
    lease = lease_name(payment_id)
    # held while writing: no reconciliation is halfway through a lookup of this payment
    if not await store.acquire_lease(lease, owner, config.reconciliation.lease_s):
        raise _busy(Busy("reconciliation is working on this payment right now",
                         BUSY_RETRY_S))
    try:
        return await writer.mutate(payment_id, functools.partial(
            _resolve_in_place, res=res, request_deadline_s=config.request_deadline_s))
    except PaymentMissing:  # pragma: no cover - payments are never deleted
        raise _missing(payment_id) from None
    finally:
        await store.release_lease(lease, owner)


__all__ = ["MONEY_MOVED", "RESOLUTIONS", "OperatorRefused", "Resolution", "Synced",
           "parse_resolution", "resolvable", "resolve", "sync"]
