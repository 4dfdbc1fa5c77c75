"""Follow-up operations on the authorizing provider: capture and void (SPEC 5).

Write-ahead (``_operation``: op, amount, provider key, started_at, lease) and resumable:
the merchant's retry with the same key resumes the operation; another request gets 409
only while the lease is live, after which it first finishes the stale operation (same
provider key); finished operations stay listed by key (``_ops_done``) so a retry returns
the operation's real outcome.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any, cast

from gateway.model import apply_status, audit, now, snapshot
from gateway.operation_errors import OperationError, ProviderUnavailable
from gateway.orchestrator_base import OrchestratorBase, _count_mismatch
from gateway.payment_writer import Events
from gateway.state_machine import (
    MODIFICATION_PENDING,
    InvariantError,
    PaymentStatus,
    StatusEvent,
    check_capture,
)
from gateway.store.base import Completion
from providers.base import (
    Ambiguous,
    Operation,
    Outcome,
    ProviderFault,
    ProviderMismatch,
    RejectedSafe,
)

if TYPE_CHECKING:
    from gateway.orchestrator import Orchestrator

#: Finished follow-up operations remembered per payment (by provider key) for retries.
OPS_DONE_LIMIT = 50
S = PaymentStatus


def finish_operation(doc: dict[str, Any], outcome: str) -> None:
    """Clear the in-flight follow-up and remember its outcome by provider key, so a retry of
    the request that started it returns what it did (not "invalid state")."""
    op = doc.get("_operation")
    doc["_operation"] = None
    if not isinstance(op, dict) or not op.get("key"):
        return
    done = [d for d in doc.get("_ops_done") or [] if d.get("key") != op["key"]]
    done.append({"key": op["key"], "op": op.get("op"), "outcome": outcome})
    doc["_ops_done"] = done[-OPS_DONE_LIMIT:]


def _op_key(payment_id: str, operation: Operation, merchant_key: str) -> str:
    """Provider idempotency key of a follow-up, stable across retries of one merchant request."""
    h = hashlib.sha256(merchant_key.encode()).hexdigest()[:16]
    return f"{payment_id}:{operation}:{h}"


class FollowUps(OrchestratorBase):
    """Capture and void of :class:`~gateway.orchestrator.Orchestrator`."""

    async def capture(self, payment_id: str, amount: int | None, merchant_key: str, *,
                      current: dict[str, Any] | None = None,
                      completion: Completion | None = None) -> dict[str, Any]:
        """``current``: the payment as the caller read it (the reservation CASes against
        it, a miss reads again; it is handed over); ``completion``: the request's
        idempotency answer, written with the provider's result when that is the answer."""
        return await self._modify(payment_id, Operation.CAPTURE, amount, merchant_key,
                                  current, completion)

    async def void(self, payment_id: str, merchant_key: str, *,
                   current: dict[str, Any] | None = None,
                   completion: Completion | None = None) -> dict[str, Any]:
        return await self._modify(payment_id, Operation.VOID, None, merchant_key,
                                  current, completion)

    async def _modify(
        self, payment_id: str, op: Operation, amount: int | None, merchant_key: str,
        current: dict[str, Any] | None = None, completion: Completion | None = None,
    ) -> dict[str, Any]:
        key = _op_key(payment_id, op, merchant_key)
        while True:
            stale: list[dict[str, Any]] = []
            created: list[bool] = []
            reserve = functools.partial(self._reserve_operation, op=op, amount=amount,
                                        key=key, stale=stale, created=created)
            doc = await self.writer.mutate(payment_id, reserve, current=current)
            current = None  # handed over
            if stale:
                # Another request's operation outlived its lease (its owner crashed): we
                # took it over; finish it with its own provider key, then try ours again.
                try:
                    await self._resume_operation(doc)
                except OperationError:
                    pass  # its outcome is recorded on the payment; ours is decided next
                continue
            done = _op_done(doc, key)
            if done is not None and doc.get("_operation") is None:
                if done["outcome"] == "refused":
                    raise OperationError("provider_refused",
                                         f"{doc.get('provider')} refused the {op}")
                return doc  # a retry of a finished operation: its real outcome
            return await self._resume_operation(doc, fresh=bool(created), own=True,
                                                completion=completion)

    def _reserve_operation(
        self, d: dict[str, Any], *, op: Operation, amount: int | None, key: str,
        stale: list[dict[str, Any]], created: list[bool],
    ) -> Events:
        stale.clear()
        created.clear()
        current = d.get("_operation")
        if isinstance(current, dict) and current.get("await_customer"):
            current = None  # only waiting for a 3-D Secure customer: no request running
        lease_s = self._live_s(d.get("provider") or "")
        if current is not None:
            if current["key"] == key:
                return []  # our own earlier try (crash/retry): resume it
            if float(current.get("lease_until") or 0) > now():
                raise OperationError("operation_in_progress",
                                     f"another {current['op']} is in progress for this payment")
            current["lease_until"] = now() + lease_s
            stale.append(current)
            return [audit(f"{current['op']}_resumed", "gateway",
                          detail="the request that started it stopped before it finished")]
        if _op_done(d, key) is not None:
            return []  # finished earlier: the caller answers its outcome
        self._provider_of(d)
        snap_status = PaymentStatus(d["status"])
        if op == Operation.CAPTURE:
            amt = d["amount_authorized"] if amount is None else amount
            try:
                check_capture(snapshot(d), amt)
            except InvariantError as exc:
                raise OperationError("invalid_state" if snap_status != S.AUTHORIZED
                                     else "amount_exceeds_authorized", str(exc)) from None
            self._check_wire_amount(d, amt)
        else:
            amt = 0
            if snap_status != S.AUTHORIZED:
                raise OperationError("invalid_state",
                                     f"cannot void a payment in status {snap_status}")
        started = now()
        d["_operation"] = {"op": op, "amount": amt, "key": key, "started_at": started,
                           "lease_until": started + lease_s}
        created.append(True)
        return [audit(f"{op}_requested", "merchant", amount=amt or None)]

    async def _resume_operation(self, doc: dict[str, Any], *, fresh: bool = False,
                                source: str = "provider_response", own: bool = False,
                                completion: Completion | None = None) -> dict[str, Any]:
        """Send the recorded operation (again) with its own key. ``fresh``: this request
        has just recorded it, so no earlier send can exist; only then may a safe failure
        drop it. Otherwise an earlier send (a crashed request, an ambiguous try) may have
        been processed: the operation stays recorded, its lease cut short, for the next
        retry or reconciliation. ``own``: ``doc`` is what this request's last write
        stored (the next write CASes against it without reading); ``completion``: the
        request's idempotency answer, written with a result that is answered as such."""
        op = doc.get("_operation")
        if op is None:
            return doc
        if op.get("op") == Operation.CONFIRM:  # 3-D Secure completion: its own module
            from gateway.confirm import resume

            return await resume(cast("Orchestrator", self), doc, fresh=fresh,
                                source=source)
        provider = self._provider_of(doc)
        ref = self._ref(doc)
        name = Operation(op["op"])
        if name == Operation.CAPTURE:
            factory = lambda: provider.capture(ref, op["amount"], op["key"])  # noqa: E731
        else:
            factory = lambda: provider.void(ref, op["key"])  # noqa: E731
        try:
            result = await self._guarded(provider, name, factory, self._deadline())
        except RejectedSafe as exc:
            fault: ProviderFault = exc

            def release(d: dict[str, Any]) -> Events:
                current = d.get("_operation")
                if fresh:
                    d["_operation"] = None  # nothing happened: the same key may try again
                elif isinstance(current, dict) and current.get("key") == op["key"]:
                    current["lease_until"] = now()  # resumable at once by anyone
                return [audit(f"{name}_failed_safe", source,
                              error_code=fault.error_code)]

            await self.writer.mutate(doc["id"], release, current=doc if own else None)
            raise ProviderUnavailable.of(provider.name, fault) from None
        except (Ambiguous, ProviderMismatch) as exc:
            _count_mismatch(provider, exc)
            pending = S.CAPTURE_PENDING if name == Operation.CAPTURE else S.VOID_PENDING
            park_code = exc.error_code

            def park(d: dict[str, Any]) -> Events:
                return [apply_status(d, StatusEvent(pending), "gateway",
                                     detail=f"outcome unknown: {park_code}")]

            return await self.writer.mutate(doc["id"], park, current=doc if own else None,
                                            completion=completion)

        def finish(d: dict[str, Any]) -> Events:
            finish_operation(d, "refused" if result.outcome == Outcome.DECLINED else "succeeded")
            if result.outcome == Outcome.DECLINED:
                events = [audit(f"{name}_refused", source,
                                reason=result.failure.message if result.failure else None)]
                if d["status"] in MODIFICATION_PENDING:
                    events.append(apply_status(d, StatusEvent(S.AUTHORIZED), source))
                return events
            captured = op["amount"] if name == Operation.CAPTURE else None
            return self._apply_result(d, result, source, amount_captured=captured)

        refused = result.outcome == Outcome.DECLINED  # answered as an error: not stored here
        doc = await self.writer.mutate(doc["id"], finish, current=doc if own else None,
                                       completion=None if refused else completion)
        if result.outcome == Outcome.DECLINED:
            failure = result.failure
            raise OperationError(
                "provider_refused",
                f"{provider.name} refused the {name}: {failure.message if failure else ''}".strip(),
            )
        self._count_payment(doc)
        return doc


def _op_done(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((d for d in doc.get("_ops_done") or [] if d.get("key") == key), None)
