"""The Stripe simulator's balance transactions and payouts (spec3 ``balance_transaction``,
``payout``; ``GET /v1/balance_transactions``).

Each movement of :class:`providers.simulator.settlement.SettlementBook` is one balance
transaction, as Stripe creates them for card PaymentIntents:

=================  ==============  ===================  =========================
movement           ``type``        reporting_category   ``source``
=================  ==============  ===================  =========================
capture            charge          charge               the charge ``ch_...``
refund             refund          refund               the refund ``re_...``
dispute opened     adjustment      dispute              the dispute ``dp_...``
dispute won        adjustment      dispute_reversal     the dispute ``dp_...``
payout             payout          payout               the payout ``po_...``
=================  ==============  ===================  =========================

``amount`` / ``fee`` / ``net`` in Stripe's own units (``net = amount - fee``), ``fee``
from the schedule in :mod:`providers.simulator.settlement` with one ``stripe_fee`` in
``fee_details``; funds are ``available`` at once (``available_on = created``). The day's
automatic payout (``automatic: true``) per currency is created at 23:59:59 UTC; its
balance transaction is negative. Stripe's balance transaction has no payout field: the
transactions a payout paid out are listed with ``GET /v1/balance_transactions?payout=``
(the payout's own transaction included).

``GET /_sim/stripe/settlement?date=`` answers the document
:func:`providers.stripe.settlement.parse_stripe` reads::

    {"date": "YYYY-MM-DD",
     "balance_transactions": <GET /v1/balance_transactions?created[gte]=<day>&
                              created[lt]=<next day>&expand[]=data.source, every page>,
     "payouts": {"po_...": <GET /v1/balance_transactions?payout=po_..., every page>}}

``payouts`` holds each payout of the day and each payout one of the day's transactions
was paid out in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from providers.simulator.settlement import DayLine, Payout, SettlementBook, stable_id

LIST_URL = "/v1/balance_transactions"
ACCOUNT = "acct_sandbox"
TYPES = {"capture": ("charge", "charge"), "refund": ("refund", "refund"),
         "dispute": ("adjustment", "dispute"),
         "dispute_reversal": ("adjustment", "dispute_reversal")}


def payout_id(day: dt.date, currency: str, account: str) -> str:
    return "po_" + stable_id("stripe-payout", day.isoformat(), currency, account)


def payout_transaction_id(pid: str) -> str:
    return "txn_" + stable_id("stripe-payout-txn", pid)


def payout_object(payout: Payout) -> dict[str, Any]:
    """fixtures3 ``payout`` fields, an automatic payout to the account's bank."""
    at = int(payout.at.timestamp())
    return {
        "id": payout.id, "object": "payout", "amount": payout.amount,
        "application_fee": None, "application_fee_amount": None, "arrival_date": at,
        "automatic": True, "balance_transaction": payout_transaction_id(payout.id),
        "created": at, "currency": payout.currency.lower(), "description": "STRIPE PAYOUT",
        "destination": "ba_sandbox", "failure_balance_transaction": None,
        "failure_code": None, "failure_message": None, "livemode": False, "metadata": {},
        "method": "standard", "original_payout": None, "reconciliation_status": "completed",
        "reversed_by": None, "source_type": "card", "statement_descriptor": None,
        "status": "paid", "type": "bank_account",
    }


@dataclass(frozen=True)
class Entry:
    """One balance transaction: its object (source unexpanded), the expanded source, and
    the payout it was paid out in (None for a payout's own)."""

    order: tuple[int, int]
    body: dict[str, Any]
    expanded: Callable[[], dict[str, Any] | None]
    payout_id: str | None


def _line_entry(line: DayLine, seq: int, source_object: Callable[[DayLine],
                dict[str, Any] | None]) -> Entry:
    mv = line.movement
    created = int(mv.at.timestamp())
    type_, category = TYPES[mv.kind]
    currency = mv.currency.lower()
    descriptions = {"dispute": f"Chargeback withdrawal for {mv.data.get('charge')}",
                    "dispute_reversal": f"Chargeback reversal for {mv.data.get('charge')}"}
    body = {
        "id": line.line_id, "object": "balance_transaction", "amount": mv.amount,
        "available_on": created, "created": created, "currency": currency,
        "description": descriptions.get(mv.kind), "exchange_rate": None, "fee": line.fee,
        "fee_details": ([{"amount": line.fee, "application": None, "currency": currency,
                          "description": "Stripe processing fees", "type": "stripe_fee"}]
                        if line.fee else []),
        "net": line.net, "reporting_category": category, "source": mv.data["source"],
        "status": "available", "type": type_, "balance_type": "payments",
    }
    return Entry((created, seq), body, lambda: source_object(line), line.payout_id)


def _payout_entry(payout: Payout, seq: int) -> Entry:
    created = int(payout.at.timestamp())
    body = {
        "id": payout_transaction_id(payout.id), "object": "balance_transaction",
        "amount": -payout.amount, "available_on": created, "created": created,
        "currency": payout.currency.lower(), "description": "STRIPE PAYOUT",
        "exchange_rate": None, "fee": 0, "fee_details": [], "net": -payout.amount,
        "reporting_category": "payout", "source": payout.id, "status": "available",
        "type": "payout", "balance_type": "payments",
    }
    return Entry((created, seq), body, lambda: payout_object(payout), None)


def entries(book: SettlementBook, source_object: Callable[[DayLine], dict[str, Any] | None]
            ) -> list[Entry]:
    """Every balance transaction, newest first (Stripe's list order)."""
    out: list[Entry] = []
    seq = 0
    for day in book.days():
        settled = book.day(day)
        for line in settled.lines:
            out.append(_line_entry(line, seq, source_object))
            seq += 1
        for payout in settled.payouts:
            out.append(_payout_entry(payout, seq))
            seq += 1
    out.sort(key=lambda e: e.order, reverse=True)
    return out


def render(entry: Entry, expand: bool) -> dict[str, Any]:
    body = dict(entry.body)
    if expand:
        body["source"] = entry.expanded() or body["source"]
    return body


def list_object(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": LIST_URL}


def in_payout(items: list[Entry], pid: str) -> list[Entry]:
    return [e for e in items if e.payout_id == pid
            or (e.body["type"] == "payout" and e.body["source"] == pid)]


def day_document(book: SettlementBook, day: dt.date,
                 source_object: Callable[[DayLine], dict[str, Any] | None]) -> dict[str, Any]:
    items = entries(book, source_object)
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    end = start + 86400
    of_day = [e for e in items if start <= e.body["created"] < end]
    payouts = {e.body["source"] for e in of_day if e.body["type"] == "payout"}
    payouts |= {e.payout_id for e in of_day if e.payout_id is not None}
    return {"date": day.isoformat(),
            "balance_transactions": list_object([render(e, True) for e in of_day]),
            "payouts": {pid: list_object([render(e, False) for e in in_payout(items, pid)])
                        for pid in sorted(payouts)}}
