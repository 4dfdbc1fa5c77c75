"""The typed payment models (gateway/payment_types.py): the projection against the one it
replaced, the exact document round trip, loud failures, kept unknown keys, the schema.

tests/fixtures/payment_documents.json: stored payments captured from the suite's real
flows (every status; Stripe, Adyen, Braintree; refunds, disputes, 3-D Secure, operations
in flight), by cross-checking the old and new projections on every call while the unit
and integration suites ran (no difference but key order for a document without
``disputes``, now kept too).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import public_schema
from gateway.payment_types import (
    Attempt,
    Dispute,
    MalformedDocument,
    Payment,
    PaymentOperation,
    Refund,
    iso,
)
from providers.base import Operation
from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus
from tests.legacy_public_view import ATTEMPT as _ATTEMPT
from tests.legacy_public_view import DISPUTE as _DISPUTE
from tests.legacy_public_view import PAYMENT as _PAYMENT
from tests.legacy_public_view import REFUND as _REFUND
from tests.legacy_public_view import old_dispute_view, old_iso, old_public_view
from tests.paths import FIXTURES_DIR

DOCS: list[dict[str, Any]] = json.loads((FIXTURES_DIR / "payment_documents.json").read_text())

def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal values, the same keys in the same order, the same JSON text."""
    assert a == b
    assert json.dumps(a) == json.dumps(b)


# ------------------------------------------------------------------ real documents


def test_fixture_covers_every_status() -> None:
    assert {d["status"] for d in DOCS} == {s.value for s in PaymentStatus}
    assert any(d["disputes"] for d in DOCS) and any(d["refunds"] for d in DOCS)
    assert any(d.get("_operation") for d in DOCS) and any(d.get("next_action") for d in DOCS)


@pytest.mark.parametrize("doc", DOCS, ids=[f"{d['status']}-{d['provider']}" for d in DOCS])
def test_projection_equals_the_old_public_view(doc: dict[str, Any]) -> None:
    old = old_public_view(doc)
    _same(Payment.public_of(doc), old)
    _same(Payment.from_doc(doc).public(), old)
    for d in doc["disputes"]:
        _same(Dispute.public_of(d), old_dispute_view(d))


@pytest.mark.parametrize("doc", DOCS, ids=[f"{d['status']}-{d['provider']}" for d in DOCS])
def test_stored_document_round_trips_exactly(doc: dict[str, Any]) -> None:
    payment = Payment.from_doc(doc)
    assert payment.to_doc() == doc
    assert Payment.from_doc(payment.to_doc()) == payment


def test_an_older_document_loads_with_defaults_and_shows_as_before() -> None:
    doc = copy.deepcopy(next(d for d in DOCS if d["status"] == "captured"))
    for key in ("disputes", "next_action", "_refund_pending", "_provider_tokens"):
        doc.pop(key, None)
    payment = Payment.from_doc(doc)
    assert payment.disputes == [] and payment.next_action is None
    assert payment.refund_pending == 0
    assert {"disputes", "next_action", "_refund_pending"} <= payment.absent
    assert payment.to_doc() == doc  # the defaults are not written back
    _same(Payment.public_of(doc), old_public_view(doc))
    _same(payment.public(), old_public_view(doc))
    payment.refund_pending = 300  # set since: written
    assert payment.to_doc()["_refund_pending"] == 300


def test_unknown_keys_are_kept_and_never_shown() -> None:
    doc = copy.deepcopy(next(d for d in DOCS if d["refunds"]))
    doc["_from_a_newer_version"] = {"x": 1}
    doc["attempts"][0]["_newer"] = 2
    doc["refunds"][0]["_newer"] = 3
    payment = Payment.from_doc(doc)
    assert payment.unknown == {"_from_a_newer_version": {"x": 1}}
    assert payment.attempts[0].unknown == {"_newer": 2}
    assert payment.to_doc() == doc
    shown = json.dumps(Payment.public_of(doc)) + json.dumps(payment.public())
    assert "_newer" not in shown and "_from_a_newer_version" not in shown


def test_typed_fields() -> None:
    doc = next(d for d in DOCS if d["status"] == "requires_action")
    p = Payment.from_doc(doc)
    assert p.status is PaymentStatus.REQUIRES_ACTION and type(p.amount) is int
    assert isinstance(p.operation, PaymentOperation) and p.operation.op is Operation.CONFIRM
    assert isinstance(p.attempts[0], Attempt)
    refunded = Payment.from_doc(next(d for d in DOCS if d["refunds"]))
    assert isinstance(refunded.refunds[0], Refund)
    assert isinstance(refunded.refunds[0].status, RefundStatus)
    disputed = Payment.from_doc(next(d for d in DOCS if d["disputes"]))
    assert isinstance(disputed.disputes[0].status, DisputeStatus)


