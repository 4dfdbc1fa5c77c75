"""The Braintree simulator's transactions and the rules of its operations.

Operations raise :class:`ValidationFailure` with Braintree's documented error codes
(rendered as an ``<api-error-response>``); a declined sale is *not* an exception:
it is a stored transaction whose status is a decline.

Amounts: Braintree's are decimal strings in the currency's major unit with the ISO 4217
decimals ("10.50" EUR, "500" JPY, "1.230" KWD). The simulator takes those decimals from
the ``iso4217`` package itself (:mod:`providers.simulator.iso_units`), never from the
adapter, and keeps integers of ISO minor units internally -- which is also what the
charges view reports.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from providers.braintree.xml import Array
from providers.simulator.iso_units import iso_exponent
from providers.simulator.tokens import CardBehavior, SandboxCard

B = CardBehavior

SETTLED_LIKE = frozenset({"settling", "settled"})
CAPTURED_LIKE = frozenset({"submitted_for_settlement", "settling", "settled",
                           "settlement_pending", "settlement_confirmed"})
REFUND_COUNTS = frozenset({"authorized", "authorizing", "submitted_for_settlement", "settling",
                           "settled", "settlement_pending", "settlement_confirmed"})

#: card behaviour -> (status, processor code, processor text, response type, rejection reason)
OUTCOMES: dict[CardBehavior, tuple[str, str | None, str | None, str | None, str | None]] = {
    B.APPROVE: ("authorized", "1000", "Approved", "approved", None),
    B.PENDING: ("authorizing", "1000", "Approved", "approved", None),
    B.DECLINE: ("processor_declined", "2000", "Do Not Honor", "soft_declined", None),
    B.INSUFFICIENT_FUNDS: ("processor_declined", "2001", "Insufficient Funds", "soft_declined",
                           None),
    # Braintree's transaction API has no "requires action": 3-D Secure runs client-side
    # before the nonce exists; a required/failed 3DS is a gateway rejection.
    B.REQUIRES_ACTION: ("gateway_rejected", None, None, None, "three_d_secure"),
}


_AMOUNT = re.compile(r"^(\d+)(?:\.(\d+))?$")


def decimals(currency: str) -> int:
    """ISO 4217 decimals of a merchant account's currency (ValueError when ISO has none)."""
    exp = iso_exponent(currency)
    if exp is None:
        raise ValueError(f"{currency} has no ISO 4217 minor unit")
    return exp


def decimal_string(minor: int, currency: str) -> str:
    """``1050, "EUR" -> "10.50"``; ``500, "JPY" -> "500"``; ``1230, "KWD" -> "1.230"``."""
    exp = decimals(currency)
    if exp == 0:
        return str(minor)
    whole, frac = divmod(minor, 10**exp)
    return f"{whole}.{frac:0{exp}d}"


def minor_units(text: str, currency: str) -> int | None:
    """A Braintree amount string as ISO minor units; None when it is not one exactly
    (malformed, or more decimals than the currency has, other than trailing zeros)."""
    match = _AMOUNT.match(text.strip())
    if match is None:
        return None
    whole, frac = match.group(1), match.group(2) or ""
    exp = decimals(currency)
    if len(frac) > exp:
        if frac[exp:].strip("0"):
            return None
        frac = frac[:exp]
    return int(whole) * 10**exp + (int(frac.ljust(exp, "0")) if exp else 0)


class ValidationFailure(Exception):
    """A Braintree validation error (HTTP 422 ``<api-error-response>``)."""

    def __init__(self, code: str, message: str, attribute: str = "base",
                 scope: str = "transaction") -> None:
        super().__init__(message)
        self.code, self.message, self.attribute, self.scope = code, message, attribute, scope


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


@dataclass
class StatusEvent:
    status: str
    amount: int
    timestamp: dt.datetime


