"""Refunds (SPEC 5): reserve the amount and send to the authorizing provider, resolve
refunds left pending/unknown, and settle a refund from a definite provider answer
(:func:`apply_refund_result`, also used by webhooks and reconciliation)."""

from __future__ import annotations

import functools
from typing import Any

from gateway.disputes import lost_amount, refund_refusal
from gateway.model import audit, iso, now, snapshot, store_snapshot
from gateway.operation_errors import OperationError, ProviderUnavailable
from gateway.orchestrator_base import OrchestratorBase, _count_mismatch
from gateway.payment_writer import Events
from gateway.provider_calls import call_provider
from gateway.state_machine import (
    OPEN_REFUND_STATUSES,
    SETTLED_REFUND_STATUSES,
    InvariantError,
    PaymentStatus,
    RefundStatus,
    reserve_refund,
    settle_refund,
)
from providers.base import (
    Ambiguous,
    Operation,
    Outcome,
    ProviderFault,
    ProviderMismatch,
    RefundResult,
    RejectedSafe,
)

S = PaymentStatus


class Refunds(OrchestratorBase):
    """The refunds of :class:`~gateway.orchestrator.Orchestrator`."""

    async def refund(
        self, payment_id: str, refund_id: str, amount: int | None, reason: str | None
    ) -> dict[str, Any]:
        key = f"{payment_id}:{Operation.REFUND}:{refund_id}"
        created: list[bool] = []  # whether the write that won reserved the refund

        def reserve(d: dict[str, Any]) -> Events:
            created.clear()  # a lost compare-and-swap runs this again
            if any(r["id"] == refund_id for r in d["refunds"]):
                return []  # retry of the same refund request: resume / replay
            self._provider_of(d)
            snap = snapshot(d)
            amt = (max(0, snap.ledger.refundable - lost_amount(d)) if amount is None
                   else amount)
            refusal = refund_refusal(d, amt, snap.ledger.refundable)
            if refusal is not None:
                raise OperationError(*refusal)
            try:
                store_snapshot(d, reserve_refund(snap, amt))
            except InvariantError as exc:
                code = ("amount_exceeds_refundable"
                        if snap.status in (S.CAPTURED, S.PARTIALLY_REFUNDED) else "invalid_state")
                raise OperationError(code, str(exc)) from None
            self._check_wire_amount(d, amt)
            d["refunds"].append({"id": refund_id, "amount": amt,
                                 "status": RefundStatus.PENDING.value, "provider_reference": None,
                                 "reason": reason,
                                 "created_at": model_iso(), "_key": key, "_in_flight": True,
                                 "_live_until": now() + self._live_s(d.get("provider") or "")})
            created.append(True)
            return [audit("refund_requested", "merchant", refund_id=refund_id, amount=amt)]

        doc = await self.writer.mutate(payment_id, reserve)
        refund = next(r for r in doc["refunds"] if r["id"] == refund_id)
        if not refund.get("_in_flight") and refund["status"] != RefundStatus.UNKNOWN:
            return doc
        return await self._send_refund(doc, refund, fresh=bool(created))

    async def resolve_refunds(self, doc: dict[str, Any], source: str) -> dict[str, Any]:
        """Ask the provider about refunds still pending/unknown: a lookup where the
        provider knows the refund (a re-send could keep replaying a stored 500 for its
        key), else an idempotent re-send with the same key (also where no lookup exists,
        as at Adyen)."""
        for refund in list(doc["refunds"]):
            status, known = refund["status"], bool(refund["provider_reference"])
            if status not in OPEN_REFUND_STATUSES:
                continue
            if known:
                looked_up = await self._look_up_refund(doc, refund, source)
                if looked_up is not None:
                    doc = looked_up
                    continue
                if status == RefundStatus.PENDING:
                    continue  # the provider confirms it later (webhook or next pass)
            try:
                doc = await self._send_refund(doc, refund, source=source)
            except OperationError:
                continue
        return doc

    async def _look_up_refund(self, doc: dict[str, Any], refund: dict[str, Any],
                              source: str) -> dict[str, Any] | None:
        """The refund's state from the provider, applied; None when it gave no answer."""
        provider = self._provider_of(doc)
        try:
            result = await call_provider(
                provider.name, Operation.LOOKUP,
                functools.partial(provider.retrieve_refund, refund["provider_reference"]),
                self.config.retry, self._deadline(),
            )
        except ProviderFault:
            return None
        return await self.writer.mutate(doc["id"], functools.partial(
            _settle_refund, refund_id=refund["id"], result=result, source=source))

    async def _send_refund(self, doc: dict[str, Any], refund: dict[str, Any], *,
                           fresh: bool = False, source: str = "provider_response"
                           ) -> dict[str, Any]:
        """Send (or re-send, same key) one refund. Only a ``fresh`` refund -- recorded by
        this very request, so never sent before -- is dropped on a safe failure."""
        provider = self._provider_of(doc)
        ref = self._ref(doc)
        rid = refund["id"]
        try:
            result: RefundResult = await self._guarded(
                provider, Operation.REFUND,
                lambda: provider.refund(ref, rid, refund["amount"], refund["_key"]),
                self._deadline(),
            )
        except RejectedSafe as exc:
            fault = exc

            def drop(d: dict[str, Any]) -> Events:
                r = next(x for x in d["refunds"] if x["id"] == rid)
                if fresh and r["status"] == RefundStatus.PENDING and r.get("_in_flight"):
                    d["refunds"].remove(r)
                    store_snapshot(d, settle_refund(snapshot(d), r["amount"], succeeded=False))
                return [audit("refund_failed_safe", source, refund_id=rid,
                              error_code=fault.error_code)]

            await self.writer.mutate(doc["id"], drop)
            raise ProviderUnavailable.of(provider.name, fault) from None
        except (Ambiguous, ProviderMismatch) as exc:
            _count_mismatch(provider, exc)
            unknown_code = exc.error_code

            def unknown(d: dict[str, Any]) -> Events:
                r = next(x for x in d["refunds"] if x["id"] == rid)
                if r["status"] in SETTLED_REFUND_STATUSES:
                    # settled meanwhile (a webhook): a lost answer changes nothing
                    return [audit("event_ignored", source, refund_id=rid,
                                  reason=f"refund already {r['status']}",
                                  detail=f"outcome unknown: {unknown_code}")]
                r["status"] = RefundStatus.UNKNOWN.value
                r["_in_flight"] = False
                return [audit("refund_unknown", source, refund_id=rid,
                              error_code=unknown_code)]

            return await self.writer.mutate(doc["id"], unknown)

        def settle(d: dict[str, Any]) -> Events:
            return apply_refund_result(d, rid, result, source)

        return await self.writer.mutate(doc["id"], settle)


