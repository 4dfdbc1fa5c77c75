"""Authorization (SPEC 5): run a new payment's candidate list -- attempts written
before each provider call, failover on a safe rejection or a proven non-creation, the
rule's decline cascade, the lookup after an ambiguous answer -- and the payment's
failure when no provider could take it."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway import metrics
from gateway.model import apply_status, audit, iso, now
from gateway.orchestrator_base import OrchestratorBase, _count_mismatch
from gateway.payment_writer import Events
from gateway.provider_calls import CallRecord, call_provider
from gateway.state_machine import PaymentStatus, StatusEvent
from gateway.store.base import Completion
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    NotCreated,
    Operation,
    Outcome,
    Provider,
    ProviderFault,
    ProviderMismatch,
    ProviderResult,
    RejectedSafe,
)

S = PaymentStatus


class Authorization(OrchestratorBase):
    """The authorize path of :class:`~gateway.orchestrator.Orchestrator`."""

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
    def _cascade_code(doc: dict[str, Any], result: ProviderResult) -> str | None:
        """The decline code when ``result`` is a decline the payment's rule cascades."""
        if result.status != S.DECLINED or result.failure is None:
            return None
        code = result.failure.decline_code
        return code if code and code in (doc.get("_cascade_on") or ()) else None

    async def _finish_attempt(
        self, doc_id: str, index: int, outcome: str, rec: CallRecord, error_code: str | None,
        result: ProviderResult | None = None, status: PaymentStatus | None = None,
        failure: dict[str, Any] | None = None, cascaded: ProviderResult | None = None, *,
        current: dict[str, Any] | None = None, completion: Completion | None = None,
    ) -> dict[str, Any]:
        """Record how attempt ``index`` ended. ``cascaded``: its decline moves the payment
        on to the next candidate; the decline is kept (``_cascaded``) so that a payment
        whose later attempts prove to have created nothing ends as that decline, even when
        it is resolved after a crash (:meth:`gateway.resolution.Resolution.resolve`)."""
        def fn(d: dict[str, Any]) -> Events:
            att = d["attempts"][index]
            att.update(outcome=outcome, duration_ms=rec.duration_ms)
            if error_code:
                att["error_code"] = error_code
            if cascaded is not None:
                d["_cascaded"] = cascaded_decline(att["provider"], index, cascaded)
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

        return await self.writer.mutate(doc_id, fn, current=current, completion=completion)

    def _begin(self, d: dict[str, Any], p: Provider, index: int) -> Events:
        """Append attempt ``index`` at provider ``p`` (written before it is sent)."""
        sent_at = now()
        key = f"{d['id']}:{index + 1}:{Operation.AUTHORIZE}"
        d["attempts"].append({"provider": p.name, "outcome": "in_flight",
                              "started_at": iso(sent_at), "duration_ms": 0, "_key": key,
                              "_sent_at": sent_at,
                              "_live_until": sent_at + self._live_s(p.name)})
        d["provider"] = p.name
        return [audit("attempt_started", "gateway", provider=p.name)]

    def begin_first_attempt(self, doc: dict[str, Any]) -> Events:
        """Give a new (not yet stored) payment its first candidate's attempt, so that the
        write that first stores it is also the attempt's write-ahead record; the audit
        events to store with it ([] when no candidate can take it). Then
        :meth:`authorize` it with ``begun=True``."""
        cands = self.candidates(doc)[: self.config.failover_budget]
        return self._begin(doc, cands[0], len(doc["attempts"])) if cands else []

    async def authorize(self, doc: dict[str, Any], *, begun: bool = False,
                        completion: Completion | None = None) -> dict[str, Any]:
        """Run the candidate list for a freshly recorded (``pending``) payment.

        Each write here compare-and-swaps against what the previous one stored, without
        reading it back. ``begun``: ``doc`` is exactly what the write that created it
        stored, its last attempt the first candidate's (:meth:`begin_first_attempt`),
        not sent yet; otherwise ``doc`` (the caller's copy) is only used for routing and
        the first write reads the payment. ``completion``: the request's
        idempotency completion, written with the write that ends the authorization."""
        deadline = self._deadline()
        cands = self.candidates(doc)[: self.config.failover_budget]
        start = len(doc["attempts"]) - (1 if begun and cands else 0)
        own = begun  # doc is what the last write stored (else the first write reads)
        for offset, provider in enumerate(cands):
            if time.monotonic() >= deadline:
                break
            index = start + offset
            if not (begun and offset == 0):
                doc = await self.writer.mutate(
                    doc["id"], functools.partial(self._begin, p=provider, index=index),
                    current=doc if own else None)
                own = True
            key = str(doc["attempts"][index]["_key"])
            req = self._auth_request(doc, provider.name, key)
            rec = CallRecord()
            try:
                result = await self._guarded(
                    provider, Operation.AUTHORIZE, functools.partial(provider.authorize, req),
                    deadline, rec,
                )
            except RejectedSafe as fault:
                doc = await self._finish_attempt(doc["id"], index, Outcome.REJECTED_SAFE,
                                                 rec, fault.error_code, current=doc)
                self._count_failover(provider, cands, offset, fault.error_code)
                continue
            except ProviderMismatch as wrong:
                doc = await self._mismatched(doc["id"], index, provider, rec, wrong,
                                             current=doc, completion=completion)
                self._count_payment(doc)
                return doc
            except Ambiguous as fault:
                doc, resolved = await self._lookup_after_ambiguity(
                    doc, index, provider, req, rec, fault, deadline, completion)
                if not resolved:  # proven: nothing created -> failover is safe
                    self._count_failover(provider, cands, offset, NotCreated.CODE)
                    continue
                return doc
            code = self._cascade_code(doc, result)
            if code is not None and offset + 1 < len(cands) and time.monotonic() < deadline:
                # A soft decline the rule cascades: a definite answer (nothing was
                # charged), so the next candidate is tried as a new attempt; the payment
                # stays pending instead of taking the final "declined".
                doc = await self._finish_attempt(doc["id"], index, result.outcome, rec, code,
                                                 cascaded=result, current=doc)
                metrics.CASCADES.labels(provider.name, cands[offset + 1].name, code).inc()
                continue
            doc = await self._finish_attempt(doc["id"], index, result.outcome, rec, None, result,
                                             current=doc, completion=completion)
            self._count_payment(doc)
            return doc
        earlier = doc.get("_cascaded")
        if isinstance(earlier, dict) and int(earlier["attempt"]) >= start:
            # nobody after a decline this run cascaded past answered: the payment is it
            doc = await self._end_as_cascaded_decline(doc["id"], earlier, "provider_response",
                                                      current=doc, completion=completion)
            self._count_payment(doc)
            return doc
        doc = await self._finish_attempt_none(doc, completion, own)
        self._count_payment(doc)
        return doc

    async def _mismatched(self, payment_id: str, index: int, provider: Provider,
                          rec: CallRecord, wrong: ProviderMismatch, *,
                          current: dict[str, Any] | None = None,
                          completion: Completion | None = None) -> dict[str, Any]:
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

        return await self.writer.mutate(payment_id, fn, current=current, completion=completion)

    async def _finish_attempt_none(self, doc: dict[str, Any],
                                   completion: Completion | None = None,
                                   own: bool = False) -> dict[str, Any]:
        return await self._fail(doc["id"], "gateway", "no_provider_available",
                                "no provider could process the payment; no money moved",
                                detail="no provider available",
                                current=doc if own else None, completion=completion)

    def _count_failover(self, provider: Provider, cands: Sequence[Provider], i: int, reason: str):
        if i + 1 < len(cands):
            metrics.FAILOVERS.labels(provider.name, cands[i + 1].name, reason).inc()

    async def _lookup_after_ambiguity(
        self, doc: dict[str, Any], index: int, provider: Provider, req: AuthorizeRequest,
        rec: CallRecord, fault: Ambiguous, deadline: float,
        completion: Completion | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Resolve an ambiguous authorization: the payment as stored, and False for
        "proven not created" (only a :class:`NotCreated` from the provider's lookup; SPEC
        5.1; the authorization goes on), True when it ended."""
        sent_at = _sent_at(doc["attempts"][index])
        try:
            result = await call_provider(
                provider.name, Operation.LOOKUP,
                lambda: provider.lookup(self._ref(doc), req, sent_at=sent_at),
                self.config.retry, max(deadline, time.monotonic() + 1.0),
            )
        except NotCreated:
            done = await self._finish_attempt(doc["id"], index, Outcome.REJECTED_SAFE, rec,
                                              NotCreated.CODE, current=doc)
            return done, False
        except ProviderFault:
            done = await self._finish_attempt(doc["id"], index, Outcome.AMBIGUOUS, rec,
                                              fault.error_code, status=S.UNKNOWN, current=doc,
                                              completion=completion)
            self._count_payment(done)
            return done, True
        done = await self._finish_attempt(doc["id"], index, result.outcome, rec,
                                          fault.error_code, result, current=doc,
                                          completion=completion)
        self._count_payment(done)
        return done, True

    async def _end_as_cascaded_decline(
        self, payment_id: str, earlier: dict[str, Any], source: str, *,
        current: dict[str, Any] | None = None, completion: Completion | None = None,
    ) -> dict[str, Any]:
        """Nothing after a cascaded decline (``_cascaded``, :func:`cascaded_decline`) was
        created: the payment ends as that decline, whether :meth:`authorize` finds that
        out or :meth:`~gateway.resolution.Resolution.resolve` does after a crash."""
        def fn(d: dict[str, Any]) -> Events:
            ev = apply_status(d, StatusEvent(S.DECLINED), source,
                              detail=earlier.get("raw_status"))
            if ev["type"] == "status_changed":
                d["provider"] = earlier["provider"]
                if earlier.get("provider_reference"):
                    d["provider_reference"] = earlier["provider_reference"]
                d["failure"] = earlier.get("failure")
            return [ev]

        return await self.writer.mutate(payment_id, fn, current=current, completion=completion)

    async def _fail(self, payment_id: str, source: str, code: str, message: str, *,
                    detail: str | None = None, current: dict[str, Any] | None = None,
                    completion: Completion | None = None) -> dict[str, Any]:
        """Fail the payment with ``failure = {code, message}``; the audit event's detail is
        ``detail`` (default: the message)."""
        def fn(d: dict[str, Any]) -> Events:
            ev = apply_status(d, StatusEvent(S.FAILED), source, detail=detail or message)
            if ev["type"] == "status_changed":
                d["failure"] = {"code": code, "message": message}
            return [ev]

        return await self.writer.mutate(payment_id, fn, current=current, completion=completion)


def cascaded_decline(provider: str, index: int, result: ProviderResult) -> dict[str, Any]:
    """What is kept of a decline the payment cascaded past (internal ``_cascaded``)."""
    return {"provider": provider, "attempt": index,
            "provider_reference": result.provider_reference, "raw_status": result.raw_status,
            "failure": None if result.failure is None else result.failure.to_dict()}


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
