"""Stripe settlement: a day of balance transactions -> :class:`SettlementLine` records.

The report (what :func:`fetch_settlement` assembles through the API, and what the
simulator's ``GET /_sim/stripe/settlement?date=`` serves) is one JSON document::

    {"date": "YYYY-MM-DD",
     "balance_transactions": <GET /v1/balance_transactions?created[gte]=<day 00:00 UTC>&
                              created[lt]=<next day>&expand[]=data.source: every page's
                              data in one list object>,
     "payouts": {"po_...": <GET /v1/balance_transactions?payout=po_...: every page>}}

Stripe's balance transaction (spec3 ``balance_transaction``) carries no payout: which
payout paid a transaction out is listed from the payout's side (``?payout=``), so the
document keeps, for each payout, the ids of its transactions; a line found in none has
``payout_id`` None.

Lines: ``id`` is the line id; ``amount`` / ``fee`` / ``net`` are Stripe's units,
converted to ISO minor units with :func:`providers.stripe.amounts.from_wire` (the
adapter's table); ``settled_on`` is the UTC day of ``created``. The kind comes from
``type`` (and ``reporting_category`` for ``adjustment``):

=====================================================  ================================
``type``                                               kind
=====================================================  ================================
charge, payment                                        capture
refund, payment_refund                                 refund
adjustment + reporting_category dispute                dispute
adjustment + reporting_category dispute_reversal       dispute_reversal
adjustment (other categories), refund_failure,         adjustment
payment_failure_refund, payment_reversal,
payout_cancel, payout_failure
payout                                                 payout (``payout_id`` its source)
stripe_fee, stripe_fx_fee, tax_fee, application_fee    fee
=====================================================  ================================

Any other ``type`` is :class:`MalformedSettlement`. With ``source`` expanded, the payment
reference is the source's ``payment_intent`` (the charge's, the refund's, the dispute's),
the merchant reference its ``metadata.gateway_payment_id``; an unexpanded source gives
no payment reference unless it is itself a PaymentIntent id.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

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
from providers.stripe.amounts import from_wire

PROVIDER_TYPE = "stripe"
PAGE_LIMIT = 100

_KINDS: dict[str, SettlementKind] = {
    "charge": "capture", "payment": "capture",
    "refund": "refund", "payment_refund": "refund",
    "payout": "payout",
    "stripe_fee": "fee", "stripe_fx_fee": "fee", "tax_fee": "fee", "application_fee": "fee",
    "refund_failure": "adjustment", "payment_failure_refund": "adjustment",
    "payment_reversal": "adjustment", "payout_cancel": "adjustment",
    "payout_failure": "adjustment",
}
_ADJUSTMENTS: dict[str, SettlementKind] = {"dispute": "dispute",
                                           "dispute_reversal": "dispute_reversal"}


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedSettlement(f"{what} must be a JSON object")
    return value


def _list_data(value: Any, what: str) -> list[Any]:
    listing = _obj(value, what)
    if listing.get("object") != "list" or not isinstance(listing.get("data"), list):
        raise MalformedSettlement(f"{what} must be a Stripe list object")
    data: list[Any] = listing["data"]
    return data


def _int(bt: Mapping[str, Any], key: str) -> int:
    value = bt.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedSettlement(f"balance transaction {bt.get('id')!r}: {key} must be an "
                                  f"integer, got {value!r}")
    return value


def _iso(wire: int, currency: str, bt_id: str) -> int:
    try:
        return from_wire(wire, currency)
    except (AmountError, UnknownCurrency) as exc:
        raise MalformedSettlement(f"balance transaction {bt_id!r}: {exc}") from None


def _kind(bt: Mapping[str, Any]) -> SettlementKind:
    type_ = bt.get("type")
    if type_ == "adjustment":
        return _ADJUSTMENTS.get(str(bt.get("reporting_category")), "adjustment")
    if not isinstance(type_, str) or type_ not in _KINDS:
        raise MalformedSettlement(f"balance transaction {bt.get('id')!r}: unknown type "
                                  f"{type_!r}")
    return _KINDS[type_]


def _references(kind: str, source: Any) -> tuple[str | None, str | None, str | None, str]:
    """(payment reference, merchant reference, refund reference, source id)."""
    if isinstance(source, str):
        pi = source if source.startswith("pi_") else None
        return pi, None, source if kind == "refund" else None, source
    if source is None:
        return None, None, None, ""
    obj = _obj(source, "source")
    source_id = obj.get("id")
    if not isinstance(source_id, str):
        raise MalformedSettlement("an expanded source needs its id")
    payment = obj.get("payment_intent")
    if isinstance(payment, dict):
        payment = payment.get("id")
    if not isinstance(payment, str):
        payment = None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    merchant = metadata.get("gateway_payment_id") if isinstance(metadata, dict) else None
    refund = source_id if obj.get("object") == "refund" else None
    return payment, merchant if isinstance(merchant, str) else None, refund, source_id


def parse_stripe(raw: bytes) -> list[SettlementLine]:
    """The report document (see the module docstring) -> lines, in its order."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedSettlement(f"Stripe settlement report is not JSON: {exc}") from None
    doc = _obj(doc, "the Stripe settlement report")
    transactions = _list_data(doc.get("balance_transactions"), "balance_transactions")
    payout_of: dict[str, str] = {}
    for pid, listing in _obj(doc.get("payouts", {}), "payouts").items():
        for member in _list_data(listing, f"payouts[{pid!r}]"):
            member_id = _obj(member, "a payout's balance transaction").get("id")
            if not isinstance(member_id, str):
                raise MalformedSettlement(f"payouts[{pid!r}]: a transaction without id")
            if payout_of.get(member_id, pid) != pid:
                raise MalformedSettlement(f"balance transaction {member_id!r} is listed in "
                                          f"two payouts")
            payout_of[member_id] = pid
    lines = []
    for item in transactions:
        bt = _obj(item, "a balance transaction")
        bt_id = bt.get("id")
        if bt.get("object") != "balance_transaction" or not isinstance(bt_id, str):
            raise MalformedSettlement(f"not a balance transaction: {str(bt)[:120]}")
        currency = bt.get("currency")
        if not isinstance(currency, str) or len(currency) != 3:
            raise MalformedSettlement(f"balance transaction {bt_id!r}: bad currency "
                                      f"{currency!r}")
        currency = currency.upper()
        kind = _kind(bt)
        created = _int(bt, "created")
        payment, merchant, refund, source_id = _references(kind, bt.get("source"))
        payout = source_id if kind == "payout" else payout_of.get(bt_id)
        if kind == "payout" and not payout:
            raise MalformedSettlement(f"payout transaction {bt_id!r} names no payout")
        lines.append(SettlementLine(
            provider_type=PROVIDER_TYPE, line_id=bt_id, kind=kind,
            payment_reference=payment, merchant_reference=merchant, refund_reference=refund,
            currency=currency, gross=_iso(_int(bt, "amount"), currency, bt_id),
            fee=_iso(_int(bt, "fee"), currency, bt_id),
            net=_iso(_int(bt, "net"), currency, bt_id), payout_id=payout,
            settled_on=dt.datetime.fromtimestamp(created, dt.UTC).date().isoformat()))
    return check_unique(lines)


