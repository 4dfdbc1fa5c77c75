"""Reconciliation of payments left uncertain (SPEC section 9).

One pass looks at payments that are ``pending`` (stale), ``unknown``, ``processing``,
``capture_pending`` / ``void_pending`` or that hold pending/unknown refunds, oldest first,
and asks their provider: an idempotent replay with the same provider key (Stripe, Adyen),
a lookup (Braintree ``search`` by order id, Stripe refund retrieval), or a re-send of the
recorded modification with its key. Each payment is worked on by one replica at a time
(a store lease per payment). Every correction lands in the audit trail (source
``reconciliation``) and in ``gateway_reconciliation_corrections_total``; the
``gateway_payments_unresolved`` gauge is recomputed every pass. Adyen confirms
modifications only by webhook: one missing past ``webhook_deadline_s`` is flagged.

It never races a live request (SPEC 9.1): a payment whose last attempt, follow-up
operation or refund may still be in flight on the gateway's side
(:func:`gateway.model.busy_until`) is skipped. A capture or void whose request stopped
(crash) before it finished is resumed with its own provider key, whatever the payment's
status. Replays that could create a payment are made only within ``replay_window_s`` of
its creation; past that only lookups, and a payment still unresolved is flagged for an
operator.

:meth:`Reconciler.sync` is the same work for one payment, now (the operator's sync, SPEC
9.2): the same lease, the same 9.1 check, the same :meth:`Reconciler._one`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.config import GatewayConfig, ReconcileSettings
from gateway.model import audit, busy_until, iso
from gateway.notifications import flush_outbox
from gateway.orchestrator import OperationError, Orchestrator, ProviderUnavailable
from gateway.payment_writer import PaymentMissing
from gateway.state_machine import (
    MODIFICATION_PENDING,
    OPEN_REFUND_STATUSES,
    UNRESOLVED,
    PaymentStatus,
    RefundStatus,
)
from gateway.store import PaymentQuery, Store
from providers.registry import declaration

log = logging.getLogger("gateway.reconcile")
SOURCE = "reconciliation"
# Payments in any status can be flagged needs_reconcile (refunds still open, or a
# notification not yet moved to the outbox); the store's index holds only those.
QUERIED = [s.value for s in PaymentStatus]
UNRESOLVED_LIMIT = 10_000
#: Retry-After for a payment another reconciliation (or operator) is working on right now
BUSY_RETRY_S = 5.0


def lease_name(payment_id: str) -> str:
    """The store lease whoever reconciles or resolves a payment holds meanwhile."""
    return f"reconcile:{payment_id}"


class Busy(Exception):
    """Someone owns the payment now: a request of the gateway may still be working on it
    (SPEC 9.1), or another reconciliation is. Nothing was looked up."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass
class Drift:
    payment_id: str
    provider: str | None
    from_status: str
    to_status: str
    refunds: list[tuple[str, str, str]] = field(default_factory=list)  # id, from, to


@dataclass
class Unresolved:
    payment_id: str
    provider: str | None
    status: str
    reason: str


@dataclass
class Report:
    examined: int = 0
    corrected: list[Drift] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    skipped_locked: int = 0
    skipped_live: int = 0  # a request of the gateway may still be working on it

    def render(self) -> str:
        lines = [f"reconciliation pass: {self.examined} examined, {len(self.corrected)} "
                 f"corrected, {len(self.unresolved)} still unresolved"
                 + (f", {self.skipped_locked} busy elsewhere" if self.skipped_locked else "")
                 + (f", {self.skipped_live} still in flight" if self.skipped_live else "")]
        for d in self.corrected:
            lines.append(f"  corrected {d.payment_id} ({d.provider}): {d.from_status} -> "
                         f"{d.to_status}")
            for rid, old, new in d.refunds:
                lines.append(f"    refund {rid}: {old} -> {new}")
        for u in self.unresolved:
            lines.append(f"  unresolved {u.payment_id} ({u.provider}): {u.status}: {u.reason}")
        return "\n".join(lines)


