"""The Braintree simulator's settlement data: the settlement batch summary the SDK's
``settlement_batch_summary.generate(date)`` reads, the settled transactions of a batch
(``settlement_batch_id``, ``disbursement_details``) and the day's disputes.

A transaction settles in the batch of its UTC day and merchant account
(``settlement_batch_id = <YYYY-MM-DD>_<merchant account>``) and is disbursed the same day
(``disbursement_details.disbursement_date``). Braintree reports no fee per transaction
(its API has none; fees are billed on the statement), so the simulator's fee schedule
does not apply here and disbursements pay out the batch in full.

Summary records (Braintree's documented shape: ``kind``, ``card_type``,
``merchant_account_id``, ``count``, ``amount_settled``, all strings) group the day's
settled sales and credits by merchant account, kind and card type.

``GET /_sim/braintree/settlement?date=`` answers one XML document (Braintree's XML
dialect, read by the SDK's ``XmlUtil``), the one :func:`providers.braintree.settlement.
parse_braintree` reads::

    <braintree-settlement-report>
      <settlement-date type="date">YYYY-MM-DD</settlement-date>
      <settlement-batch-summary><records type="array"><record>...</record>...</records>
      </settlement-batch-summary>                 (the generate() answer)
      <transactions type="array"><transaction>...</transaction>...</transactions>
                                                  (the batch's settled sales and credits)
      <disputes type="array"><dispute>...</dispute>...</disputes>
                                                  (disputes opened or won that day)
    </braintree-settlement-report>
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from providers.braintree import sim_model as m
from providers.braintree.xml import Array, encode
from providers.simulator.settlement import Day, DayLine

ROOT = "braintree_settlement_report"


def payout_id(day: dt.date, currency: str, account: str) -> str:
    return f"{account}:{day.isoformat()}"


def disbursed_on(line: DayLine) -> dt.date:
    return dt.date.fromisoformat(line.payout_id.rsplit(":", 1)[1])


def transaction_xml(line: DayLine, txn: m.Transaction) -> dict[str, Any]:
    """The settled transaction as this day's batch shows it (a ``double_refund`` copy
    under its own id; ``wrong_payout``: another disbursement date)."""
    body = txn.to_xml()
    body["id"] = line.line_id
    body["disbursement_details"] = txn.disbursement_details(disbursed_on(line))
    return body


def records(lines: Iterable[DayLine], transactions: Callable[[DayLine], m.Transaction]
            ) -> list[dict[str, str]]:
    totals: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, ""])
    for line in lines:
        txn = transactions(line)
        card = txn.card.brand.title() if txn.card is not None else "Unknown"
        entry = totals[(txn.merchant_account_id, txn.type, card)]
        entry[0] += 1
        entry[1] += abs(line.movement.amount)
        entry[2] = txn.currency
    return [{"card_type": card, "count": str(count), "merchant_account_id": account,
             "kind": kind, "amount_settled": m.decimal_string(amount, currency)}
            for (account, kind, card), (count, amount, currency) in sorted(totals.items())]


def summary_xml(day: Day, transactions: Callable[[DayLine], m.Transaction]) -> bytes:
    return encode("settlement_batch_summary", {
        "records": Array("record", records(day.lines, transactions))})


def disputes_of(day: dt.date, disputes: Iterable[m.Dispute]) -> list[m.Dispute]:
    """Disputes opened on ``day`` or won on it."""
    return [d for d in disputes
            if d.created_at.date() == day
            or any(status == "won" and at.date() == day for status, at in d.history)]


def document(day: Day, transactions: Callable[[DayLine], m.Transaction],
             disputes: Iterable[m.Dispute]) -> bytes:
    return encode(ROOT, {
        "settlement_date": day.day,
        "settlement_batch_summary": {
            "records": Array("record", records(day.lines, transactions))},
        "transactions": Array("transaction", [transaction_xml(line, transactions(line))
                                              for line in day.lines]),
        "disputes": Array("dispute", [d.to_xml() for d in disputes_of(day.day, disputes)]),
    })