# ------------------------------------------------------------------ fetch


async def _pages(client: Any, params: dict[str, Any]) -> list[Any]:
    """Every page's ``data`` of ``GET /v1/balance_transactions``, as the API sent it
    (paging with ``starting_after``)."""
    out: list[Any] = []
    after: str | None = None
    while True:
        page_params = dict(params, limit=PAGE_LIMIT)
        if after is not None:
            page_params["starting_after"] = after
        page = await client.v1.balance_transactions.list_async(page_params)
        body = json.loads(page.last_response.body)
        data = body.get("data") or []
        out.extend(data)
        if not body.get("has_more") or not data:
            return out
        after = data[-1]["id"]


def _listing(data: list[Any]) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False,
            "url": "/v1/balance_transactions"}


async def fetch_settlement(settings: ProviderSettings, day: dt.date) -> bytes:
    """One UTC day's report through the stripe SDK (see the module docstring): the day's
    balance transactions with ``expand[]=data.source``, then the transactions of each
    payout paid that day or the next (a transaction of the day may be paid out in the
    next day's payout)."""
    import stripe

    from providers.stripe.declaration import DECLARATION

    key = DECLARATION.credentials_of(settings)["api_key"]
    base = (settings.base_url or "https://api.stripe.com").rstrip("/")
    http = stripe.AIOHTTPClient(timeout=settings.timeout_s)
    client = stripe.StripeClient(key, base_addresses={"api": base}, http_client=http,
                                 max_network_retries=2)
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    end = start + 86400
    try:
        transactions = await _pages(client, {"created": {"gte": start, "lt": end},
                                             "expand": ["data.source"]})
        ids = {bt["id"] for bt in transactions}
        paid = await _pages(client, {"created": {"gte": start, "lt": end + 86400},
                                     "type": "payout"})
        payouts: dict[str, Any] = {}
        for bt in paid:
            pid = bt["source"]["id"] if isinstance(bt["source"], dict) else bt["source"]
            members = await _pages(client, {"payout": pid})
            if bt["id"] in ids or any(member["id"] in ids for member in members):
                payouts[pid] = _listing(members)
    except stripe.StripeError as exc:
        raise SettlementUnavailable(f"Stripe balance transactions: {exc}") from exc
    finally:
        await http.close_async()
    doc = {"date": day.isoformat(), "balance_transactions": _listing(transactions),
           "payouts": payouts}
    return json.dumps(doc).encode()


__all__ = ["PROVIDER_TYPE", "fetch_settlement", "parse_stripe"]
