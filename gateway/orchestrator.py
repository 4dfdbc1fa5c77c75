"""Payment orchestration: authorize across candidates, follow-ups on the authorizing provider.

Rules (SPEC section 5):

* The payment document (and each attempt, with its provider idempotency key) is
  written BEFORE the provider is called, so a crash leaves enough to resume.
* ``rejected_safe`` -> next candidate (failover); ``declined`` -> terminal, no failover;
  ``ambiguous`` -> retried with the same key, then an idempotent replay / lookup; still
  unresolved -> ``unknown``. Failover after ambiguity, and ``failed`` after it, only on
  :class:`~providers.base.NotCreated`: final proof from the provider (SPEC 5.1) -- each
  adapter's ``lookup`` docstring says what counts as proof there.
* Every attempt and follow-up operation carries a lease (``_live_until`` /
  ``lease_until``: the request deadline plus the provider's timeout) while the provider
  may still be working on it; reconciliation leaves it alone until then (SPEC 9.1).
* Capture / void / refund go to the authorizing provider only. A safe failure changes
  nothing (:class:`ProviderUnavailable`, HTTP 503); an ambiguous one leaves the payment
  ``capture_pending`` / ``void_pending`` or the refund ``unknown`` until resolved.
  Capture and void are write-ahead (``_operation``: op, amount, provider key, started_at,
  lease) and resumable: the merchant's retry with the same key resumes the operation;
  another request gets 409 only while the lease is live, after which it first finishes
  the stale operation (same provider key); finished operations stay listed by key
  (``_ops_done``) so a retry returns the operation's real outcome.
* Amount reservations and the one-operation-at-a-time lock are compare-and-swap writes
  of the payment document (:func:`mutate`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from gateway import metrics, three_ds
from gateway.config import GatewayConfig
from gateway.disputes import lost_amount, refund_refusal
from gateway.model import (
    apply_status,
    audit,
    iso,
    now,
    snapshot,
    store_snapshot,
)
from gateway.payment_writer import Events, PaymentWriter
from gateway.provider_calls import CallRecord, call_provider
from gateway.routing_runtime import RoutingRuntime
from gateway.state_machine import (
    AUTHORIZATION_UNRESOLVED,
    InvariantError,
    PaymentStatus,
    RefundStatus,
    StatusEvent,
    check_capture,
    reserve_refund,
    settle_refund,
)
from gateway.store import Store
from providers.amounts import wire_refusal
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    NotCreated,
    Outcome,
    PaymentRef,
    Provider,
    ProviderFault,
    ProviderMismatch,
    ProviderResult,
    RefundResult,
    RejectedSafe,
)
from routing.breaker import BreakerBoard

log = logging.getLogger("gateway.orchestrator")
#: Finished follow-up operations remembered per payment (by provider key) for retries.
OPS_DONE_LIMIT = 50
T = TypeVar("T")
S = PaymentStatus


class OperationError(Exception):
    """A follow-up operation cannot be done; maps to an HTTP error."""

    http_status = 409
    type = "invalid_state"

    param: str | None = None

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidAmount(OperationError):
    """The provider cannot be sent this amount exactly (its wire units): HTTP 400, nothing
    sent, nothing changed."""

    http_status = 400
    type = "invalid_request"
    param = "amount"

    def __init__(self, message: str) -> None:
        super().__init__("amount_not_representable", message)


class ProviderUnavailable(OperationError):
    """The provider failed safely; nothing changed. HTTP 503 with Retry-After."""

    http_status = 503
    type = "provider_unavailable"

    @classmethod
    def of(cls, provider: str, fault: ProviderFault) -> ProviderUnavailable:
        return cls("provider_unavailable",
                   f"{provider} is unavailable ({fault.error_code}); nothing was changed")


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


def _op_key(payment_id: str, operation: str, merchant_key: str) -> str:
    """Provider idempotency key of a follow-up, stable across retries of one merchant request."""
    h = hashlib.sha256(merchant_key.encode()).hexdigest()[:16]
    return f"{payment_id}:{operation}:{h}"


class Orchestrator:
    def __init__(
        self, config: GatewayConfig, store: Store, providers: dict[str, Provider],
        routing: RoutingRuntime, breakers: BreakerBoard,
    ) -> None:
        self.config = config
        self.store = store
        self.writer = PaymentWriter(store, config)
        self.providers = providers
        self.routing = routing
        self.breakers = breakers

    # ----------------------------------------------------------- helpers

    def _deadline(self) -> float:
        return time.monotonic() + self.config.request_deadline_s

    def _live_s(self, provider_name: str) -> float:
        """How long after it starts a provider call may still be running on our side: the
        request deadline, a last try started just before it (provider timeout), and the
        lookup that follows an ambiguous outcome (another timeout)."""
        cfg = self.config.providers.get(provider_name)
        timeout = cfg.timeout_s if cfg is not None else self.config.request_deadline_s
        return self.config.request_deadline_s + 2 * timeout + 1.0

    def route(self, doc: dict[str, Any], body: dict[str, Any]) -> None:
        """Stamp the routing decision on a new payment (before it is first stored), so the
        payment finishes on the rules it started with, whatever reloads happen meanwhile."""
        decision = self.routing.decide(body, doc["id"], doc["merchant_id"])
        doc["routing"] = {"rule": decision.rule, "config_version": decision.version}
        doc["_candidates"] = list(decision.candidates)
        doc["_excluded"] = [[name, reason, decision.exclusion_kinds[name].value]
                            for name, reason in decision.excluded]
        if decision.cascade_on:
            doc["_cascade_on"] = sorted(decision.cascade_on)

    def candidates(self, doc: dict[str, Any]) -> list[Provider]:
        return [self.providers[n] for n in doc.get("_candidates", []) if n in self.providers]

    @staticmethod
    def _auth_request(doc: dict[str, Any], provider: str, key: str) -> AuthorizeRequest:
        tokens = doc.get("_provider_tokens") or {}
        return AuthorizeRequest(
            payment_id=doc["id"],
            amount=doc["amount"],
            currency=doc["currency"],
            capture_manual=doc["capture"] == "manual",
            token=tokens.get(provider) or doc["_token"],
            idempotency_key=key,
            reference=doc.get("reference"),
            metadata={str(k): str(v) for k, v in (doc.get("metadata") or {}).items()},
            customer_country=(doc.get("customer") or {}).get("country"),
            return_url=doc.get("_gateway_return"),
        )

    @staticmethod
    def _ref(doc: dict[str, Any]) -> PaymentRef:
        return PaymentRef(
            payment_id=doc["id"],
            provider_reference=doc.get("provider_reference"),
            amount=doc["amount"],
            currency=doc["currency"],
            capture_manual=doc["capture"] == "manual",
        )

    @staticmethod
    def _apply_result(
        doc: dict[str, Any], result: ProviderResult, source: str, amount_captured: int | None = None
    ) -> Events:
        if result.provider_reference:
            doc["provider_reference"] = result.provider_reference
        event = StatusEvent(
            result.status,
            authorized=result.amount_authorized,
            captured=amount_captured if amount_captured is not None else result.amount_captured,
        )
        events = [apply_status(doc, event, source, detail=result.raw_status)]
        if result.failure is not None:
            doc["failure"] = result.failure.to_dict()
        if doc["status"] == S.REQUIRES_ACTION:
            doc["next_action"] = three_ds.public_next_action(doc, result.next_action)
            if events[0]["type"] == "status_changed":
                three_ds.entered_requires_action(doc)
        elif doc["status"] != S.REQUIRES_ACTION and events[0]["type"] == "status_changed":
            doc["next_action"] = None
        return events

    @staticmethod
    def _cascade_code(doc: dict[str, Any], result: ProviderResult) -> str | None:
        """The decline code when ``result`` is a decline the payment's rule cascades."""
        if result.status != S.DECLINED or result.failure is None:
            return None
        code = result.failure.decline_code
        return code if code and code in (doc.get("_cascade_on") or ()) else None

    async def _finish_attempt(
        self, doc_id: str, index: int, outcome: str, rec: CallRecord, error_code: str | None,
        result: ProviderResult | None = None, status: PaymentStatus | None = None,
        failure: dict[str, Any] | None = None, cascaded: bool = False,
    ) -> dict[str, Any]:
        def fn(d: dict[str, Any]) -> Events:
            att = d["attempts"][index]
            att.update(outcome=outcome, duration_ms=rec.duration_ms)
            if error_code:
                att["error_code"] = error_code
            events = [audit("attempt_finished", "provider_response", provider=att["provider"],
                            outcome=outcome, error_code=error_code,
                            cascaded=True if cascaded else None)]
            if result is not None:
                events += self._apply_result(d, result, "provider_response")
            if status is not None:
                events.append(apply_status(d, StatusEvent(status), "gateway"))
                if failure is not None:
                    d["failure"] = failure
            return events

        return await self.writer.mutate(doc_id, fn)

    async def _guarded(
        self, provider: Provider, operation: str, factory: Callable[[], Awaitable[T]],
        deadline: float, record: CallRecord | None = None,
    ) -> T:
        """One provider call behind its circuit breaker. An open breaker raises
        CircuitOpen (a RejectedSafe: nothing was sent) before anything is sent."""
        retry = self.config.retry
        if operation in provider.creating_operations and not provider.retries_deduplicated:
            # A retry of a create the provider may not deduplicate could charge or refund
            # twice: one try, then the lookup decides.
            retry = dataclasses.replace(retry, attempts=1)
        ticket = self.breakers[provider.name].admit()
        try:
            result = await call_provider(provider.name, operation, factory, retry,
                                         deadline, record)
        except BaseException as exc:
            ticket.settle(exc)
            raise
        ticket.settle(None)
        return result

    # ----------------------------------------------------------- authorize

    async def authorize(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Run the candidate list for a freshly recorded (``pending``) payment."""
        deadline = self._deadline()
        cands = self.candidates(doc)[: self.config.failover_budget]
        start = len(doc["attempts"])
        #: the last decline cascaded to the next candidate: (provider name, its answer)
        declined: tuple[str, ProviderResult] | None = None
        for offset, provider in enumerate(cands):
            if time.monotonic() >= deadline:
                break
            index = start + offset
            key = f"{doc['id']}:{index + 1}:authorize"

            def begin(d: dict[str, Any], p: Provider = provider, k: str = key) -> Events:
                sent_at = now()
                d["attempts"].append({"provider": p.name, "outcome": "in_flight",
                                      "started_at": iso(sent_at), "duration_ms": 0, "_key": k,
                                      "_sent_at": sent_at,
                                      "_live_until": sent_at + self._live_s(p.name)})
                d["provider"] = p.name
                return [audit("attempt_started", "gateway", provider=p.name)]

            doc = await self.writer.mutate(doc["id"], begin)
            req = self._auth_request(doc, provider.name, key)
            rec = CallRecord()
            try:
                result = await self._guarded(
                    provider, "authorize", functools.partial(provider.authorize, req),
                    deadline, rec,
                )
            except RejectedSafe as fault:
                doc = await self._finish_attempt(doc["id"], index, Outcome.REJECTED_SAFE,
                                                 rec, fault.error_code)
                self._count_failover(provider, cands, offset, fault.error_code)
                continue
            except ProviderMismatch as wrong:
                doc = await self._mismatched(doc["id"], index, provider, rec, wrong)
                self._count_payment(doc)
                return doc
            except Ambiguous as fault:
                resolved = await self._lookup_after_ambiguity(doc, index, provider, req, rec,
                                                              fault, deadline)
                if resolved is None:  # proven: nothing created -> failover is safe
                    self._count_failover(provider, cands, offset, "not_created")
                    doc = await self.store.get_payment(doc["id"]) or doc
                    continue
                return resolved
            code = self._cascade_code(doc, result)
            if code is not None and offset + 1 < len(cands) and time.monotonic() < deadline:
                # A soft decline the rule cascades: a definite answer (nothing was
                # charged), so the next candidate is tried as a new attempt; the payment
                # stays pending instead of taking the final "declined".
                doc = await self._finish_attempt(doc["id"], index, result.outcome, rec, code,
                                                 cascaded=True)
                metrics.CASCADES.labels(provider.name, cands[offset + 1].name, code).inc()
                declined = (provider.name, result)
                continue
            doc = await self._finish_attempt(doc["id"], index, result.outcome, rec, None, result)
            self._count_payment(doc)
            return doc
        if declined is not None:
            # nobody after a cascaded decline answered: the payment is that decline
            def final(d: dict[str, Any], last: tuple[str, ProviderResult] = declined) -> Events:
                d["provider"] = last[0]  # the payment ends as that provider declined it
                return self._apply_result(d, last[1], "provider_response")

            doc = await self.writer.mutate(doc["id"], final)
            self._count_payment(doc)
            return doc
        doc = await self._finish_attempt_none(doc)
        self._count_payment(doc)
        return doc

    async def _mismatched(self, payment_id: str, index: int, provider: Provider,
                          rec: CallRecord, wrong: ProviderMismatch) -> dict[str, Any]:
        """The provider charged another amount/currency: never a success, no failover.
        ``failed`` when the adapter provably released it, else ``unknown``."""
        _count_mismatch(provider, wrong)
        status = S.FAILED if wrong.released else S.UNKNOWN

        def fn(d: dict[str, Any]) -> Events:
            att = d["attempts"][index]
            att.update(outcome=Outcome.AMBIGUOUS.value, duration_ms=rec.duration_ms,
                       error_code=wrong.error_code)
            if wrong.provider_reference and not d.get("provider_reference"):
                d["provider_reference"] = wrong.provider_reference
            events = [audit("attempt_finished", "provider_response", provider=provider.name,
                            outcome=Outcome.AMBIGUOUS.value, error_code=wrong.error_code,
                            detail=wrong.message),
                      apply_status(d, StatusEvent(status), "gateway", detail=wrong.message)]
            if status == S.FAILED:
                d["failure"] = {"code": wrong.error_code,
                                "message": "the provider charged another amount or currency "
                                           "than requested; it was voided, no money moved"}
            return events

        return await self.writer.mutate(payment_id, fn)

    async def _finish_attempt_none(self, doc: dict[str, Any]) -> dict[str, Any]:
        return await self._fail(doc["id"], "gateway", "no_provider_available",
                                "no provider could process the payment; no money moved",
                                detail="no provider available")

    def _count_failover(self, provider: Provider, cands: Sequence[Provider], i: int, reason: str):
        if i + 1 < len(cands):
            metrics.FAILOVERS.labels(provider.name, cands[i + 1].name, reason).inc()

    @staticmethod
    def _count_payment(doc: dict[str, Any]) -> None:
        metrics.PAYMENTS.labels(doc.get("provider") or "none", doc["status"]).inc()

    async def _lookup_after_ambiguity(
        self, doc: dict[str, Any], index: int, provider: Provider, req: AuthorizeRequest,
        rec: CallRecord, fault: Ambiguous, deadline: float,
    ) -> dict[str, Any] | None:
        """Resolve an ambiguous authorization; None means "proven not created" (only a
        :class:`NotCreated` from the provider's lookup; SPEC 5.1)."""
        sent_at = _sent_at(doc["attempts"][index])
        try:
            result = await call_provider(
                provider.name, "lookup",
                lambda: provider.lookup(self._ref(doc), req, sent_at=sent_at),
                self.config.retry, max(deadline, time.monotonic() + 1.0),
            )
        except NotCreated:
            await self._finish_attempt(doc["id"], index, Outcome.REJECTED_SAFE, rec,
                                       "not_created")
            return None
        except ProviderFault:
            done = await self._finish_attempt(doc["id"], index, Outcome.AMBIGUOUS, rec,
                                              fault.error_code, status=S.UNKNOWN)
            self._count_payment(done)
            return done
        done = await self._finish_attempt(doc["id"], index, result.outcome, rec,
                                          fault.error_code, result)
        self._count_payment(done)
        return done

    # ----------------------------------------------------------- resolve (lookup)

    async def resolve(
        self, doc: dict[str, Any], source: str = "status_lookup", *, may_create: bool = True,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Bring an unresolved payment up to date with its provider (crash recovery,
        reconciliation). Only :class:`NotCreated` (final proof) fails the payment.
        ``may_create=False`` (past the replay window) allows only lookups that cannot
        create a payment, and never starts a first authorization. ``strict`` (an
        operator's sync): a lookup the provider does not answer raises
        :class:`ProviderUnavailable` (nothing changed) instead of returning ``doc``."""
        if doc.get("_operation"):
            return await self._resume_operation(doc, source=source)
        status = PaymentStatus(doc["status"])
        if status not in AUTHORIZATION_UNRESOLVED:
            return doc
        if not doc["attempts"]:
            # Crashed before any provider was called (the attempt is written first).
            if may_create:
                return await self.authorize(doc)
            return await self._fail(doc["id"], source, "not_sent",
                                    "no provider was ever called for this payment; no money "
                                    "moved")
        index = len(doc["attempts"]) - 1
        att = doc["attempts"][index]
        provider = self.providers.get(att["provider"])
        if provider is None:
            return doc
        req = self._auth_request(doc, provider.name, att["_key"])
        sent_at = _sent_at(att)
        try:
            result = await call_provider(
                provider.name, "lookup",
                lambda: provider.lookup(self._ref(doc), req, sent_at=sent_at,
                                        may_create=may_create),
                self.config.retry, self._deadline(),
            )
        except NotCreated:
            def mark(d: dict[str, Any]) -> Events:
                if d["attempts"][index]["outcome"] in ("in_flight", Outcome.AMBIGUOUS):
                    d["attempts"][index].update(outcome=Outcome.REJECTED_SAFE.value,
                                                error_code="not_created")
                return []

            await self.writer.mutate(doc["id"], mark)
            return await self._fail(doc["id"], source, "not_created",
                                    "the provider never created the payment; no money moved")
        except ProviderFault as fault:
            if strict and not isinstance(fault, ProviderMismatch):
                raise ProviderUnavailable.of(provider.name, fault) from None
            return doc

        def fn(d: dict[str, Any]) -> Events:
            if d["attempts"][index]["outcome"] in ("in_flight", Outcome.AMBIGUOUS):
                d["attempts"][index]["outcome"] = result.outcome.value
            return self._apply_result(d, result, source)

        return await self.writer.mutate(doc["id"], fn)

    async def _fail(self, payment_id: str, source: str, code: str, message: str, *,
                    detail: str | None = None) -> dict[str, Any]:
        """Fail the payment with ``failure = {code, message}``; the audit event's detail is
        ``detail`` (default: the message)."""
        def fn(d: dict[str, Any]) -> Events:
            ev = apply_status(d, StatusEvent(S.FAILED), source, detail=detail or message)
            if ev["type"] == "status_changed":
                d["failure"] = {"code": code, "message": message}
            return [ev]

        return await self.writer.mutate(payment_id, fn)

    # ----------------------------------------------------------- capture / void

    def _check_wire_amount(self, doc: dict[str, Any], amount: int) -> None:
        """A capture/refund amount the provider cannot take exactly (e.g. KWD 615 at
        Stripe) is the merchant's 400, before anything is recorded or sent."""
        provider = self.providers.get(doc.get("provider") or "")
        refusal = wire_refusal(provider.type if provider else None, amount, doc["currency"])
        if refusal is not None:
            raise InvalidAmount(refusal)

    def _provider_of(self, doc: dict[str, Any]) -> Provider:
        provider = self.providers.get(doc.get("provider") or "")
        if provider is None or not doc.get("provider_reference"):
            raise OperationError("no_authorization", "the payment has no authorization to act on")
        return provider

    async def capture(self, payment_id: str, amount: int | None, merchant_key: str):
        return await self._modify(payment_id, "capture", amount, merchant_key)

    async def void(self, payment_id: str, merchant_key: str) -> dict[str, Any]:
        return await self._modify(payment_id, "void", None, merchant_key)

    async def _modify(
        self, payment_id: str, op: str, amount: int | None, merchant_key: str
    ) -> dict[str, Any]:
        key = _op_key(payment_id, op, merchant_key)
        while True:
            stale: list[dict[str, Any]] = []
            created: list[bool] = []
            reserve = functools.partial(self._reserve_operation, op=op, amount=amount,
                                        key=key, stale=stale, created=created)
            doc = await self.writer.mutate(payment_id, reserve)
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
            return await self._resume_operation(doc, fresh=bool(created))

    def _reserve_operation(
        self, d: dict[str, Any], *, op: str, amount: int | None, key: str,
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
        if op == "capture":
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
                                source: str = "provider_response") -> dict[str, Any]:
        """Send the recorded operation (again) with its own key. ``fresh``: this request
        has just recorded it, so no earlier send can exist; only then may a safe failure
        drop it. Otherwise an earlier send (a crashed request, an ambiguous try) may have
        been processed: the operation stays recorded, its lease cut short, for the next
        retry or reconciliation."""
        op = doc.get("_operation")
        if op is None:
            return doc
        if op.get("op") == "confirm":  # 3-D Secure completion: its own module
            from gateway.confirm import resume

            return await resume(self, doc, fresh=fresh, source=source)
        provider = self._provider_of(doc)
        ref = self._ref(doc)
        name = op["op"]
        if name == "capture":
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

            await self.writer.mutate(doc["id"], release)
            raise ProviderUnavailable.of(provider.name, fault) from None
        except (Ambiguous, ProviderMismatch) as exc:
            _count_mismatch(provider, exc)
            pending = S.CAPTURE_PENDING if name == "capture" else S.VOID_PENDING
            park_code = exc.error_code

            def park(d: dict[str, Any]) -> Events:
                return [apply_status(d, StatusEvent(pending), "gateway",
                                     detail=f"outcome unknown: {park_code}")]

            return await self.writer.mutate(doc["id"], park)

        def finish(d: dict[str, Any]) -> Events:
            finish_operation(d, "refused" if result.outcome == Outcome.DECLINED else "succeeded")
            if result.outcome == Outcome.DECLINED:
                events = [audit(f"{name}_refused", source,
                                reason=result.failure.message if result.failure else None)]
                if d["status"] in (S.CAPTURE_PENDING, S.VOID_PENDING):
                    events.append(apply_status(d, StatusEvent(S.AUTHORIZED), source))
                return events
            captured = op["amount"] if name == "capture" else None
            return self._apply_result(d, result, source, amount_captured=captured)

        doc = await self.writer.mutate(doc["id"], finish)
        if result.outcome == Outcome.DECLINED:
            failure = result.failure
            raise OperationError(
                "provider_refused",
                f"{provider.name} refused the {name}: {failure.message if failure else ''}".strip(),
            )
        self._count_payment(doc)
        return doc

    # ----------------------------------------------------------- refunds

    async def refund(
        self, payment_id: str, refund_id: str, amount: int | None, reason: str | None
    ) -> dict[str, Any]:
        key = f"{payment_id}:refund:{refund_id}"
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
            if status not in (RefundStatus.PENDING, RefundStatus.UNKNOWN):
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
                provider.name, "lookup",
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
                provider, "refund",
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
                if r["status"] in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):
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
    if old in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):
        return [audit("event_ignored", source, refund_id=refund_id, reason=f"refund already {old}")]
    new = RefundStatus.FAILED if result.outcome == Outcome.DECLINED else result.status
    events = []
    if new in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):
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


def _count_mismatch(provider: Provider, fault: ProviderFault) -> None:
    if isinstance(fault, ProviderMismatch):
        metrics.PROVIDER_MISMATCHES.labels(provider.name).inc()
        log.error("provider answered for another amount or currency",
                  extra={"provider": provider.name, "detail": fault.message,
                         "released": fault.released})


def _op_done(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((d for d in doc.get("_ops_done") or [] if d.get("key") == key), None)


def _sent_at(attempt: dict[str, Any]) -> float | None:
    """When an attempt was first sent (unix s); older records only have ``started_at``."""
    raw = attempt.get("_sent_at")
    if isinstance(raw, int | float):
        return float(raw)
    started = attempt.get("started_at")
    if isinstance(started, str):
        try:
            return datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
