"""Prometheus metrics (names fixed by SPEC section 11).

Labels are bounded: provider names come from gateway.yaml, operations/outcomes/statuses
from enums, routes from the router's templates. No ids or merchant strings as labels.

With ``gateway serve --workers N`` every worker writes its samples to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before any worker imports this
module) and ``/metrics`` of any worker serves the sum over all of them
(prometheus-client multiprocess mode); gauges say how to combine workers.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.state_machine import PaymentStatus
from providers.base import NotCreated, Operation
from providers.statuses import DisputeStatus

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry(auto_describe=True)


def exposition_registry() -> CollectorRegistry:
    """The registry /metrics serves: this process's, or every worker's combined."""
    if not MULTIPROCESS:
        return REGISTRY
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    combined = CollectorRegistry()
    MultiProcessCollector(combined)
    return combined

M = TypeVar("M", Counter, Gauge, Histogram)
_children: dict[tuple[int, tuple[Any, ...]], Any] = {}


def child(metric: M, *values: Any) -> M:
    """``metric.labels(*values)``, the child kept for the next call: ``labels()`` costs
    ~7.5 us (it converts and validates every value under a lock), a dict lookup ~0.4 us,
    and the request path asks for the same few children on every request. Only for
    children that are never removed (not ROUTING_CONFIG_INFO) and bounded label values
    (all labels here are)."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests served", ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds", "HTTP request duration", ["route"],
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
PROVIDER_CALLS = Counter(
    "gateway_provider_calls_total", "Provider calls by outcome",
    ["provider", "operation", "outcome"], registry=REGISTRY,
)
PROVIDER_DURATION = Histogram(
    "gateway_provider_call_duration_seconds", "Provider call duration",
    ["provider", "operation"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "gateway_circuit_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)",
    ["provider"], registry=REGISTRY, multiprocess_mode="livemax",
)
CIRCUIT_TRANSITIONS = Counter(
    "gateway_circuit_transitions_total", "Circuit breaker transitions", ["provider", "state"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "gateway_failovers_total", "Failovers to another provider",
    ["from_provider", "to_provider", "reason"], registry=REGISTRY,
)
CASCADES = Counter(
    "gateway_cascades_total", "Soft declines moved to the next candidate (cascade_on, SPEC 7.1)",
    ["from_provider", "to_provider", "code"], registry=REGISTRY,
)
RETRIES = Counter(
    "gateway_retries_total", "Retries of the same provider call with the same key",
    ["provider", "operation"], registry=REGISTRY,
)
PAYMENTS = Counter(
    "gateway_payments_total", "Payments by the status a request left them in",
    ["provider", "status"], registry=REGISTRY,
)
PAYMENTS_UNRESOLVED = Gauge(
    "gateway_payments_unresolved", "Payments in an unresolved status", ["provider"],
    registry=REGISTRY, multiprocess_mode="livemax",
)
WEBHOOKS = Counter(
    "gateway_webhooks_total", "Provider webhooks received", ["provider", "result"],
    registry=REGISTRY,
)
DISPUTES = Counter(
    "gateway_disputes_total",
    "Dispute (chargeback) changes applied, by the dispute's status after it (SPEC 16)",
    ["provider", "status"], registry=REGISTRY,
)
SETTLEMENT_DRIFT = Gauge(
    "gateway_settlement_drift_minor_units",
    "Settlement drift found by the last reconciliation of a day, per kind (SPEC 16; minor "
    "units of the currency)", ["provider", "currency", "kind"], registry=REGISTRY,
    # the last reconciliation's value, whichever worker ran it (livemax kept an earlier
    # day's drift of another worker after a clean day)
    multiprocess_mode="livemostrecent",
)
RECONCILIATION_CORRECTIONS = Counter(
    "gateway_reconciliation_corrections_total", "Corrections made by reconciliation",
    ["provider", "from_status", "to_status"], registry=REGISTRY,
)
ROUTING_CONFIG_INFO = Gauge(
    "gateway_routing_config_info", "Active routing configuration version", ["version"],
    registry=REGISTRY, multiprocess_mode="livemax",
)
CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total", "Routing configuration reloads", ["result"],
    registry=REGISTRY,
)
IDEMPOTENCY = Counter(
    "gateway_idempotency_total", "Idempotency-Key handling", ["result"], registry=REGISTRY,
)
OPERATOR_ACTIONS = Counter(
    "gateway_operator_actions_total", "Operator tools (SPEC 9.2): sync and resolve by result",
    ["action", "result"], registry=REGISTRY,
)
#: The bounded label values of gateway_operator_actions_total.
OPERATOR_RESULTS = {"sync": ("corrected", "unchanged", "unresolved", "refused", "unavailable"),
                    "resolve": ("applied", "refused")}
PROVIDER_MISMATCHES = Counter(
    "gateway_provider_mismatches_total",
    "Provider answers for another amount or currency than was sent (never a success)",
    ["provider"], registry=REGISTRY,
)
UNMAPPED_STATUSES = Counter(
    "gateway_provider_unmapped_status_total",
    "Provider statuses with no entry in the status table (mapped to unknown)",
    ["provider"], registry=REGISTRY,
)
HTTP_CONNECTIONS = Gauge(
    "gateway_http_connections", "Open client connections", registry=REGISTRY,
    multiprocess_mode="livesum",
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "gateway_http_connections_closed_total",
    "Client connections closed by the gateway's connection guard",
    ["reason"], registry=REGISTRY,
)
REQUESTS_SHED = Counter(
    "gateway_requests_shed_total",
    "Payment operations answered 503 gateway_overloaded by admission control (nothing done)",
    ["operation"], registry=REGISTRY,
)
ADMISSION_LIMIT = Gauge(
    "gateway_admission_limit",
    "Payment operations admission control lets be in progress now (max_in_flight, or "
    "lower while the event loop lags: gateway.admission)", registry=REGISTRY,
    multiprocess_mode="livesum",
)
EVENT_LOOP_LAG = Gauge(
    "gateway_event_loop_lag_seconds",
    "Mean lag of the event loop over the last 100 ms window (how long a ready callback "
    "waits to run), as admission control measured it", registry=REGISTRY,
    multiprocess_mode="livemax",
)
STORE_POOL_TIMEOUTS = Counter(
    "gateway_store_pool_timeouts_total",
    "Store operations refused because no store place freed in time (a full pool, not a "
    "store outage): 'request' = answered 503 store_unavailable before anything was claimed, "
    "'background' = a reconciliation / notification / readiness call",
    ["kind"], registry=REGISTRY,
)
CONNECTION_CLOSE_REASONS = ("header_timeout", "body_timeout", "keepalive_timeout", "evicted",
                            "refused")


#: What a failover can follow (error codes of RejectedSafe, and a lookup's NotCreated).
FAILOVER_REASONS = ("connection_refused", "connect_timeout", "rate_limited", "circuit_open",
                    "provider_auth_error", "provider_config_error", NotCreated.CODE)
_CIRCUIT_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


def circuit_state_changed(provider: str, state: str) -> None:
    """The breakers' observer (routing.breaker.StateObserver)."""
    CIRCUIT_STATE.labels(provider).set(_CIRCUIT_GAUGE[state])
    CIRCUIT_TRANSITIONS.labels(provider, state).inc()


def initialise(providers: list[str]) -> None:
    """Create the known label combinations at 0, so a counter's first increment is a
    visible change to rate()/increase() (a series first seen at 1 hides that 1)."""
    outcomes = ("succeeded", "declined", "rejected_safe", "ambiguous")
    operations = (Operation.AUTHORIZE, Operation.CAPTURE, Operation.VOID, Operation.REFUND,
                  Operation.LOOKUP)
    for p in providers:
        CIRCUIT_STATE.labels(p).set(0)
        for state in _CIRCUIT_GAUGE:
            CIRCUIT_TRANSITIONS.labels(p, state)
        for status in PaymentStatus:
            PAYMENTS.labels(p, status)
        for other in providers:
            if other != p:
                for reason in FAILOVER_REASONS:
                    FAILOVERS.labels(p, other, reason)
        for op in operations:
            PROVIDER_DURATION.labels(p, op)
            RETRIES.labels(p, op)  # the dashboard's retries panel: a series from the start
            for outcome in outcomes:
                PROVIDER_CALLS.labels(p, op, outcome)
        for result in ("applied", "duplicate", "stale", "invalid_signature", "unmatched",
                       "ignored", "malformed"):
            WEBHOOKS.labels(p, result)
        for dispute_status in DisputeStatus:
            DISPUTES.labels(p, dispute_status)
        PAYMENTS_UNRESOLVED.labels(p)
        PROVIDER_MISMATCHES.labels(p)
    for reason in CONNECTION_CLOSE_REASONS:
        HTTP_CONNECTIONS_CLOSED.labels(reason)
    for kind in ("request", "background"):
        STORE_POOL_TIMEOUTS.labels(kind)
    for result in ("applied", "rejected", "unchanged"):
        CONFIG_RELOADS.labels(result)
    for result in ("new", "replayed", "conflict", "mismatch"):
        IDEMPOTENCY.labels(result)
    for action, results in OPERATOR_RESULTS.items():
        for result in results:
            OPERATOR_ACTIONS.labels(action, result)


#: The drift kinds of gateway_settlement_drift_minor_units (gateway.settlements.DRIFT_KINDS).
SETTLEMENT_DRIFT_KINDS = ("missing_at_provider", "missing_in_gateway", "amount_drift",
                          "fee_drift", "payout_mismatch")


def initialise_settlement(currencies: dict[str, frozenset[str]]) -> None:
    """The drift gauge at 0 for every provider and currency it may settle (a series from
    the start, so the drift alert and panel have data before the first reconciliation)."""
    for provider, codes in currencies.items():
        for currency in sorted(codes):
            for kind in SETTLEMENT_DRIFT_KINDS:
                SETTLEMENT_DRIFT.labels(provider, currency, kind)
