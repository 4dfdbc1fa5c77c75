"""Stripe status tables and parsing of canned (scrubbed) Stripe payloads."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from gateway.state_machine import TRANSITIONS, PaymentStatus, RefundStatus
from providers import status_table
from providers.base import Failure, Outcome, ProviderResult, RefundResult
from providers.stripe import status as st
from providers.stripe.errors import Refusal, translate
from providers.stripe.parse import declined_payment, parse_payment_intent, parse_refund
from tests.paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "stripe"


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def sdk_payment_intent_statuses() -> set[str]:
    """The statuses the installed SDK documents for PaymentIntent.status."""
    literal = next(a for a in typing.get_args(stripe.PaymentIntent.__annotations__["status"])
                   if typing.get_origin(a) is typing.Literal)
    return set(typing.get_args(literal))


REFUND_STATUSES = {"pending", "requires_action", "succeeded", "failed", "canceled"}


@pytest.fixture
def unmapped() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    previous = status_table.on_unmapped
    status_table.on_unmapped = lambda ptype, kind, raw: seen.append((kind, raw))
    yield seen
    status_table.on_unmapped = previous


def test_every_documented_payment_intent_status_is_mapped(
    unmapped: list[tuple[str, str]],
) -> None:
    documented = sdk_payment_intent_statuses()
    assert documented == set(st.PAYMENT_INTENT_STATUS)  # the table follows the SDK exactly
    reachable = {s for targets in TRANSITIONS.values() for s in targets}
    for raw in documented:
        canonical, mapped = st.map_payment_intent_status(raw)
        assert mapped and canonical in PaymentStatus
        assert canonical is not PaymentStatus.UNKNOWN
        assert canonical in reachable or canonical is PaymentStatus.PENDING
    assert unmapped == []


@pytest.mark.parametrize(("raw", "expected"), [
    ("requires_capture", PaymentStatus.AUTHORIZED),
    ("succeeded", PaymentStatus.CAPTURED),
    ("canceled", PaymentStatus.VOIDED),
    ("requires_action", PaymentStatus.REQUIRES_ACTION),
    ("processing", PaymentStatus.PROCESSING),
    ("requires_payment_method", PaymentStatus.DECLINED),
    ("requires_confirmation", PaymentStatus.PENDING),
])
def test_payment_intent_table(raw: str, expected: PaymentStatus) -> None:
    assert st.map_payment_intent_status(raw) == (expected, True)


@pytest.mark.parametrize(("raw", "expected"), [
    ("pending", RefundStatus.PENDING),
    ("requires_action", RefundStatus.PENDING),
    ("succeeded", RefundStatus.SUCCEEDED),
    ("failed", RefundStatus.FAILED),
    ("canceled", RefundStatus.FAILED),
])
def test_refund_table(raw: str, expected: RefundStatus) -> None:
    assert raw in REFUND_STATUSES
    assert st.map_refund_status(raw) == (expected, True)


def test_refund_table_is_complete() -> None:
    assert set(st.REFUND_STATUS) == REFUND_STATUSES


@pytest.mark.parametrize("raw", ["requires_source", "partially_captured", "", None, "SUCCEEDED"])
def test_unmapped_values_are_unknown_and_reported(raw: str | None,
                                                  unmapped: list[tuple[str, str]]) -> None:
    assert st.map_payment_intent_status(raw) == (PaymentStatus.UNKNOWN, False)
    assert st.map_refund_status(raw) == (RefundStatus.UNKNOWN, False)
    assert unmapped == [("payment_intent", str(raw)), ("refund", str(raw))]


def test_unmapped_status_in_a_payload_never_counts_as_success(
    unmapped: list[tuple[str, str]],
) -> None:
    data = {**fixture("payment_intent_succeeded"), "status": "requires_reauthorization"}
    result = parse_payment_intent(data)
    assert result.status is PaymentStatus.UNKNOWN
    assert result.raw_status == "requires_reauthorization"
    assert result.amount_captured is None and result.amount_authorized is None
    assert unmapped == [("payment_intent", "requires_reauthorization")]


def test_parse_requires_capture() -> None:
    assert parse_payment_intent(fixture("payment_intent_requires_capture")) == ProviderResult(
        outcome=Outcome.SUCCEEDED, status=PaymentStatus.AUTHORIZED,
        provider_reference="pi_3QfakeRequiresCapture00001", raw_status="requires_capture",
        amount_authorized=1250, amount_captured=0)


def test_parse_succeeded_partial_capture() -> None:
    assert parse_payment_intent(fixture("payment_intent_succeeded")) == ProviderResult(
        outcome=Outcome.SUCCEEDED, status=PaymentStatus.CAPTURED,
        provider_reference="pi_3QfakeSucceeded000000001", raw_status="succeeded",
        amount_authorized=1250, amount_captured=600)


def test_parse_requires_action() -> None:
    data = fixture("payment_intent_requires_action")
    result = parse_payment_intent(data)
    assert (result.outcome, result.status) == (Outcome.SUCCEEDED, PaymentStatus.REQUIRES_ACTION)
    assert result.next_action == data["next_action"]
    assert result.next_action is not None and result.next_action["type"] == "redirect_to_url"
    assert result.failure is None and result.amount_captured is None


def test_parse_canceled() -> None:
    result = parse_payment_intent(fixture("payment_intent_canceled"))
    assert (result.outcome, result.status, result.raw_status) == (
        Outcome.SUCCEEDED, PaymentStatus.VOIDED, "canceled")
    assert result.provider_reference == "pi_3QfakeCanceled0000000001"


def test_parse_card_error_envelope() -> None:
    envelope = fixture("card_error")
    exc = stripe.CardError(envelope["error"]["message"], None, envelope["error"]["code"],
                           http_body=json.dumps(envelope), http_status=402, json_body=envelope)
    refusal = translate(exc)
    assert isinstance(refusal, Refusal)
    assert declined_payment(refusal) == ProviderResult(
        outcome=Outcome.DECLINED, status=PaymentStatus.DECLINED,
        provider_reference="pi_3QfakeDeclined0000000001", raw_status="requires_payment_method",
        failure=Failure("card_declined", "Your card has insufficient funds.",
                        "insufficient_funds", "card_declined"))
    # the intent itself, fetched later, parses to the same decline
    lookup = parse_payment_intent(envelope["error"]["payment_intent"])
    assert (lookup.outcome, lookup.status) == (Outcome.DECLINED, PaymentStatus.DECLINED)
    assert lookup.failure == Failure("card_declined", "Your card has insufficient funds.",
                                     "insufficient_funds", "card_declined")


def test_parse_refunds() -> None:
    assert parse_refund(fixture("refund_succeeded")) == RefundResult(
        outcome=Outcome.SUCCEEDED, status=RefundStatus.SUCCEEDED,
        provider_reference="re_3QfakeRefund0000000000001", raw_status="succeeded")
    failed = parse_refund(fixture("refund_failed"))
    assert (failed.status, failed.raw_status) == (RefundStatus.FAILED, "failed")
    assert failed.failure is not None
    assert failed.failure.provider_code == "expired_or_canceled_card"
