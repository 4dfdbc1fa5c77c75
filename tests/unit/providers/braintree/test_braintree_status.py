"""Braintree status tables and amount conversion (no network)."""

from __future__ import annotations

from decimal import Decimal

import braintree
import pytest

from gateway.state_machine import TRANSITIONS, PaymentStatus, RefundStatus
from providers import status_table
from providers.braintree import status as st
from providers.braintree.amounts import AmountError, exponent, to_decimal_string, to_minor_units

ALL_STATUSES = sorted(
    value for name, value in vars(braintree.Transaction.Status).items()
    if not name.startswith("_") and isinstance(value, str)
)


def test_sdk_status_list_is_what_we_expect() -> None:
    assert len(ALL_STATUSES) == 14
    assert set(ALL_STATUSES) == set(st.TRANSACTION_STATUS)


@pytest.mark.parametrize("raw", ALL_STATUSES)
def test_every_sdk_status_maps_to_a_reachable_canonical_status(raw: str) -> None:
    status, mapped = st.map_transaction_status(raw)
    assert mapped
    assert status is not PaymentStatus.UNKNOWN
    # reachable from pending, processing or unknown (where a lookup lands)
    assert any(status in TRANSITIONS[src] for src in
               (PaymentStatus.PENDING, PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN,
                PaymentStatus.AUTHORIZED))


@pytest.mark.parametrize(("raw", "expected"), [
    ("authorization_expired", PaymentStatus.EXPIRED),
    ("authorized", PaymentStatus.AUTHORIZED),
    ("authorizing", PaymentStatus.PROCESSING),
    ("submitted_for_settlement", PaymentStatus.CAPTURED),
    ("settling", PaymentStatus.CAPTURED),
    ("settled", PaymentStatus.CAPTURED),
    ("settlement_pending", PaymentStatus.CAPTURED),
    ("settlement_confirmed", PaymentStatus.CAPTURED),
    ("settlement_declined", PaymentStatus.FAILED),
    ("settlement_failed", PaymentStatus.FAILED),
    ("voided", PaymentStatus.VOIDED),
    ("processor_declined", PaymentStatus.DECLINED),
    ("gateway_rejected", PaymentStatus.DECLINED),
    ("failed", PaymentStatus.DECLINED),
])
def test_transaction_table(raw: str, expected: PaymentStatus) -> None:
    assert st.map_transaction_status(raw) == (expected, True)


@pytest.mark.parametrize(("raw", "expected"), [
    ("submitted_for_settlement", RefundStatus.SUCCEEDED),
    ("settling", RefundStatus.SUCCEEDED),
    ("settled", RefundStatus.SUCCEEDED),
    ("authorized", RefundStatus.PENDING),
    ("authorizing", RefundStatus.PENDING),
    ("settlement_pending", RefundStatus.PENDING),
    ("processor_declined", RefundStatus.FAILED),
    ("gateway_rejected", RefundStatus.FAILED),
    ("failed", RefundStatus.FAILED),
    ("voided", RefundStatus.FAILED),
])
def test_refund_table(raw: str, expected: RefundStatus) -> None:
    assert st.map_refund_status(raw) == (expected, True)


@pytest.mark.parametrize("raw", ALL_STATUSES)
def test_every_sdk_status_has_a_refund_row(raw: str) -> None:
    assert st.map_refund_status(raw)[1]


@pytest.mark.parametrize("raw", ["settlement_exploded", "", None, "AUTHORIZED"])
def test_unmapped_is_unknown_never_success_and_reported(
    raw: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(status_table, "on_unmapped",
                        lambda ptype, kind, value: seen.append((kind, value)))
    assert st.map_transaction_status(raw) == (PaymentStatus.UNKNOWN, False)
    assert st.map_refund_status(raw) == (RefundStatus.UNKNOWN, False)
    assert seen == [("transaction", str(raw)), ("refund", str(raw))]


# ------------------------------------------------------------------ amounts


@pytest.mark.parametrize(("minor", "currency", "text"), [
    (500, "JPY", "500"),
    (1050, "EUR", "10.50"),
    (1234, "KWD", "1.234"),
    (5, "USD", "0.05"),
    (100, "USD", "1.00"),
    (1, "BHD", "0.001"),
    (1000, "JOD", "1.000"),
    (12345, "OMR", "12.345"),
    (7, "TND", "0.007"),
    (5000, "KRW", "5000"),
    (99, "VND", "99"),
    (1, "CLP", "1"),
    (250, "ISK", "250"),
    (0, "EUR", "0.00"),
    (123456789012345678, "EUR", "1234567890123456.78"),
])
def test_amount_table_and_round_trip(minor: int, currency: str, text: str) -> None:
    assert to_decimal_string(minor, currency) == text
    assert to_minor_units(text, currency) == minor
    assert to_minor_units(Decimal(text), currency) == minor
    assert to_minor_units(text, currency.lower()) == minor


def test_exponents() -> None:
    assert [exponent(c) for c in ("JPY", "KRW", "VND", "CLP", "ISK")] == [0] * 5
    assert [exponent(c) for c in ("BHD", "JOD", "KWD", "OMR", "TND")] == [3] * 5
    assert exponent("USD") == exponent("MGA") == 2
    for unknown in ("XYZ", "XXX", "BTC"):  # no silent default: unknown codes are refused
        with pytest.raises(AmountError):
            exponent(unknown)


def test_trailing_zero_decimals_parse_exactly() -> None:
    assert to_minor_units("500.00", "JPY") == 500
    assert to_minor_units("10.5", "EUR") == 1050
    assert to_minor_units("1.2340", "KWD") == 1234


@pytest.mark.parametrize(("text", "currency"), [
    ("10.505", "EUR"), ("500.5", "JPY"), ("1.2345", "KWD"), ("-1.00", "EUR"), ("1e3", "EUR"),
    ("", "EUR"), ("abc", "EUR"), ("1,00", "EUR"),
])
def test_inexact_or_invalid_amounts_are_refused(text: str, currency: str) -> None:
    with pytest.raises(AmountError):
        to_minor_units(text, currency)


@pytest.mark.parametrize("bad", [1.5, -1, True, "100"])
def test_to_decimal_string_takes_non_negative_ints_only(bad: object) -> None:
    with pytest.raises(AmountError):
        to_decimal_string(bad, "EUR")  # type: ignore[arg-type]
