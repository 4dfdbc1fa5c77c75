"""The provider-neutral settlement record (providers/settlement.py), the declarations'
settlement hooks, and what the simulators share (providers/simulator/settlement.py: the
fee schedule, the book of movements, payouts and faults)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, get_args

import pytest

from providers.registry import DECLARATIONS
from providers.settlement import (
    SETTLEMENT_KINDS,
    MalformedSettlement,
    SettlementKind,
    SettlementLine,
    check_unique,
    parse_date,
)
from providers.simulator import settlement as stl

LINE: dict[str, Any] = {
    "provider_type": "stripe", "line_id": "txn_1", "kind": "capture",
    "payment_reference": "pi_1", "merchant_reference": "pay_1", "refund_reference": None,
    "currency": "EUR", "gross": 1000, "fee": 29, "net": 971, "payout_id": "po_1",
    "settled_on": "2026-12-03"}


def test_the_record_has_exactly_the_contract_fields() -> None:
    assert [f.name for f in dataclasses.fields(SettlementLine)] == list(LINE)
    assert SETTLEMENT_KINDS == get_args(SettlementKind) == (
        "capture", "refund", "fee", "dispute", "dispute_reversal", "payout", "adjustment")
    line = SettlementLine(**LINE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        line.gross = 1  # type: ignore[misc]
    assert SettlementLine(**LINE) == line and hash(SettlementLine(**LINE)) == hash(line)


def test_net_is_kept_as_reported_not_recomputed() -> None:
    assert SettlementLine(**{**LINE, "net": 5}).net == 5


@pytest.mark.parametrize("change", [
    {"kind": "chargeback"}, {"currency": "eur"}, {"currency": "EURO"}, {"gross": 10.0},
    {"fee": True}, {"net": "971"}, {"settled_on": "2026-12-3"}, {"settled_on": "2026-02-30"},
    {"line_id": ""},
])
def test_bad_fields_are_malformed(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedSettlement):
        SettlementLine(**{**LINE, **change})


def test_check_unique_and_parse_date() -> None:
    a = SettlementLine(**LINE)
    b = SettlementLine(**{**LINE, "line_id": "txn_2"})
    assert check_unique([a, b]) == [a, b]
    with pytest.raises(MalformedSettlement, match="twice"):
        check_unique([a, b, a])
    assert parse_date("2026-12-03") == dt.date(2026, 12, 3)
    assert issubclass(MalformedSettlement, ValueError)


def test_every_declaration_parses_settlement_and_fetches_it() -> None:
    for name in ("stripe", "braintree", "adyen"):
        decl = DECLARATIONS[name]
        assert decl.parse_settlement is not None and decl.fetch_settlement is not None, name
        with pytest.raises(MalformedSettlement):
            decl.parse_settlement(b"\x00 not a report")


@pytest.mark.parametrize(("amount", "step", "fee"), [
    (2000, 1, 58), (500, 1, 15), (12340, 1, 358), (55000, 100, 1600), (0, 1, 0),
    (17, 1, 0), (18, 1, 1), (-2000, 1, 58),
])
def test_the_fee_schedule(amount: int, step: int, fee: int) -> None:
    assert stl.FEE_BPS == 290
    assert stl.schedule_fee(amount, step) == fee
    assert stl.changed_fee(fee, step) != fee


def test_fee_step_is_the_coarser_unit() -> None:
    assert stl.fee_step(2, 2) == 1
    assert stl.fee_step(2, 0) == 100  # Stripe ISK, Adyen CLP
    assert stl.fee_step(0, 2) == 1  # Adyen IDR: wire whole units are already coarser
    assert stl.fee_step(3, None) == 1


def _book() -> stl.SettlementBook:
    return stl.SettlementBook(lambda day, cur, acct: f"{acct}:{day}:{cur}")


def _move(kind: str, ref: str, amount: int, *, day: dt.date, currency: str = "EUR",
          fee: int = 0, n: int = 0) -> stl.Movement:
    at = dt.datetime.combine(day, dt.time(12, 0, n), dt.UTC)
    return stl.Movement(line_id=f"{kind}-{ref}-{n}", alt_line_id=f"alt-{kind}-{ref}-{n}",
                        kind=kind, reference=ref, payment_id=f"p-{ref}", currency=currency,
                        account="acct", amount=amount, fee=fee, at=at)


def test_the_book_groups_a_day_into_payouts_per_currency() -> None:
    day = dt.date(2026, 12, 3)
    book = _book()
    book.record(_move("capture", "a", 2000, day=day, fee=58))
    book.record(_move("refund", "a", -500, day=day, n=1))
    book.record(_move("capture", "b", 500, day=day, currency="JPY", fee=15))
    book.record(_move("capture", "c", 700, day=day + dt.timedelta(days=1), fee=20))
    settled = book.day(day)
    assert [line.line_id for line in settled.lines] == ["capture-a-0", "refund-a-1",
                                                        "capture-b-0"]
    assert {(p.id, p.currency, p.amount) for p in settled.payouts} == {
        (f"acct:{day}:EUR", "EUR", 1442), (f"acct:{day}:JPY", "JPY", 485)}
    assert book.days() == [day, day + dt.timedelta(days=1)]
    assert [p.amount for p in book.payouts(f"acct:{day}:EUR")] == [1442]
    assert {line.line_id for line in book.lines_in_payout(f"acct:{day}:EUR")} == {
        "capture-a-0", "refund-a-1"}


def test_faults_change_the_day_as_documented() -> None:
    day = dt.date(2026, 12, 3)
    book = _book()
    for ref in ("a", "b", "c", "d"):
        book.record(_move("capture", ref, 2000, day=day, fee=58))
    book.record(_move("refund", "b", -700, day=day, n=1))
    with pytest.raises(stl.SettlementRefused) as unknown:
        book.add_fault(stl.SettlementFault("wrong_payout", "zz"), known=False)
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_reference")
    with pytest.raises(stl.SettlementRefused) as nothing:
        book.add_fault(stl.SettlementFault("double_refund", "a"), known=True)
    assert (nothing.value.status, nothing.value.code) == (409, "not_refunded")
    for kind, ref in (("unsettled_capture", "a"), ("double_refund", "b"),
                      ("fee_changed", "c"), ("wrong_payout", "d")):
        answer = book.add_fault(stl.SettlementFault(kind, ref), known=True)
        assert answer["faults"] == [kind] and answer["days"] == [day.isoformat()]
    settled = book.day(day)
    ids = [line.line_id for line in settled.lines]
    assert "capture-a-0" not in ids
    assert ids.count("refund-b-1") == 1 and "alt-refund-b-1" in ids
    assert next(x for x in settled.lines if x.line_id == "capture-c-0").fee == 116
    moved = next(x for x in settled.lines if x.line_id == "capture-d-0")
    assert moved.payout_id == f"acct:{day + dt.timedelta(days=1)}:EUR"
    # the payout pays what the day shows, the moved capture included
    [payout] = settled.payouts
    assert payout.amount == (2000 - 58) + (2000 - 116) + (2000 - 58) - 700 - 700
    in_payout = sum(x.net for x in settled.lines if x.payout_id == payout.id)
    assert payout.amount - in_payout == moved.net


@pytest.mark.parametrize(("body", "code"), [
    ([], "invalid_json"), ({"kind": "x", "reference": "r"}, "invalid_kind"),
    ({"kind": "fee_changed"}, "invalid_reference"),
    ({"kind": "fee_changed", "reference": 5}, "invalid_reference"),
    ({"kind": "fee_changed", "reference": "r", "amount": 1}, "unknown_parameter"),
])
def test_fault_requests_are_checked(body: Any, code: str) -> None:
    with pytest.raises(stl.SettlementRefused) as refused:
        stl.parse_fault(body)
    assert (refused.value.status, refused.value.code) == (400, code)


def test_report_dates_are_checked() -> None:
    assert stl.parse_day("2026-12-03") == dt.date(2026, 12, 3)
    for bad in (None, "", "2026-12-32", "03.12.2026"):
        with pytest.raises(stl.SettlementRefused):
            stl.parse_day(bad)
