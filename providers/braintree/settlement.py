"""Braintree settlement: one day's settlement batch -> :class:`SettlementLine` records.

The report is one XML document in Braintree's XML dialect, read with the SDK's own
``braintree.util.xml_util.XmlUtil`` (what :func:`fetch_settlement` assembles from the
API's answers and what the simulator's ``GET /_sim/braintree/settlement?date=``
serves)::

    <braintree-settlement-report>
      <settlement-date type="date">YYYY-MM-DD</settlement-date>
      <settlement-batch-summary><records type="array">...</records></settlement-batch-summary>
      <transactions type="array"><transaction>...</transaction>...</transactions>
      <disputes type="array"><dispute>...</dispute>...</disputes>
    </braintree-settlement-report>

* ``settlement-batch-summary``: the answer of ``POST /merchants/{id}/settlement_batch_summary``
  (the SDK's ``settlement_batch_summary.generate(date)``): records of ``kind`` (sale /
  credit), ``card_type``, ``merchant_account_id``, ``count``, ``amount_settled``;
* ``transactions``: the batch's settled transactions as the transaction search answers
  them (criterion ``settlement_batch_id`` starting with ``<date>_``): each a line --
  ``sale`` a capture (positive), ``credit`` a refund (negative), in
  ``disbursement_details.settlement_amount`` / ``settlement_currency_iso_code`` when
  present (else ``amount`` / ``currency_iso_code``), converted with
  :func:`providers.braintree.amounts.to_minor_units` (the adapter's); ``line_id`` the
  transaction id, ``payment_reference`` the sale's id (a credit's
  ``refunded_transaction_id``), ``merchant_reference`` its ``order_id``, ``payout_id``
  ``<merchant account>:<disbursement date>``, ``settled_on`` the date of its
  ``settlement_batch_id``. Braintree's API reports no fee per transaction: ``fee`` is 0;
* one ``payout`` line per merchant account of the summary: the batch's disbursement,
  ``gross = net = -(sales - credits)`` as ``amount_settled`` totals them, ``line_id`` and
  ``payout_id`` ``<merchant account>:<settlement date>``, in the currency of that
  account's transactions;
* ``disputes`` (optional): a dispute received that day is a ``dispute`` line
  (``-amount_disputed``, line id the dispute id), one won that day (its ``status_history``)
  a ``dispute_reversal`` line (``+amount_won``, line id ``<id>:won``); a dispute is not a
  transaction, so it names no disbursement (``payout_id`` None).

:func:`fetch_settlement` (the SDK, in a thread) reads the summary with
``settlement_batch_summary.generate``, the transactions with the transaction search and
the disputes with the dispute search (``effective_date`` the day: opened or moved that
day); the parser keeps the disputes received or won that day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

from providers.amounts import AmountError
from providers.braintree.amounts import to_minor_units
from providers.settings import ProviderSettings
from providers.settlement import (
    MalformedSettlement,
    SettlementLine,
    SettlementUnavailable,
    check_unique,
)

PROVIDER_TYPE = "braintree"
ROOT = "braintree_settlement_report"
SETTLED = frozenset({"settling", "settled", "settlement_confirmed"})
_AMOUNT = re.compile(r"^-?\d+(?:\.\d+)?$")


def _date(value: Any, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise MalformedSettlement(f"{what} is not a date: {value!r}")


def _list(value: Any, what: str) -> list[Any]:
    if value in (None, ""):
        return []
    if isinstance(value, dict):  # one repeated element without type="array"
        return [value]
    if not isinstance(value, list):
        raise MalformedSettlement(f"{what} must be a list")
    return value


def _text(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedSettlement(f"{what}: {key} is missing")
    return value.strip()


def _currency(obj: dict[str, Any], key: str, what: str) -> str:
    value = _text(obj, key, what)
    if not re.fullmatch(r"[A-Z]{3}", value):
        raise MalformedSettlement(f"{what}: {key} is not a currency code: {value!r}")
    return value


def _minor(text: str, currency: str, what: str) -> int:
    if not _AMOUNT.match(text.strip()):
        raise MalformedSettlement(f"{what}: {text!r} is not an amount")
    negative = text.strip().startswith("-")
    try:
        value = to_minor_units(text.strip().lstrip("-"), currency)
    except AmountError as exc:
        raise MalformedSettlement(f"{what}: {exc}") from None
    return -value if negative else value


def _transaction_line(txn: Any, day: dt.date) -> tuple[SettlementLine, str, str]:
    """(line, merchant account, currency)."""
    if not isinstance(txn, dict):
        raise MalformedSettlement("a transaction must be an element")
    txn_id = _text(txn, "id", "transaction")
    what = f"transaction {txn_id!r}"
    type_ = txn.get("type")
    if type_ not in ("sale", "credit"):
        raise MalformedSettlement(f"{what}: type {type_!r} is not sale or credit")
    if txn.get("status") not in SETTLED:
        raise MalformedSettlement(f"{what}: status {txn.get('status')!r} is not settled")
    account = _text(txn, "merchant_account_id", what)
    details = txn.get("disbursement_details")
    details = details if isinstance(details, dict) else {}
    if isinstance(details.get("settlement_amount"), str) and details["settlement_amount"]:
        currency = _currency(details, "settlement_currency_iso_code", what)
        amount = _minor(details["settlement_amount"], currency, what)
    else:
        currency = _currency(txn, "currency_iso_code", what)
        amount = _minor(_text(txn, "amount", what), currency, what)
    disbursed = details.get("disbursement_date")
    payout = (f"{account}:{_date(disbursed, what + ' disbursement_date').isoformat()}"
              if disbursed not in (None, "") else None)
    batch = txn.get("settlement_batch_id")
    settled_on = (_date(batch.split("_", 1)[0], what + " settlement_batch_id")
                  if isinstance(batch, str) and batch else day)
    sale = type_ == "sale"
    order = txn.get("order_id")
    line = SettlementLine(
        provider_type=PROVIDER_TYPE, line_id=txn_id, kind="capture" if sale else "refund",
        payment_reference=txn_id if sale else (txn.get("refunded_transaction_id") or None),
        merchant_reference=order if isinstance(order, str) and order else None,
        refund_reference=None if sale else txn_id, currency=currency,
        gross=amount if sale else -amount, fee=0, net=amount if sale else -amount,
        payout_id=payout, settled_on=settled_on.isoformat())
    return line, account, currency


def _dispute_lines(dispute: Any, day: dt.date) -> list[SettlementLine]:
    if not isinstance(dispute, dict):
        raise MalformedSettlement("a dispute must be an element")
    dispute_id = _text(dispute, "id", "dispute")
    what = f"dispute {dispute_id!r}"
    currency = _currency(dispute, "currency_iso_code", what)
    subject = dispute.get("transaction")
    txn: dict[str, Any] = subject if isinstance(subject, dict) else {}
    payment = txn.get("id") or None
    order = txn.get("order_id") or None
    out = []

    def line(line_id: str, kind: Any, amount: int) -> SettlementLine:
        return SettlementLine(
            provider_type=PROVIDER_TYPE, line_id=line_id, kind=kind,
            payment_reference=payment, merchant_reference=order, refund_reference=None,
            currency=currency, gross=amount, fee=0, net=amount, payout_id=None,
            settled_on=day.isoformat())

    if _date(dispute.get("received_date"), what + " received_date") == day:
        out.append(line(dispute_id, "dispute",
                        -_minor(_text(dispute, "amount_disputed", what), currency, what)))
    for entry in _list(dispute.get("status_history"), what + " status_history"):
        if isinstance(entry, dict) and entry.get("status") == "won" and _date(
                entry.get("timestamp"), what + " status timestamp") == day:
            won = dispute.get("amount_won") or dispute.get("amount_disputed") or ""
            out.append(line(f"{dispute_id}:won", "dispute_reversal",
                            _minor(str(won), currency, what)))
    return out


def parse_braintree(raw: bytes) -> list[SettlementLine]:
    """The report document (see the module docstring) -> lines: transactions, the
    disbursements of the summary, disputes."""
    from braintree.util.xml_util import XmlUtil

    try:
        text = raw.decode("utf-8")
        doc = XmlUtil.dict_from_xml(text)
    except Exception as exc:  # the SDK's parser raises expat / value errors
        raise MalformedSettlement(f"Braintree settlement report is not XML the SDK "
                                  f"reads: {exc}") from None
    root = doc.get(ROOT) if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise MalformedSettlement(f"Braintree settlement report: no <{ROOT.replace('_', '-')}>")
    day = _date(root.get("settlement_date"), "settlement_date")
    summary = root.get("settlement_batch_summary")
    if not isinstance(summary, dict):
        raise MalformedSettlement("Braintree settlement report: no settlement-batch-summary")
    lines: list[SettlementLine] = []
    currencies: dict[str, set[str]] = {}
    for txn in _list(root.get("transactions"), "transactions"):
        line, account, currency = _transaction_line(txn, day)
        currencies.setdefault(account, set()).add(currency)
        lines.append(line)
    totals: dict[str, int] = {}
    for record in _list(summary.get("records"), "records"):
        if not isinstance(record, dict):
            raise MalformedSettlement("a summary record must be an element")
        account = _text(record, "merchant_account_id", "summary record")
        kind = record.get("kind")
        if kind not in ("sale", "credit"):
            raise MalformedSettlement(f"summary record: kind {kind!r} is not sale or credit")
        if not str(record.get("count", "")).isdigit():
            raise MalformedSettlement(f"summary record: count {record.get('count')!r}")
        known = currencies.get(account, set())
        if len(known) != 1:
            raise MalformedSettlement(f"summary record of merchant account {account!r}: no "
                                      "single currency among its transactions")
        [currency] = known
        amount = abs(_minor(_text(record, "amount_settled", "summary record"), currency,
                            "summary record"))
        totals[account] = totals.get(account, 0) + (amount if kind == "sale" else -amount)
    for account, total in totals.items():
        pid = f"{account}:{day.isoformat()}"
        [currency] = currencies[account]
        lines.append(SettlementLine(
            provider_type=PROVIDER_TYPE, line_id=pid, kind="payout", payment_reference=None,
            merchant_reference=None, refund_reference=None, currency=currency, gross=-total,
            fee=0, net=-total, payout_id=pid, settled_on=day.isoformat()))
    for dispute in _list(root.get("disputes"), "disputes"):
        lines.extend(_dispute_lines(dispute, day))
    return check_unique(lines)


# ------------------------------------------------------------------ fetch


def _fetch(settings: ProviderSettings, day: dt.date) -> bytes:
    import braintree
    from braintree.util.xml_util import XmlUtil

    from providers.braintree.adapter import make_environment
    from providers.braintree.declaration import DECLARATION

    creds = DECLARATION.credentials_of(settings)
    environment = (make_environment(settings.base_url) if settings.base_url
                   else braintree.Environment.Production)
    gateway = braintree.BraintreeGateway(braintree.Configuration(
        environment, merchant_id=creds["merchant_id"], public_key=creds["public_key"],
        private_key=creds["private_key"],
        timeout=(settings.connect_timeout_s, settings.timeout_s),
        wrap_http_exceptions=True))
    try:
        result = gateway.settlement_batch_summary.generate(day.isoformat())
        if not result.is_success:
            raise SettlementUnavailable(f"Braintree settlement batch summary: "
                                        f"{result.message}")
        records = result.settlement_batch_summary.records
        answer = gateway.config.http().post(
            gateway.config.base_merchant_path() + "/transactions/advanced_search",
            {"search": {"settlement_batch_id": {"starts_with": f"{day.isoformat()}_"}}})
        disputes: list[Any] = []
        page = 1
        while True:  # dispute.search(DisputeSearch.effective_date.between(day, day)), raw
            listing = gateway.config.http().post(
                gateway.config.base_merchant_path() + f"/disputes/advanced_search?page={page}",
                {"search": {"effective_date": {"min": day.isoformat(),
                                               "max": day.isoformat()}}})["disputes"]
            items = _list(listing.get("dispute"), "disputes")
            disputes.extend(items)
            if not items or page * int(listing.get("page_size") or 1) >= int(
                    listing.get("total_items") or 0):
                break
            page += 1
    except braintree.exceptions.BraintreeError as exc:
        raise SettlementUnavailable(f"Braintree: {type(exc).__name__} {exc}") from exc
    found = answer.get("credit_card_transactions") or {}
    transactions = _list(found.get("transaction"), "transactions")
    doc = {ROOT: {"settlement_date": day.isoformat(),
                  "settlement_batch_summary": {"records": list(records)},
                  "transactions": transactions, "disputes": disputes}}
    return str(XmlUtil.xml_from_dict(doc)).encode("utf-8")


async def fetch_settlement(settings: ProviderSettings, day: dt.date) -> bytes:
    """The day's batch through the braintree SDK (run in a thread: the SDK is
    synchronous)."""
    return await asyncio.to_thread(_fetch, settings, day)


__all__ = ["PROVIDER_TYPE", "fetch_settlement", "parse_braintree"]