@dataclass
class Transaction:
    id: str
    type: str  # "sale" | "credit"
    amount: int  # minor units; for a sale: the settlement amount once submitted
    currency: str
    merchant_account_id: str
    order_id: str | None
    card: SandboxCard | None
    status: str = "authorizing"
    authorized_amount: int = 0
    processor_response_code: str | None = None
    processor_response_text: str | None = None
    processor_response_type: str | None = None
    gateway_rejection_reason: str | None = None
    refunded_transaction_id: str | None = None
    refund_ids: list[str] = field(default_factory=list)
    created_at: dt.datetime = field(default_factory=now)
    updated_at: dt.datetime = field(default_factory=now)
    history: list[StatusEvent] = field(default_factory=list)
    #: when its settlement batch settled it (None: not settled)
    settled_at: dt.datetime | None = None
    #: when it was created (time.monotonic): search sees it only after search_lag_ms
    created_monotonic: float = field(default_factory=time.monotonic, repr=False)

    def set_status(self, status: str) -> None:
        self.status = status
        self.updated_at = now()
        self.history.append(StatusEvent(status, self.amount, self.updated_at))

    @property
    def declined(self) -> bool:
        return self.status in ("processor_declined", "gateway_rejected", "failed")

    def money(self, minor: int) -> str:
        return decimal_string(minor, self.currency)

    @property
    def settlement_batch_id(self) -> str | None:
        """``<settlement date>_<merchant account>`` once settled (the SDK's own test reads
        the settlement date as the part before the first ``_``)."""
        if self.settled_at is None:
            return None
        return f"{self.settled_at.date().isoformat()}_{self.merchant_account_id}"

    def disbursement_details(self, disbursed_on: dt.date | None = None) -> dict[str, Any]:
        """The SDK's ``DisbursementDetail``: disbursed the day it settled (the simulator's
        batches are paid out the same day), in the transaction's currency."""
        if self.settled_at is None:
            return {"disbursement_date": None, "settlement_amount": None,
                    "settlement_currency_iso_code": None,
                    "settlement_currency_exchange_rate": None, "funds_held": None,
                    "success": None}
        return {"disbursement_date": disbursed_on or self.settled_at.date(),
                "settlement_amount": self.money(self.amount),
                "settlement_currency_iso_code": self.currency,
                "settlement_currency_exchange_rate": "1", "funds_held": False,
                "success": True}

    def to_xml(self) -> dict[str, Any]:
        card = self.card
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "type": self.type,
            "currency_iso_code": self.currency,
            "amount": self.money(self.amount),
            "merchant_account_id": self.merchant_account_id,
            "order_id": self.order_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "processor_response_code": self.processor_response_code,
            "processor_response_text": self.processor_response_text,
            "processor_response_type": self.processor_response_type,
            "processor_authorization_code": None if self.declined else self.id[:6].upper(),
            "gateway_rejection_reason": self.gateway_rejection_reason,
            "refunded_transaction_id": self.refunded_transaction_id,
            "refund_ids": Array("item", list(self.refund_ids)),
            "payment_instrument_type": "credit_card",
            "settlement_batch_id": self.settlement_batch_id,
            "disbursement_details": self.disbursement_details(),
            "status_history": Array("status_event", [
                {"timestamp": e.timestamp, "status": e.status, "amount": self.money(e.amount),
                 "transaction_source": "api", "user": "sandbox"} for e in self.history]),
        }
        if card is not None:
            out["credit_card"] = {
                "bin": "411111" if card.brand == "visa" else "555555",
                "last_4": card.last4, "card_type": card.brand.title(),
                "expiration_month": "12", "expiration_year": "2030", "expired": False,
                "token": None,
            }
        return out


def parse_amount(raw: Any, currency: str, *, required: bool) -> int | None:
    """A request amount in minor units; ``None`` when empty and not required."""
    if raw is None or raw == "" or raw == {}:
        if required:
            raise ValidationFailure("81502", "Amount is required.", "amount")
        return None
    if not isinstance(raw, str):
        raise ValidationFailure("81503", "Amount is an invalid format.", "amount")
    minor = minor_units(raw, currency)
    if minor is None:
        raise ValidationFailure("81503", "Amount is an invalid format.", "amount")
    if minor <= 0:
        raise ValidationFailure("81531", "Amount must be greater than zero.", "amount")
    return minor


def sale(*, amount: int, currency: str, merchant_account_id: str, order_id: str | None,
         card: SandboxCard) -> Transaction:
    """Authorize: the card's sandbox behaviour decides the status."""
    status, code, text, rtype, reason = OUTCOMES[card.behavior]
    txn = Transaction(new_id(), "sale", amount, currency, merchant_account_id, order_id, card,
                      authorized_amount=amount, processor_response_code=code,
                      processor_response_text=text, processor_response_type=rtype,
                      gateway_rejection_reason=reason)
    txn.set_status(status)
    return txn


def submit_for_settlement(txn: Transaction, amount: int | None) -> None:
    if txn.type != "sale" or txn.status != "authorized":
        raise ValidationFailure("91507", "Cannot submit for settlement unless status is "
                                "authorized. (status is " + txn.status + ")")
    if amount is not None and amount > txn.authorized_amount:
        raise ValidationFailure("91522", "Settlement amount is too large.", "amount")
    if amount is not None:
        txn.amount = amount
    txn.set_status("submitted_for_settlement")