def _refund_states(doc: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["status"] for r in doc["refunds"]}


def _open_refunds(doc: dict[str, Any]) -> bool:
    return any(r["status"] in OPEN_REFUND_STATUSES for r in doc["refunds"])


class Reconciler:
    def __init__(self, config: GatewayConfig, store: Store, orchestrator: Orchestrator,
                 settings: ReconcileSettings | None = None) -> None:
        self.config = config
        self.store = store
        self.orchestrator = orchestrator
        self.settings = settings or config.reconciliation
        self.owner = f"reconciler-{uuid.uuid4().hex[:12]}"

    async def run_once(self, now: float | None = None) -> Report:
        now = time.time() if now is None else now
        report = Report()
        due = await self.store.query_payments(PaymentQuery(
            statuses=QUERIED, updated_before=now - self.settings.min_age_s,
            limit=self.settings.batch_size))
        for doc in due:
            lease = lease_name(doc["id"])
            if not await self.store.acquire_lease(lease, self.owner, self.settings.lease_s):
                report.skipped_locked += 1
                continue
            try:
                # Work on the payment as it is now: another replica may have resolved it
                # between our query and our lease.
                fresh = await self.store.get_payment(doc["id"])
                if fresh is None:
                    continue
                if now < busy_until(fresh, self.config.request_deadline_s):
                    report.skipped_live += 1
                    continue
                report.examined += 1
                await self._one(fresh, now, report)
            except Exception:  # one payment must not stop the pass
                log.exception("reconciliation of a payment failed",
                              extra={"payment_id": doc["id"]})
            finally:
                await self.store.release_lease(lease, self.owner)
        await self._export_unresolved(now)
        return report

    async def sync(self, payment_id: str, now: float | None = None
                   ) -> tuple[dict[str, Any], Report]:
        """Reconcile one payment now, whatever its age (the operator's sync, SPEC 9.2):
        what a pass does for it, under the same lease and the same 9.1 check, except that
        a lookup the provider does not answer raises :class:`ProviderUnavailable`
        (nothing changed) instead of waiting for the next pass. Returns the payment as
        stored afterwards and the one-payment report. Raises :class:`PaymentMissing`,
        :class:`Busy` (nothing looked up)."""
        now = time.time() if now is None else now
        if await self.store.get_payment(payment_id) is None:
            raise PaymentMissing(payment_id)
        lease = lease_name(payment_id)
        if not await self.store.acquire_lease(lease, self.owner, self.settings.lease_s):
            raise Busy("reconciliation is working on this payment right now", BUSY_RETRY_S)
        try:
            fresh = await self.store.get_payment(payment_id)
            if fresh is None:  # pragma: no cover - payments are never deleted
                raise PaymentMissing(payment_id)
            until = busy_until(fresh, self.config.request_deadline_s)
            if now < until:
                raise Busy(f"a request may still be working on this payment for "
                           f"{math.ceil(until - now)} s (SPEC 9.1); nothing was looked up",
                           until - now)
            report = Report(examined=1)
            await self._one(fresh, now, report, strict=True)
            return await self.store.get_payment(payment_id) or fresh, report
        finally:
            await self.store.release_lease(lease, self.owner)

    async def _one(self, doc: dict[str, Any], now: float, report: Report, *,
                   strict: bool = False) -> None:
        if doc.get("_outbox"):  # a crash between a write and its outbox move
            doc = await flush_outbox(self.store, doc)
        before_status, before_refunds = doc["status"], _refund_states(doc)
        after = doc
        reason = ""
        age = now - doc["created_at"]
        may_create = age <= self.settings.replay_window_s
        try:
            if PaymentStatus(doc["status"]) in UNRESOLVED or doc.get("_operation"):
                after = await self.orchestrator.resolve(doc, SOURCE, may_create=may_create,
                                                        strict=strict)
            if _open_refunds(after):
                after = await self.orchestrator.resolve_refunds(after, SOURCE)
        except OperationError as exc:
            if strict and isinstance(exc, ProviderUnavailable):
                raise
            reason = exc.message
        provider = after.get("provider")
        refunds = [(rid, before_refunds[rid], new) for rid, new in _refund_states(after).items()
                   if rid in before_refunds and before_refunds[rid] != new]
        if after["status"] != before_status or refunds:
            if after["status"] != before_status:
                metrics.RECONCILIATION_CORRECTIONS.labels(
                    provider or "none", before_status, after["status"]).inc()
            for _rid, old, new in refunds:
                metrics.RECONCILIATION_CORRECTIONS.labels(
                    provider or "none", f"refund_{old}", f"refund_{new}").inc()
            report.corrected.append(Drift(after["id"], provider, before_status,
                                          after["status"], refunds))
        still = (PaymentStatus(after["status"]) in UNRESOLVED or _open_refunds(after)
                 or bool(after.get("_operation")))
        if not still:
            return
        overdue = False
        if not reason:
            reason, overdue = self._why(after, age)
        operator = (not may_create and PaymentStatus(after["status"]) in UNRESOLVED
                    and not after.get("provider_reference"))
        if operator:
            reason = (f"replay window passed ({int(age)} s old): only lookups are made; an "
                      "operator must resolve it")
        if (overdue or operator) and not after.get("_flagged"):
            await self._flag(after["id"], reason)
        report.unresolved.append(Unresolved(after["id"], provider, after["status"], reason))

    def _why(self, doc: dict[str, Any], age: float) -> tuple[str, bool]:
        """Why the payment is still unresolved, and whether its webhook is overdue (an
        operator is alerted: the payment is flagged)."""
        provider = self.orchestrator.providers.get(doc.get("provider") or "")
        asynchronous = provider is not None and declaration(
            provider.type).capabilities.modifications_confirmed_by_webhook
        pending_mod = doc["status"] in MODIFICATION_PENDING or any(
            r["status"] == RefundStatus.PENDING for r in doc["refunds"])
        if asynchronous and pending_mod:
            if age > self.settings.webhook_deadline_s:
                return (f"webhook overdue: no {provider.type if provider else ''} notification "
                        f"after {int(age)} s"), True
            return "waiting for the provider's notification", False
        return "the provider gave no definite answer yet", False

    async def _flag(self, payment_id: str, reason: str) -> None:
        def fn(d: dict[str, Any]) -> list[dict[str, Any]]:
            d["_flagged"] = iso(time.time())
            return [audit("flagged", SOURCE, reason=reason)]

        await self.orchestrator.writer.mutate(payment_id, fn)
        log.warning("payment flagged by reconciliation",
                    extra={"payment_id": payment_id, "reason": reason})

    async def _export_unresolved(self, now: float) -> None:
        docs = await self.store.query_payments(PaymentQuery(
            statuses=QUERIED, updated_before=now + 1, limit=UNRESOLVED_LIMIT))
        counts: dict[str, int] = dict.fromkeys(self.config.providers, 0)
        for d in docs:
            if PaymentStatus(d["status"]) in UNRESOLVED or _open_refunds(d):
                name = d.get("provider") or "none"
                counts[name] = counts.get(name, 0) + 1
        for name, n in counts.items():
            metrics.PAYMENTS_UNRESOLVED.labels(name).set(n)

    async def loop(self, stop: asyncio.Event | None = None) -> None:
        """Run passes every ``interval_s`` until ``stop`` is set (or the task is
        cancelled). Stopping is checked after every pass as well: a cancellation that
        reached the task while a store call was running can be swallowed by the client
        library (seen with redis-py), and the loop must end anyway."""
        stop = stop if stop is not None else asyncio.Event()
        task = asyncio.current_task()
        while not stop.is_set():
            try:
                report = await self.run_once()
                if report.corrected or report.unresolved:
                    log.info("reconciliation pass", extra={
                        "examined": report.examined, "corrected": len(report.corrected),
                        "unresolved": len(report.unresolved)})
            except Exception:
                log.exception("reconciliation pass failed")
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            try:
                await asyncio.wait_for(stop.wait(), self.settings.interval_s)
            except TimeoutError:
                pass
