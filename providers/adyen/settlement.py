"""Adyen settlement: the Settlement details report (CSV) -> :class:`SettlementLine` records.

Adyen's report (one per payout batch; the layout its documentation publishes: "Settlement
detail report structure", docs.adyen.com/developers/reporting/settlement-detail-report/
settlement-detail-report-structure, and "Settlement details report", docs.adyen.com/
reporting/settlement-reconciliation/transaction-level/settlement-details-report) is read by
column *name* from its header line, as Adyen lets a merchant add and reorder columns (and
reports since Adyen's 2023 reporting migration append more: Booking Date, Booking Date
TimeZone, Metadata, ... -- ignored here); these must be there: Merchant Account, Psp
Reference, Merchant Reference, Creation Date, Type, Modification Reference, Gross Currency,
Gross Debit (GC), Gross Credit (GC), Net Currency, Net Debit (NC), Net Credit (NC),
Commission (NC), Markup (NC), Scheme Fees (NC), Interchange (NC), Batch Number. The
documented layout is kept as a fixture (tests/fixtures/adyen/
settlement_detail_report_documented.csv, its README says where each part comes from).

Each line after the header is one line of the report:

* amounts are unsigned decimal strings in the currency's major unit (``4.88``, ``500``,
  ``.11``: real reports write all three), the direction is the column's (Debit or
  Credit); each is converted to Adyen's minor units with Adyen's decimals and then to ISO
  minor units with :func:`providers.adyen.amounts.from_wire` (the adapter's table) --
  exactly, or :class:`MalformedSettlement`;
* ``currency`` is the Net Currency (what was paid out); ``net`` = Net Credit - Net Debit;
  ``fee`` = Commission + Markup + Scheme Fees + Interchange; ``gross`` = Gross Credit -
  Gross Debit when the gross currency is the net currency, else (a converted payment)
  ``net + fee`` in the net currency; a line without gross columns (MerchantPayout, Fee)
  has ``gross = net``;
* ``line_id`` = ``<Psp Reference>:<Modification Reference>:<Type>:<Batch Number>:<Net
  Currency>`` (a batch's MerchantPayout lines differ by currency);
* ``payout_id`` = ``<Merchant Account>:<Batch Number>`` (an Adyen batch pays one
  MerchantPayout line per currency: reconcile per payout id and currency);
* ``settled_on`` = the date of Creation Date (``YYYY-MM-DD HH:MM:SS``, in the report's
  TimeZone);
* ``payment_reference`` = Psp Reference, ``merchant_reference`` = Merchant Reference,
  ``refund_reference`` = the Modification Reference of a Refunded line (on balance-level
  lines -- Fee, MerchantPayout, InvoiceDeduction, ... -- Adyen documents that column as
  free text of up to 80 characters, e.g. a payout's bank-transfer description).

=================================================================  ====================
Type                                                               kind
=================================================================  ====================
Settled                                                            capture
Refunded                                                           refund
Chargeback, SecondChargeback                                       dispute
ChargebackReversed                                                 dispute_reversal
MerchantPayout                                                     payout
Fee, MiscCosts, PaymentCost, InvoiceDeduction                      fee
RefundedReversed, DepositCorrection, ManualCorrected, Balancetransfer,  adjustment
BankInstructionReturned, MatchedStatement, EpaPaid, PaidOut,
PaidOutReversed
=================================================================  ====================

:func:`fetch_settlement` downloads the day's report from Adyen's report URL
(``https://ca-test.adyen.com`` / ``https://ca-live.adyen.com``, or the simulator's host)
``/reports/download/MerchantAccount/<account>/settlement_detail_report_<YYYY_MM_DD>.csv``
with the ``x-api-key`` header.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal, InvalidOperation
from urllib.parse import quote, urlsplit

from providers.adyen.amounts import ADYEN_DECIMALS, from_wire
from providers.amounts import AmountError
from providers.currency import UnknownCurrency
from providers.settings import ProviderSettings
from providers.settlement import (
    MalformedSettlement,
    SettlementKind,
    SettlementLine,
    SettlementUnavailable,
    check_unique,
)

PROVIDER_TYPE = "adyen"
REQUIRED = ("Merchant Account", "Psp Reference", "Merchant Reference", "Creation Date",
            "Type", "Modification Reference", "Gross Currency", "Gross Debit (GC)",
            "Gross Credit (GC)", "Net Currency", "Net Debit (NC)", "Net Credit (NC)",
            "Commission (NC)", "Markup (NC)", "Scheme Fees (NC)", "Interchange (NC)",
            "Batch Number")
FEES = ("Commission (NC)", "Markup (NC)", "Scheme Fees (NC)", "Interchange (NC)")
KINDS: dict[str, SettlementKind] = {
    "Settled": "capture", "Refunded": "refund", "Chargeback": "dispute",
    "SecondChargeback": "dispute", "ChargebackReversed": "dispute_reversal",
    "MerchantPayout": "payout",
    "Fee": "fee", "MiscCosts": "fee", "PaymentCost": "fee", "InvoiceDeduction": "fee",
    "RefundedReversed": "adjustment", "DepositCorrection": "adjustment",
    "ManualCorrected": "adjustment", "Balancetransfer": "adjustment",
    "BankInstructionReturned": "adjustment", "MatchedStatement": "adjustment",
    "EpaPaid": "adjustment", "PaidOut": "adjustment", "PaidOutReversed": "adjustment",
}
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}) \d{2}:\d{2}:\d{2}$")
#: ``10``, ``4.88``, and ``.11`` (no leading zero: a form real reports carry)
_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)?|\.\d+)$")


class _Row:
    def __init__(self, cells: dict[str, str], number: int) -> None:
        self.cells, self.number = cells, number

    def get(self, column: str) -> str:
        return self.cells.get(column, "").strip()

    def fail(self, why: str) -> MalformedSettlement:
        return MalformedSettlement(f"Adyen settlement report line {self.number}: {why}")

    def amount(self, column: str, currency: str) -> int:
        """A major-unit decimal column -> ISO minor units of ``currency`` (0 if empty)."""
        text = self.get(column)
        if not text:
            return 0
        if not _NUMBER.match(text):
            raise self.fail(f"{column} is not an amount: {text!r}")
        try:
            decimals = ADYEN_DECIMALS[currency]
            wire = Decimal(text) * (Decimal(10) ** decimals)
            if wire != wire.to_integral_value():
                raise self.fail(f"{column} {text} has more decimals than Adyen's "
                                f"{decimals} for {currency}")
            return from_wire(int(wire), currency)
        except KeyError:
            raise self.fail(f"Adyen does not settle {currency!r}") from None
        except (AmountError, UnknownCurrency, InvalidOperation) as exc:
            raise self.fail(f"{column} {text} {currency}: {exc}") from None


def _currency(row: _Row, column: str) -> str:
    value = row.get(column)
    if not re.fullmatch(r"[A-Z]{3}", value):
        raise row.fail(f"{column} is not a currency code: {value!r}")
    return value


def _line(row: _Row) -> SettlementLine:
    type_ = row.get("Type")
    kind = KINDS.get(type_)
    if kind is None:
        raise row.fail(f"unknown Type {type_!r}")
    stamp = _STAMP.match(row.get("Creation Date"))
    if stamp is None:
        raise row.fail(f"Creation Date is not YYYY-MM-DD HH:MM:SS: "
                       f"{row.get('Creation Date')!r}")
    batch = row.get("Batch Number")
    if batch and not batch.isdigit():
        raise row.fail(f"Batch Number is not a number: {batch!r}")
    account = row.get("Merchant Account")
    if not account:
        raise row.fail("Merchant Account is empty")
    currency = _currency(row, "Net Currency")
    for column in ("Net Credit (NC)", "Net Debit (NC)"), ("Gross Credit (GC)",
                                                          "Gross Debit (GC)"):
        if row.get(column[0]) and row.get(column[1]):
            raise row.fail(f"both {column[0]} and {column[1]} are set")
    net = row.amount("Net Credit (NC)", currency) - row.amount("Net Debit (NC)", currency)
    fee = sum(row.amount(column, currency) for column in FEES)
    if row.get("Gross Credit (GC)") or row.get("Gross Debit (GC)"):
        gross_currency = _currency(row, "Gross Currency")
        if gross_currency == currency:
            gross = (row.amount("Gross Credit (GC)", currency)
                     - row.amount("Gross Debit (GC)", currency))
        else:
            gross = net + fee
    else:
        gross = net
    psp, modification = row.get("Psp Reference"), row.get("Modification Reference")
    if kind in ("capture", "refund", "dispute", "dispute_reversal") and not psp:
        raise row.fail(f"a {type_} line needs its Psp Reference")
    return SettlementLine(
        provider_type=PROVIDER_TYPE,
        line_id=f"{psp}:{modification}:{type_}:{batch}:{currency}", kind=kind,
        payment_reference=psp or None, merchant_reference=row.get("Merchant Reference") or None,
        refund_reference=(modification or None) if kind == "refund" else None,
        currency=currency, gross=gross, fee=fee, net=net,
        payout_id=f"{account}:{batch}" if batch else None, settled_on=stamp.group(1))


def parse_adyen(raw: bytes) -> list[SettlementLine]:
    """A Settlement details report (CSV bytes, UTF-8) -> lines, in its order."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedSettlement(f"Adyen settlement report is not UTF-8: {exc}") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise MalformedSettlement(f"Adyen settlement report is not CSV: {exc}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise MalformedSettlement("Adyen settlement report has no header line")
    header = [cell.strip() for cell in rows[0]]
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise MalformedSettlement(f"Adyen settlement report lacks the column(s) "
                                  f"{', '.join(missing)}")
    if len(set(header)) != len(header):
        raise MalformedSettlement("Adyen settlement report repeats a column name")
    lines = []
    for number, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line (e.g. the file's last)
        if len(cells) != len(header):
            raise MalformedSettlement(f"Adyen settlement report line {number}: "
                                      f"{len(cells)} fields, the header has {len(header)}")
        lines.append(_line(_Row(dict(zip(header, cells, strict=True)), number)))
    return check_unique(lines)


# ------------------------------------------------------------------ fetch


def report_url(settings: ProviderSettings, account: str, day: dt.date) -> str:
    """Where Adyen serves the day's report: its Customer Area host (``ca-test`` /
    ``ca-live``) for Adyen's own endpoints, else the configured host (a simulator)."""
    base = settings.base_url or "https://checkout-test.adyen.com/v71"
    parts = urlsplit(base)
    host = parts.hostname or ""
    if host.endswith("adyen.com") or host.endswith("adyenpayments.com"):
        origin = ("https://ca-live.adyen.com" if "-live" in host
                  else "https://ca-test.adyen.com")
    else:
        origin = f"{parts.scheme}://{parts.netloc}"
    name = f"settlement_detail_report_{day.strftime('%Y_%m_%d')}.csv"
    return f"{origin}/reports/download/MerchantAccount/{quote(account, safe='')}/{name}"


async def fetch_settlement(settings: ProviderSettings, day: dt.date) -> bytes:
    """Download the day's Settlement details report of the entry's merchant account."""
    import aiohttp

    from providers.adyen.declaration import DECLARATION, SANDBOX_MERCHANT_ACCOUNT

    key = DECLARATION.credentials_of(settings)["api_key"]
    account = str(settings.options.get("merchant_account", SANDBOX_MERCHANT_ACCOUNT))
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s,
                                    connect=settings.connect_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(report_url(settings, account, day),
                                   headers={"x-api-key": key}) as resp:
                body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SettlementUnavailable(f"Adyen report download failed: {exc!r}") from exc
    if resp.status != 200:
        raise SettlementUnavailable(f"Adyen report download answered {resp.status}: "
                                    f"{body[:200]!r}")
    return body


__all__ = ["KINDS", "PROVIDER_TYPE", "REQUIRED", "fetch_settlement", "parse_adyen",
           "report_url"]
