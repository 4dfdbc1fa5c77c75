"""The double-entry ledger (SPEC 16, issue #14 item 2): every money movement as an
immutable, balanced entry, in integer minor units of the payment's currency.

An authorization hold is not money. What is:

================  ============================  ============================
entry_type        debit                         credit
================  ============================  ============================
capture           ``provider:<name>``           ``sales``
refund            ``refunds``                   ``provider:<name>``
dispute           ``disputes``                  ``provider:<name>``
dispute_reversal  ``provider:<name>``           ``disputes``
fee               ``fees:<name>``               ``provider:<name>``
payout            ``bank``                      ``provider:<name>``
================  ============================  ============================

``provider:<name>`` is what that provider holds for the merchant (captured, not yet paid
out); ``bank`` what reached the merchant's bank. Each entry is one debit and one credit of
the same positive amount, so every entry -- and so the ledger -- balances. A movement that
undoes an earlier one (a capture taken back by a correction) is an entry of the same type
with the accounts swapped and ``reversal: true``; entries are never changed or deleted.

Where entries come from
  * Payment changes (:func:`entries_for_change`), written by the one write path
    (:class:`gateway.payment_writer.PaymentWriter`) in the SAME atomic store write as the
    change: a rise of ``amount_captured`` is a capture, each refund that reaches
    ``succeeded`` a refund, a dispute opened a dispute (the providers take the money back
    when a chargeback opens: Stripe's funds_withdrawn, Braintree's opened dispute, Adyen's
    CHARGEBACK), a dispute won a dispute_reversal and a won dispute lost after all (Adyen's
    SECOND_CHARGEBACK) a dispute again.
  * Settlement reports (fees, payouts), imported later (SPEC 16).

The ledger of one payment therefore nets, on ``provider:<name>``, to
``amount_captured - amount_refunded - disputed`` (before fees and payouts), which the
property tests check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.disputes import disputed_amount
from gateway.model import derived_id, iso, now
from providers.statuses import DisputeStatus, RefundStatus

EntryType = Literal["capture", "refund", "fee", "dispute", "dispute_reversal", "payout"]
ENTRY_TYPES: tuple[str, ...] = ("capture", "refund", "fee", "dispute", "dispute_reversal",
                                "payout")
SALES, REFUNDS, DISPUTES, BANK = "sales", "refunds", "disputes", "bank"

#: The fields of an entry as ``GET /v1/payments/{id}/ledger`` shows it (SPEC 16), listed.
PUBLIC_FIELDS: tuple[str, ...] = ("id", "entry_type", "amount", "currency", "debit",
                                  "credit", "created_at", "source")


def provider_account(provider: str) -> str:
    return f"provider:{provider}"


def fees_account(provider: str) -> str:
    return f"fees:{provider}"


def accounts(entry_type: str, provider: str) -> tuple[str, str]:
    """``(debit, credit)`` of an entry of ``entry_type`` at ``provider``."""
    held = provider_account(provider)
    table = {
        "capture": (held, SALES),
        "refund": (REFUNDS, held),
        "dispute": (DISPUTES, held),
        "dispute_reversal": (held, DISPUTES),
        "fee": (fees_account(provider), held),
        "payout": (BANK, held),
    }
    return table[entry_type]


@dataclass(frozen=True)
class MoneyState:
    """What of a payment is money, read before a change (see :func:`entries_for_change`)."""

    captured: int
    refunds: Mapping[str, str]  # refund id -> status
    disputes: Mapping[str, int]  # dispute id -> what it holds back (:func:`held_back`)


def held_back(dispute: Mapping[str, Any], captured: int) -> int:
    """What a dispute has taken back from the merchant: its amount (all that was captured
    when the provider gave none) unless it was won."""
    if dispute.get("status") == DisputeStatus.WON.value:
        return 0
    return disputed_amount(dispute, captured)


def money_state(doc: Mapping[str, Any]) -> MoneyState:
    captured = int(doc.get("amount_captured") or 0)
    return MoneyState(
        captured=captured,
        refunds={str(r["id"]): str(r.get("status")) for r in doc.get("refunds") or []},
        disputes={str(d["id"]): held_back(d, captured) for d in doc.get("disputes") or []},
    )


def new_entry(entry_type: str, *, entry_id: str, merchant_id: str, provider: str,
              currency: str, amount: int, source: str, payment_id: str | None = None,
              reversal: bool = False, created_at: float | None = None,
              **refs: Any) -> dict[str, Any]:
    """One balanced entry. ``amount`` > 0; ``reversal`` swaps debit and credit."""
    if entry_type not in ENTRY_TYPES:
        raise ValueError(f"unknown entry type {entry_type!r}")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"a ledger amount is a positive integer, not {amount!r}")
    debit, credit = accounts(entry_type, provider)
    if reversal:
        debit, credit = credit, debit
    entry: dict[str, Any] = {
        "id": entry_id, "entry_type": entry_type, "amount": amount, "currency": currency,
        "debit": debit, "credit": credit, "source": source, "merchant_id": merchant_id,
        "payment_id": payment_id, "provider": provider,
        "created_at": now() if created_at is None else created_at,
    }
    if reversal:
        entry["reversal"] = True
    entry.update({k: v for k, v in refs.items() if v is not None})
    return entry


def entries_for_change(before: MoneyState, doc: Mapping[str, Any], new_version: int,
                       source: str) -> list[dict[str, Any]]:
    """The entries a payment write makes (the doc as it will be stored at ``new_version``).
    Ids come from (payment id, version, position): a write retried after a lost
    compare-and-swap makes the same ids, and only one write per version succeeds."""
    provider = doc.get("provider")
    if not isinstance(provider, str) or not provider:
        return []  # no provider ever took money
    pid, currency = str(doc["id"]), str(doc["currency"])
    out: list[dict[str, Any]] = []

    def add(entry_type: str, amount: int, reversal: bool = False, **refs: Any) -> None:
        if amount <= 0:
            return
        out.append(new_entry(
            entry_type, entry_id=derived_id("led_", pid, str(new_version), str(len(out))),
            merchant_id=str(doc["merchant_id"]), provider=provider, currency=currency,
            amount=amount, source=source, payment_id=pid, reversal=reversal, **refs))

    captured = int(doc.get("amount_captured") or 0)
    if captured != before.captured:
        add("capture", abs(captured - before.captured), reversal=captured < before.captured)
    for refund in doc.get("refunds") or []:
        rid = str(refund["id"])
        if (refund.get("status") == RefundStatus.SUCCEEDED.value
                and before.refunds.get(rid) != RefundStatus.SUCCEEDED.value):
            add("refund", int(refund["amount"]), refund_id=rid)
    for dispute in doc.get("disputes") or []:
        # opened: the money goes back; won: it returns; lost after a win (a second
        # chargeback) or a larger amount: it goes back again
        did = str(dispute["id"])
        change = held_back(dispute, captured) - before.disputes.get(did, 0)
        if change > 0:
            add("dispute", change, dispute_id=did)
        elif change < 0:
            add("dispute_reversal", -change, dispute_id=did)
    return out


def public_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: entry[k] for k in PUBLIC_FIELDS if k in entry}
    out["created_at"] = iso(float(entry["created_at"]))
    return out


def balances(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Per account: debits minus credits. The values of a balanced ledger sum to 0."""
    out: dict[str, int] = {}
    for e in entries:
        out[str(e["debit"])] = out.get(str(e["debit"]), 0) + int(e["amount"])
        out[str(e["credit"])] = out.get(str(e["credit"]), 0) - int(e["amount"])
    return out


__all__ = [
    "BANK", "DISPUTES", "ENTRY_TYPES", "PUBLIC_FIELDS", "REFUNDS", "SALES", "EntryType",
    "MoneyState", "accounts", "balances", "entries_for_change", "fees_account", "held_back",
    "money_state",
    "new_entry", "provider_account", "public_entry",
]
