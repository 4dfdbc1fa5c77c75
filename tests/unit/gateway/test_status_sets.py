"""The status sets and operation names the gateway derives from one definition each
(gateway/state_machine.py, providers/statuses.py, providers/base.Operation) keep exactly
the values they had when they were hand-written lists: their meaning cannot drift."""

from __future__ import annotations

import json

from gateway import admission, metrics, public_schema, state_machine
from gateway.store import RECONCILE_STATUSES
from providers.base import NotCreated, NotFound, Operation, Provider
from providers.faults import UNCLASSIFIED


def _values(statuses: frozenset[str]) -> set[str]:
    return {str(s) for s in statuses}


def test_unresolved_statuses_are_what_they_were() -> None:
    assert _values(state_machine.UNRESOLVED) == {
        "pending", "unknown", "processing", "capture_pending", "void_pending"}
    assert _values(state_machine.AUTHORIZATION_UNRESOLVED) == {
        "pending", "unknown", "processing"}
    assert _values(state_machine.MODIFICATION_PENDING) == {"capture_pending", "void_pending"}
    assert set(RECONCILE_STATUSES) == _values(state_machine.UNRESOLVED)


def test_refund_status_sets_are_what_they_were() -> None:
    assert _values(state_machine.OPEN_REFUND_STATUSES) == {"pending", "unknown"}
    assert _values(state_machine.SETTLED_REFUND_STATUSES) == {"succeeded", "failed"}


def test_public_status_lists_are_what_they_were() -> None:
    assert public_schema.STATUSES == [
        "pending", "requires_action", "processing", "unknown", "authorized",
        "capture_pending", "captured", "partially_refunded", "refunded", "void_pending",
        "voided", "declined", "failed", "expired"]
    assert public_schema.REFUND_STATUSES == ["pending", "succeeded", "failed", "unknown"]
    assert all(type(s) is str for s in public_schema.STATUSES + public_schema.REFUND_STATUSES)


def test_operation_values_are_the_stored_and_label_strings() -> None:
    assert {o.name: o.value for o in Operation} == {
        "AUTHORIZE": "authorize", "CAPTURE": "capture", "VOID": "void", "REFUND": "refund",
        "LOOKUP": "lookup", "CONFIRM": "confirm", "ABANDON": "abandon"}
    # stored in _operation.op and in metric labels: the same bytes as the plain strings
    assert json.dumps({"op": Operation.CAPTURE}) == '{"op": "capture"}'
    assert f"{Operation.VOID}_requested" == "void_requested"
    assert str(Operation.CONFIRM) == "confirm"
    assert Provider.creating_operations == {"authorize", "refund"}


def test_operation_label_lists_are_what_they_were() -> None:
    assert list(admission.OPERATIONS) == ["authorize", "capture", "void", "refund", "confirm"]
    assert admission.operation_of("POST", "/v1/payments/{payment_id}/capture") == "capture"
    assert metrics.FAILOVER_REASONS == (
        "connection_refused", "connect_timeout", "rate_limited", "circuit_open",
        "provider_auth_error", "provider_config_error", "not_created")


def test_fault_code_constants() -> None:
    assert NotCreated.CODE == NotCreated().error_code == "not_created"
    assert NotFound.CODE == NotFound().error_code == "not_found"
    assert UNCLASSIFIED == "unclassified_error"
