"""Settlement data of the simulators (SPEC sections 15, 16): what the three share.

Each simulator records a :class:`Movement` whenever money moves at its provider -- a
capture, a refund, a dispute opened (the disputed amount debited), a dispute won (that
amount credited back) -- in its provider's wire units, with the time it happened. A
:class:`SettlementBook` turns one UTC day of movements into that day's lines and payouts;
each simulator renders them in its provider's real format (Stripe balance transactions,
Adyen's Settlement details report CSV, Braintree's settlement batch summary, transactions
and disbursements), served by ``GET /_sim/{provider}/settlement?date=YYYY-MM-DD``.

Fee schedule (the simulators' own, documented here and nowhere else):

* a capture costs :data:`FEE_BPS` basis points (2.9 %) of the captured amount, rounded
  half up to the provider's wire unit -- or to the ISO 4217 minor unit where that is
  coarser (Stripe ISK, Adyen IDR/CVE), so that every fee is a whole ISO amount;
* refunds, disputes, dispute reversals and payouts cost nothing.

Payouts: every UTC day, one payout per (currency, merchant account) pays out the net of
that day's lines (captures minus fees, refunds, disputes, reversals), dated the end of the
day; its id is derived from the day, currency and account, so it is the same each time
the report is read.

``POST /_sim/{provider}/settlement_faults`` ``{"kind", "reference"}`` makes the reports
wrong for that gateway payment; the payouts pay out what the report shows, except under
``wrong_payout``:

=================  ===================================================================
unsettled_capture  its capture line is missing (and not paid out)
double_refund      each of its refund lines appears twice, under two line ids (and is
                   debited twice)
fee_changed        its capture's fee is not the schedule's (twice the schedule's, at
                   least one unit more)
wrong_payout       its capture line is put into another payout (the next day's payout of
                   that currency and account) while the payouts' amounts stay as they
                   were: the day's payout no longer matches its lines
=================  ===================================================================

Refusals (the control API renders them as ``{"error": {...}}``):

=====  ==================  ============================================================
400    invalid_json        the body is not a JSON object
400    unknown_parameter   a key other than kind / reference
400    invalid_kind        ``kind`` not one of the four above
400    invalid_reference   ``reference`` missing or not a non-empty string
400    invalid_date        ``GET .../settlement``: ``date`` missing or not YYYY-MM-DD
404    unknown_reference   no charge for that gateway payment
409    not_captured        unsettled_capture / fee_changed / wrong_payout on a payment
                           with no capture
409    not_refunded        double_refund on a payment with no refund
409    fees_not_reported   fee_changed at a provider whose settlement data has no
                           per-transaction fee (Braintree), for any payment
=====  ==================  ============================================================
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("unsettled_capture", "double_refund", "fee_changed", "wrong_payout")
#: Capture fee, in basis points of the captured amount.
FEE_BPS = 290
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SettlementRefused(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(frozen=True)
class SettlementFault:
    kind: str
    reference: str


def parse_fault(body: Any) -> SettlementFault:
    if not isinstance(body, dict):
        raise SettlementRefused(400, "invalid_json", "body must be a JSON object")
    unknown = sorted(set(body) - {"kind", "reference"})
    if unknown:
        raise SettlementRefused(400, "unknown_parameter", f"unknown key {unknown[0]!r}",
                                unknown[0])
    kind = body.get("kind")
    if kind not in FAULT_KINDS:
        raise SettlementRefused(400, "invalid_kind",
                                f"kind must be one of {', '.join(FAULT_KINDS)}", "kind")
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference:
        raise SettlementRefused(400, "invalid_reference",
                                "reference (the gateway payment id) is required", "reference")
    return SettlementFault(str(kind), reference)


def parse_day(text: str | None) -> dt.date:
    """The ``date`` query parameter (a UTC day)."""
    if text is None or not _DATE.match(text):
        raise SettlementRefused(400, "invalid_date", "query parameter date=YYYY-MM-DD is "
                                "required", "date")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise SettlementRefused(400, "invalid_date", f"{text!r} is not a calendar date",
                                "date") from None


def schedule_fee(amount: int, step: int = 1) -> int:
    """The schedule's fee for capturing ``amount`` wire units: :data:`FEE_BPS` of it,
    half up, in whole multiples of ``step`` wire units."""
    units = abs(amount) // step
    return (units * FEE_BPS + 5000) // 10000 * step


def changed_fee(fee: int, step: int) -> int:
    """``fee_changed``: not the schedule's."""
    return fee + max(fee, step)


def fee_step(wire_exponent: int, iso_exponent: int | None) -> int:
    """Wire units of the smallest fee both the wire and ISO 4217 can carry."""
    if iso_exponent is None or iso_exponent >= wire_exponent:
        return 1
    return 10 ** (wire_exponent - iso_exponent)


def stable_id(*parts: object, length: int = 24) -> str:
    """A deterministic id from ``parts`` (letters and digits)."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:length]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def end_of_day(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(23, 59, 59), dt.UTC)


@dataclass
class Movement:
    """Money that moved at the provider, in its wire units, signed as it moves the
    merchant's balance (capture, dispute_reversal positive; refund, dispute negative)."""

    line_id: str
    kind: str  # capture | refund | dispute | dispute_reversal
    reference: str | None  # the gateway payment id
    payment_id: str  # the provider's payment id
    currency: str  # upper case
    account: str  # the merchant account its payout belongs to
    amount: int
    fee: int = 0
    fee_step: int = 1
    refund_id: str | None = None
    #: the line id of the copy a ``double_refund`` fault adds
    alt_line_id: str = ""
    at: dt.datetime = field(default_factory=utc_now)
    #: provider specifics the renderer needs (object ids, card brand, ...)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def day(self) -> dt.date:
        return self.at.astimezone(dt.UTC).date()


