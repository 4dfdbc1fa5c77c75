"""Resolution: bring an unresolved payment up to date with its provider after a crash or
an ambiguous answer (crash recovery, reconciliation, an operator's sync): resume its
follow-up operation, or look the authorization up (only :class:`~providers.base.NotCreated`
fails it), or start the authorization a crash prevented."""

from __future__ import annotations

from typing import Any

from gateway.authorize import Authorization, _sent_at
from gateway.follow_ups import FollowUps
from gateway.operation_errors import OperationError, ProviderUnavailable
from gateway.payment_writer import Events
from gateway.provider_calls import call_provider
from gateway.state_machine import AUTHORIZATION_UNRESOLVED, PaymentStatus
from providers.base import (
    Ambiguous,
    NotCreated,
    Operation,
    Outcome,
    ProviderFault,
    ProviderMismatch,
)

S = PaymentStatus


class Resolution(Authorization, FollowUps):
    """:meth:`resolve` of :class:`~gateway.orchestrator.Orchestrator`."""

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
                provider.name, Operation.LOOKUP,
                lambda: provider.lookup(self._ref(doc), req, sent_at=sent_at,
                                        may_create=may_create),
                self.config.retry, self._deadline(),
            )
        except NotCreated:
            def mark(d: dict[str, Any]) -> Events:
                if d["attempts"][index]["outcome"] in ("in_flight", Outcome.AMBIGUOUS):
                    d["attempts"][index].update(outcome=Outcome.REJECTED_SAFE.value,
                                                error_code=NotCreated.CODE)
                return []

            await self.writer.mutate(doc["id"], mark)
            earlier = doc.get("_cascaded")
            if isinstance(earlier, dict) and int(earlier["attempt"]) < index:
                return await self._end_as_cascaded_decline(doc["id"], earlier, source)
            return await self._fail(doc["id"], source, NotCreated.CODE,
                                    "the provider never created the payment; no money moved")
        except ProviderFault as fault:
            if strict and fault.error_code == Ambiguous.NOT_VISIBLE_YET:
                # the provider answered: nothing found yet, which proves nothing (SPEC 5.1);
                # the operator's sync reports it unresolved, saying why, not "unavailable"
                raise OperationError(Ambiguous.NOT_VISIBLE_YET,
                                     f"{provider.name}: {fault.message}") from None
            if strict and not isinstance(fault, ProviderMismatch):
                raise ProviderUnavailable.of(provider.name, fault) from None
            return doc

        def fn(d: dict[str, Any]) -> Events:
            if d["attempts"][index]["outcome"] in ("in_flight", Outcome.AMBIGUOUS):
                d["attempts"][index]["outcome"] = result.outcome.value
            return self._apply_result(d, result, source)

        return await self.writer.mutate(doc["id"], fn)
