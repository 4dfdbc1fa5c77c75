"""The Adyen simulator's Settlement details report (CSV, Adyen's published column layout).

One report per UTC day: a header line with Adyen's 30 standard columns (Company Account
... Batch Number, Reserved4..Reserved10) in Adyen's documented order ("Settlement detail
report structure",
https://docs.adyen.com/developers/reporting/settlement-detail-report/settlement-detail-report-structure;
Adyen's example lines on
https://docs.adyen.com/reporting/settlement-reconciliation/transaction-level/settlement-details-report
have those 30 fields; a real report, with the columns Adyen appended since 2023 after them:
wikimedia/wikimedia-fundraising-SmashPig
PaymentProviders/Adyen/Tests/Data/settlement_detail_report_payment_cost.csv @ ecf7e662; the
header of tests/fixtures/adyen/settlement_detail_report_documented.csv, which a test holds
this one to), then one line per
movement of the day and one ``MerchantPayout`` line per (merchant account, currency) -- the
payout of the day's batch, its amount in Net Debit (NC) as in Adyen's reports (a negative
payout, money the merchant owes, in Net Credit (NC): the simulator's choice, undocumented):

=================  ==================  =========================  ========================
movement           Type                Modification Reference     amounts
=================  ==================  =========================  ========================
capture            Settled             the capture's pspReference Gross/Net Credit,
                                                                  Commission (NC) = fee
refund             Refunded            the refund's pspReference  Gross/Net Debit
chargeback         Chargeback          the dispute's pspReference Gross/Net Debit
chargeback won     ChargebackReversed  the dispute's pspReference Gross/Net Credit
payout             MerchantPayout      (empty)                    Net Debit (NC)
=================  ==================  =========================  ========================

Amounts are decimal strings in the currency's major unit with Adyen's own decimals
(:func:`providers.adyen.sim_model.adyen_decimals`, as ``amount.value`` counts them);
``Exchange Rate`` is 1 (settled in the payment currency); ``Creation Date`` is
``YYYY-MM-DD HH:MM:SS`` in ``TimeZone`` UTC. The batch number of a day is its count of days
since 2020-01-01 (plus one): batches close daily, and their numbers follow each other.
A line's payout is its batch: ``<merchant account>:<batch number>``.

Served by ``GET /_sim/adyen/settlement?date=`` and, as Adyen's report download URL,
``GET /reports/download/MerchantAccount/{account}/settlement_detail_report_batch_{n}.csv``
or ``.../settlement_detail_report_{YYYY_MM_DD}.csv`` (Adyen names reports by batch; a
date in the file name is an option Adyen's support sets up, its exact form is the
simulator's). The download takes the ``x-api-key`` header (a report user's API key).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

from providers.simulator.settlement import Day, DayLine, Payout

COMPANY_ACCOUNT = "SandboxCompany"
BATCH_EPOCH = dt.date(2020, 1, 1)
COLUMNS = (
    "Company Account", "Merchant Account", "Psp Reference", "Merchant Reference",
    "Payment Method", "Creation Date", "TimeZone", "Type", "Modification Reference",
    "Gross Currency", "Gross Debit (GC)", "Gross Credit (GC)", "Exchange Rate", "Net Currency",
    "Net Debit (NC)", "Net Credit (NC)", "Commission (NC)", "Markup (NC)", "Scheme Fees (NC)",
    "Interchange (NC)", "Payment Method Variant", "Modification Merchant Reference",
    "Batch Number", "Reserved4", "Reserved5", "Reserved6", "Reserved7", "Reserved8",
    "Reserved9", "Reserved10",
)
TYPES = {"capture": "Settled", "refund": "Refunded", "dispute": "Chargeback",
         "dispute_reversal": "ChargebackReversed"}
VARIANTS = {"visa": "visaclassic", "mc": "mccredit", "mastercard": "mccredit",
            "amex": "amex"}


def batch_number(day: dt.date) -> int:
    return (day - BATCH_EPOCH).days + 1


def payout_id(day: dt.date, currency: str, account: str) -> str:
    return f"{account}:{batch_number(day)}"


def batch_of(pid: str) -> str:
    return pid.rsplit(":", 1)[1]


def money(value: int, decimals: int) -> str:
    """``value`` (Adyen's minor units) as a major-unit decimal string."""
    if value == 0:
        return ""
    return str((Decimal(value) / (Decimal(10) ** decimals)).quantize(
        Decimal(1) / (Decimal(10) ** decimals)))


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _line_row(line: DayLine, decimals: int) -> dict[str, str]:
    mv = line.movement
    amount = mv.amount
    brand = str(mv.data.get("brand", ""))
    credit = amount > 0
    row = {
        "Company Account": COMPANY_ACCOUNT, "Merchant Account": mv.account,
        "Psp Reference": mv.payment_id, "Merchant Reference": mv.reference or "",
        "Payment Method": brand, "Creation Date": _stamp(mv.at), "TimeZone": "UTC",
        "Type": TYPES[mv.kind], "Modification Reference": line.line_id,
        "Gross Currency": mv.currency, "Exchange Rate": "1", "Net Currency": mv.currency,
        "Gross Credit (GC)" if credit else "Gross Debit (GC)": money(abs(amount), decimals),
        "Net Credit (NC)" if line.net > 0 else "Net Debit (NC)": money(abs(line.net),
                                                                       decimals),
        "Commission (NC)": money(line.fee, decimals),
        "Payment Method Variant": VARIANTS.get(brand, brand),
        "Modification Merchant Reference": str(mv.data.get("modification_reference") or ""),
        "Batch Number": batch_of(line.payout_id),
    }
    return row


def _payout_row(payout: Payout, decimals: int) -> dict[str, str]:
    column = "Net Debit (NC)" if payout.amount >= 0 else "Net Credit (NC)"
    return {
        "Company Account": COMPANY_ACCOUNT, "Merchant Account": payout.account,
        "Creation Date": _stamp(payout.at), "TimeZone": "UTC", "Type": "MerchantPayout",
        "Gross Currency": payout.currency, "Net Currency": payout.currency,
        column: money(abs(payout.amount), decimals) or money(0, decimals) or "0",
        "Batch Number": batch_of(payout.id),
    }


def render(day: Day, decimals: dict[str, int], account: str | None = None) -> bytes:
    """The day's report (``account``: only that merchant account's lines)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for line in day.lines:
        if account is None or line.movement.account == account:
            writer.writerow(_line_row(line, decimals[line.movement.currency]))
    for payout in day.payouts:
        if account is None or payout.account == account:
            writer.writerow(_payout_row(payout, decimals[payout.currency]))
    return out.getvalue().encode()