# ------------------------------------------------------------------ loud failures


@pytest.mark.parametrize(("path", "value", "where"), [
    (("amount",), 10.5, "Payment.amount"),  # never rounded
    (("amount",), True, "Payment.amount"),
    (("amount",), "1000", "Payment.amount"),
    (("status",), "settled", "Payment.status"),
    (("currency",), None, "Payment.currency"),
    (("created_at",), "yesterday", "Payment.created_at"),
    (("metadata",), [], "Payment.metadata"),
    (("attempts",), {}, "Payment.attempts"),
    (("attempts", 0, "outcome"), "maybe", "Payment.attempts[0].Attempt.outcome"),
    (("refunds", 0, "amount"), 1.0, "Payment.refunds[0].Refund.amount"),
])
def test_malformed_documents_fail_loudly(path: tuple[Any, ...], value: Any, where: str) -> None:
    doc = copy.deepcopy(next(d for d in DOCS if d["refunds"] and d["attempts"]))
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(MalformedDocument, match=rf"^{where}\b".replace("[", r"\[")):
        Payment.from_doc(doc)
    with pytest.raises(MalformedDocument, match=rf"^{where}\b".replace("[", r"\[")):
        Payment.public_of(doc)


def test_internal_fields_are_checked_by_from_doc() -> None:
    doc = copy.deepcopy(DOCS[0])
    doc["_refund_pending"] = 1.5
    with pytest.raises(MalformedDocument, match="_refund_pending"):
        Payment.from_doc(doc)
    doc = copy.deepcopy(DOCS[0])
    doc["_operation"] = {"op": "teleport"}
    with pytest.raises(MalformedDocument, match=r"_operation\.PaymentOperation\.op"):
        Payment.from_doc(doc)
    doc = copy.deepcopy(DOCS[0])
    del doc["id"]
    with pytest.raises(MalformedDocument, match=r"Payment\.id: missing"):
        Payment.from_doc(doc)


# ------------------------------------------------------------------ one definition


def test_schema_lists_are_generated_from_the_types_unchanged() -> None:
    assert list(public_schema.PAYMENT_FIELDS) == _PAYMENT
    assert list(public_schema.ATTEMPT_FIELDS) == _ATTEMPT
    assert list(public_schema.REFUND_FIELDS) == _REFUND
    assert list(public_schema.DISPUTE_FIELDS) == _DISPUTE
    props = public_schema.payment_schema()["properties"]
    assert props["status"]["enum"] == public_schema.STATUSES
    assert props["refunds"]["items"]["properties"]["status"]["enum"] == [
        "pending", "succeeded", "failed", "unknown"]
    assert props["attempts"]["items"]["properties"]["outcome"]["enum"] == [
        "in_flight", "succeeded", "declined", "rejected_safe", "ambiguous"]
    assert props["disputes"]["items"]["properties"]["evidence_due_by"] == {
        "type": "string", "format": "date-time", "nullable": True}
    for doc in DOCS:  # every field shown is described, and the other way round
        assert list(Payment.public_of(doc)) == [
            *[k for k in props if k != "amount_capture_pending"], "amount_capture_pending"]


# ------------------------------------------------------------------ properties

_text = st.text(max_size=8)
_ts = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_num = st.one_of(_ts, st.integers(min_value=0, max_value=4_000_000_000))
_json = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
                     max_leaves=6)


