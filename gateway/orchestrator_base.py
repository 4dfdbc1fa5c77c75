"""What every job of the orchestrator shares (:mod:`gateway.orchestrator`): its wiring
(config, store, payment writer, providers, routing, breakers), deadlines and leases, the
provider requests built from a payment, one guarded provider call, applying a provider's
answer to the payment, and the metrics every job counts."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway import metrics, three_ds
from gateway.config import GatewayConfig
from gateway.model import apply_status
from gateway.operation_errors import InvalidAmount, OperationError
from gateway.payment_writer import Events, PaymentWriter
from gateway.provider_calls import CallRecord, call_provider
from gateway.routing_runtime import RoutingRuntime
from gateway.state_machine import PaymentStatus, StatusEvent
from gateway.store import Store
from providers.amounts import wire_refusal
from providers.base import (
    AuthorizeRequest,
    Operation,
    PaymentRef,
    Provider,
    ProviderFault,
    ProviderMismatch,
    ProviderResult,
)
from routing.breaker import BreakerBoard

log = logging.getLogger("gateway.orchestrator")
T = TypeVar("T")
S = PaymentStatus


class OrchestratorBase:
    """The orchestrator's state and the helpers its jobs (authorize, follow-ups, refunds,
    resolution) share."""

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

    async def _guarded(
        self, provider: Provider, operation: Operation, factory: Callable[[], Awaitable[T]],
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

    @staticmethod
    def _count_payment(doc: dict[str, Any]) -> None:
        metrics.PAYMENTS.labels(doc.get("provider") or "none", doc["status"]).inc()


def _count_mismatch(provider: Provider, fault: ProviderFault) -> None:
    if isinstance(fault, ProviderMismatch):
        metrics.PROVIDER_MISMATCHES.labels(provider.name).inc()
        log.error("provider answered for another amount or currency",
                  extra={"provider": provider.name, "detail": fault.message,
                         "released": fault.released})