@dataclass(frozen=True)
class DayLine:
    movement: Movement
    line_id: str
    fee: int
    payout_id: str

    @property
    def net(self) -> int:
        return self.movement.amount - self.fee


@dataclass(frozen=True)
class Payout:
    id: str
    day: dt.date
    currency: str
    account: str
    #: what was paid out (positive when money went to the merchant's bank), wire units
    amount: int

    @property
    def at(self) -> dt.datetime:
        return end_of_day(self.day)


@dataclass(frozen=True)
class Day:
    day: dt.date
    lines: list[DayLine]
    payouts: list[Payout]


class SettlementBook:
    """A simulator's movements and settlement faults. ``payout_id(day, currency,
    account)`` names a payout in the provider's style (deterministic)."""

    def __init__(self, payout_id: Callable[[dt.date, str, str], str]) -> None:
        self._payout_id = payout_id
        self.movements: list[Movement] = []
        self.faults: dict[str, set[str]] = {}
        #: payout id -> (day, currency, account), for every id handed out
        self.payout_keys: dict[str, tuple[dt.date, str, str]] = {}

    def clear(self) -> None:
        self.movements.clear()
        self.faults.clear()
        self.payout_keys.clear()

    def record(self, movement: Movement) -> Movement:
        self.movements.append(movement)
        return movement

    def of(self, reference: str, kind: str) -> list[Movement]:
        return [m for m in self.movements if m.reference == reference and m.kind == kind]

    def add_fault(self, fault: SettlementFault, *, known: bool) -> dict[str, Any]:
        """Apply ``fault`` (``known``: the simulator holds a charge for the reference)."""
        ref = fault.reference
        if not known:
            raise SettlementRefused(404, "unknown_reference",
                                    f"no charge for gateway payment {ref!r}", "reference")
        needed = "refund" if fault.kind == "double_refund" else "capture"
        if not self.of(ref, needed):
            code = "not_refunded" if needed == "refund" else "not_captured"
            raise SettlementRefused(409, code, f"gateway payment {ref!r} has no {needed} "
                                    f"for a {fault.kind} fault", "reference")
        self.faults.setdefault(ref, set()).add(fault.kind)
        return {"fault": {"kind": fault.kind, "reference": ref},
                "faults": sorted(self.faults[ref]),
                "days": sorted({m.day.isoformat() for m in self.movements
                                if m.reference == ref})}

    def payout_id(self, day: dt.date, currency: str, account: str) -> str:
        pid = self._payout_id(day, currency, account)
        self.payout_keys[pid] = (day, currency, account)
        return pid

    def days(self) -> list[dt.date]:
        return sorted({m.day for m in self.movements})

    def day(self, day: dt.date) -> Day:
        lines: list[DayLine] = []
        for mv in self.movements:
            if mv.day != day:
                continue
            faults = self.faults.get(mv.reference or "", set())
            if mv.kind == "capture" and "unsettled_capture" in faults:
                continue
            fee = mv.fee
            if mv.kind == "capture" and "fee_changed" in faults:
                fee = changed_fee(mv.fee, mv.fee_step)
            pid = self.payout_id(day, mv.currency, mv.account)
            lines.append(DayLine(mv, mv.line_id, fee, pid))
            if mv.kind == "refund" and "double_refund" in faults:
                lines.append(DayLine(mv, mv.alt_line_id, fee, pid))
        totals: dict[tuple[str, str, str], int] = {}
        for line in lines:
            key = (line.payout_id, line.movement.currency, line.movement.account)
            totals[key] = totals.get(key, 0) + line.net
        payouts = [Payout(pid, day, currency, account, total)
                   for (pid, currency, account), total in totals.items()]
        moved: list[DayLine] = []
        for line in lines:
            mv = line.movement
            if mv.kind == "capture" and "wrong_payout" in self.faults.get(mv.reference or "",
                                                                         set()):
                other = self.payout_id(day + dt.timedelta(days=1), mv.currency, mv.account)
                line = DayLine(mv, line.line_id, line.fee, other)
            moved.append(line)
        return Day(day, moved, payouts)

    def lines_in_payout(self, payout_id: str) -> list[DayLine]:
        """Every line (of any day) put into ``payout_id``."""
        out: list[DayLine] = []
        for day in self.days():
            out.extend(line for line in self.day(day).lines if line.payout_id == payout_id)
        return out

    def payouts(self, payout_id: str) -> list[Payout]:
        """The payout(s) of that id (one per currency where an id spans currencies)."""
        key = self.payout_keys.get(payout_id)
        if key is None:
            return []
        return [p for p in self.day(key[0]).payouts if p.id == payout_id]


def grouped(items: Iterable[DayLine]) -> dict[str, list[DayLine]]:
    out: dict[str, list[DayLine]] = {}
    for line in items:
        out.setdefault(line.payout_id, []).append(line)
    return out


__all__ = ["FAULT_KINDS", "FEE_BPS", "Day", "DayLine", "Movement", "Payout",
           "SettlementBook", "SettlementFault", "SettlementRefused", "changed_fee",
           "end_of_day", "fee_step", "grouped", "parse_day", "parse_fault", "schedule_fee",
           "stable_id", "utc_now"]