def void(txn: Transaction) -> None:
    if txn.type == "sale" and txn.status in ("authorized", "submitted_for_settlement",
                                             "settlement_pending"):
        txn.set_status("voided")
        return
    if txn.type == "credit" and txn.status == "submitted_for_settlement":
        txn.set_status("voided")
        return
    raise ValidationFailure("91504", "Transaction can only be voided if status is authorized, "
                            "submitted_for_settlement, or - for PayPal - settlement_pending.")


def refunded_total(txn: Transaction, transactions: dict[str, Transaction]) -> int:
    return sum(t.amount for rid in txn.refund_ids
               if (t := transactions.get(rid)) is not None and t.status in REFUND_COUNTS)


def refund(txn: Transaction, amount: int | None, transactions: dict[str, Transaction]
           ) -> Transaction:
    if txn.type == "credit":
        raise ValidationFailure("91505", "Cannot refund credit")
    if txn.status not in SETTLED_LIKE:
        raise ValidationFailure("91506", "Cannot refund transaction unless it is settled.")
    remaining = txn.amount - refunded_total(txn, transactions)
    if remaining <= 0:
        raise ValidationFailure("91512", "Transaction has already been completely refunded.")
    amount = remaining if amount is None else amount
    if amount > remaining:
        raise ValidationFailure("91521", "Refund amount is too large.", "amount")
    credit = Transaction(new_id(), "credit", amount, txn.currency, txn.merchant_account_id,
                         txn.order_id, txn.card, authorized_amount=amount,
                         processor_response_code="1002", processor_response_text="Processed",
                         processor_response_type="approved", refunded_transaction_id=txn.id)
    credit.set_status("submitted_for_settlement")
    txn.refund_ids.append(credit.id)
    txn.updated_at = now()
    return credit


def settle(txn: Transaction) -> bool:
    """submitted_for_settlement -> settled (the batch ran). True when it moved."""
    if txn.status != "submitted_for_settlement":
        return False
    txn.set_status("settling")
    txn.set_status("settled")
    txn.settled_at = txn.updated_at
    return True


def complete_authorization(txn: Transaction, submit: bool) -> bool:
    """authorizing -> authorized (or submitted_for_settlement when auto-capture)."""
    if txn.status != "authorizing":
        return False
    txn.set_status("authorized")
    if submit:
        txn.set_status("submitted_for_settlement")
    return True


#: Days the simulator gives to reply to a new dispute (``reply_by_date``).
DISPUTE_REPLY_DAYS = 7
#: Closed ``braintree.Dispute.Status`` values.
DISPUTE_CLOSED = frozenset({"won", "lost", "accepted", "auto_accepted", "expired"})


@dataclass
class Dispute:
    """A Braintree dispute (the SDK's ``Dispute`` attributes, as its sample notifications
    carry them); ``amount`` in minor units of the transaction's currency."""

    id: str
    amount: int
    transaction: Transaction
    reason: str = "fraud"
    kind: str = "chargeback"
    status: str = "open"
    created_at: dt.datetime = field(default_factory=now)
    updated_at: dt.datetime = field(default_factory=now)
    history: list[tuple[str, dt.datetime]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history.append((self.status, self.created_at))

    @property
    def open(self) -> bool:
        return self.status not in DISPUTE_CLOSED

    def set_status(self, status: str) -> None:
        self.status, self.updated_at = status, now()
        self.history.append((status, self.updated_at))

    def to_xml(self) -> dict[str, Any]:
        txn = self.transaction
        received = self.created_at.date()
        return {
            "id": self.id,
            "amount": txn.money(self.amount),
            "amount_disputed": txn.money(self.amount),
            "amount_won": txn.money(self.amount if self.status == "won" else 0),
            "case_number": f"CASE-{self.id.upper()}",
            "created_at": self.created_at,
            "currency_iso_code": txn.currency,
            "kind": self.kind,
            "merchant_account_id": txn.merchant_account_id,
            "reason": self.reason,
            "reason_code": None,
            "reason_description": None,
            "received_date": received,
            "reference_number": None,
            "reply_by_date": received + dt.timedelta(days=DISPUTE_REPLY_DAYS),
            "status": self.status,
            "updated_at": self.updated_at,
            "status_history": Array("status_history", [
                {"status": status, "timestamp": ts, "effective_date": ts.date()}
                for status, ts in self.history]),
            "evidence": Array("evidence", []),
            "transaction": {"id": txn.id, "amount": txn.money(txn.amount),
                            "created_at": txn.created_at, "order_id": txn.order_id,
                            "purchase_order_number": None},
            "date_opened": received,
        }