def _optional(**fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Documents where each optional key may be missing (an earlier version's)."""
    return st.fixed_dictionaries({}, optional=fields)


def _doc(required: dict[str, Any], optional: dict[str, Any], unknown: bool = True
         ) -> st.SearchStrategy[dict[str, Any]]:
    extra = (st.dictionaries(st.sampled_from(["_later", "_zz", "note"]), _json, max_size=2)
             if unknown else st.just({}))
    return st.builds(lambda r, o, e: {**e, **r, **o}, st.fixed_dictionaries(required),
                     _optional(**optional), extra)


_attempt = _doc({"provider": _text, "outcome": st.sampled_from(
    ["in_flight", "succeeded", "declined", "rejected_safe", "ambiguous"]), "started_at": _text},
    {"error_code": _text, "duration_ms": st.integers(0, 10**6), "_key": _text,
     "_sent_at": _num, "_live_until": _num | st.none()})
_refund = _doc({"id": _text, "amount": st.integers(1, 10**9),
                "status": st.sampled_from([s.value for s in RefundStatus]), "created_at": _text},
               {"provider_reference": _text | st.none(), "reason": _text | st.none(),
                "failure": st.none() | st.dictionaries(_text, _text, max_size=2),
                "_key": _text, "_in_flight": st.booleans(), "_live_until": _num})
# evidence_due_by always written (gateway/disputes.py); absent, the old view put it last
_dispute = _doc({"id": _text, "currency": _text, "provider_reference": _text,
                 "status": st.sampled_from([s.value for s in DisputeStatus]),
                 "evidence_due_by": _ts | st.none()},
                {"amount": st.integers(1, 10**9) | st.none(), "reason": _text | st.none(),
                 "created_at": _num, "updated_at": _num,
                 "_event_at": _num | st.none()})
_operation = _doc({"op": st.sampled_from([o.value for o in Operation])},
                  {"key": _text | st.none(), "amount": st.integers(0, 10**9),
                   "started_at": _num, "lease_until": _num, "await_customer": st.booleans(),
                   "returned": st.dictionaries(_text, _text, max_size=2)})
_payment = _doc(
    {"id": _text, "merchant_id": _text, "amount": st.integers(1, 10**12), "currency": _text,
     "status": st.sampled_from([s.value for s in PaymentStatus]),
     "capture": st.sampled_from(["automatic", "manual"]), "created_at": _ts,
     "updated_at": _ts},
    {"object": st.just("payment"), "amount_authorized": st.integers(0, 10**12),
     "amount_captured": st.integers(0, 10**12), "amount_refunded": st.integers(0, 10**12),
     "provider": _text | st.none(), "provider_reference": _text | st.none(),
     "reference": _text | st.none(), "routing": st.none() | st.dictionaries(_text, _text),
     "attempts": st.lists(_attempt, max_size=3), "refunds": st.lists(_refund, max_size=2),
     "disputes": st.lists(_dispute, max_size=2),
     "failure": st.none() | st.dictionaries(_text, _text, max_size=2),
     "next_action": st.none() | st.fixed_dictionaries({"type": _text}),
     "metadata": st.dictionaries(_text, _text, max_size=2),
     "payment_method": st.dictionaries(_text, _text, max_size=2),
     "customer": st.dictionaries(_text, _text, max_size=2), "version": st.integers(1, 99),
     "needs_reconcile": st.booleans(), "_fingerprint": _text, "_token": _text | st.none(),
     "_refund_pending": st.integers(0, 10**9), "_capture_pending": st.integers(0, 10**9),
     "_operation": st.none() | _operation, "_outbox": st.lists(_json, max_size=2),
     "_flagged": _text, "_cascaded": st.dictionaries(_text, _json, max_size=2),
     "_ops_done": st.lists(_json, max_size=2), "_notified_sequence": st.integers(0, 99),
     "_candidates": st.lists(_text, max_size=2), "_action_window_s": _num,
     "_action": st.dictionaries(_text, _num, max_size=1)})


@settings(max_examples=300, deadline=None)
@given(_payment)
def test_round_trip_property(doc: dict[str, Any]) -> None:
    snapshot = copy.deepcopy(doc)
    payment = Payment.from_doc(doc)
    assert payment.to_doc() == snapshot
    assert Payment.from_doc(payment.to_doc()) == payment
    shown = Payment.public_of(doc)
    _same(payment.public(), shown)
    if "attempts" in doc and "refunds" in doc:  # the old view required both
        _same(shown, old_public_view(doc))
    assert doc == snapshot  # reading changes nothing


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_ts, st.integers(0, 4_000_000_000),
                 st.floats(min_value=-1e9, max_value=2.5e11, allow_nan=False)))
def test_iso_is_the_datetime_formatting(ts: float) -> None:
    assert iso(ts) == old_iso(ts)


def _old_busy_until(doc: dict[str, Any], request_deadline_s: float) -> float:
    """gateway.model.busy_until on dicts, as it was."""
    leases = [float(doc["created_at"]) + request_deadline_s]
    if doc.get("attempts"):
        leases.append(float(doc["attempts"][-1].get("_live_until") or 0))
    op = doc.get("_operation")
    if isinstance(op, dict):
        leases.append(float(op.get("lease_until") or 0))
    leases += [float(r.get("_live_until") or 0) for r in doc.get("refunds") or []
               if r.get("_in_flight")]
    return max(leases)


@pytest.mark.parametrize("deadline", [0.0, 20.0, 1e6])
def test_busy_until_read_through_the_types_is_unchanged(deadline: float) -> None:
    from gateway.model import busy_until
    for doc in DOCS:
        assert busy_until(doc, deadline) == _old_busy_until(doc, deadline), doc["id"]
        assert busy_until(Payment.from_doc(doc), deadline) == _old_busy_until(doc, deadline)