def apply_refund_result(
    d: dict[str, Any], refund_id: str, result: RefundResult, source: str
) -> Events:
    """Settle one refund from a definite provider answer (used by API, webhooks, reconciliation)."""

    r = next(x for x in d["refunds"] if x["id"] == refund_id)
    r["_in_flight"] = False
    if result.provider_reference:
        r["provider_reference"] = result.provider_reference
    old = r["status"]
    if old in SETTLED_REFUND_STATUSES:
        return [audit("event_ignored", source, refund_id=refund_id, reason=f"refund already {old}")]
    new = RefundStatus.FAILED if result.outcome == Outcome.DECLINED else result.status
    events = []
    if new in SETTLED_REFUND_STATUSES:
        before = d["status"]
        store_snapshot(d, settle_refund(snapshot(d), r["amount"], new == RefundStatus.SUCCEEDED))
        if d["status"] != before:
            events.append(audit("status_changed", source, from_status=before,
                                to_status=d["status"]))
    r["status"] = new.value
    if result.failure is not None:
        r["failure"] = result.failure.to_dict()
    events.insert(0, audit("refund_updated", source, refund_id=refund_id, from_status=old,
                           to_status=new.value))
    return events


def _settle_refund(
    d: dict[str, Any], *, refund_id: str, result: RefundResult, source: str
) -> Events:
    return apply_refund_result(d, refund_id, result, source)


def model_iso() -> str:
    return iso(now())
