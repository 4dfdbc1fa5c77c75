"""State of the Stripe simulator: PaymentIntents and Refunds, no HTTP.

Operations raise :class:`StripeApiError` with Stripe's status/type/code for every
refusal, so the HTTP layer only renders ``{"error": {...}}`` envelopes.

Amounts are Stripe's own integers, checked against Stripe's documented currency rules
(docs.stripe.com/currencies, "Zero-decimal currencies", "Three-decimal currencies",
"Special cases"), kept here as the simulator's own table -- never the adapter's:

* zero-decimal currencies (:data:`ZERO_DECIMAL`): whole units;
* three-decimal currencies (:data:`THREE_DECIMAL`): three decimals, last digit 0;
* ISK: zero-decimal, but represented two-decimal on the wire, so a multiple of 100;
* every other currency: two decimals.

A breach is Stripe's 400 ``invalid_request_error`` with ``param: amount``.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.simulator.iso_units import wire_to_iso
from providers.simulator.tokens import CardBehavior, SandboxCard

_ALPHABET = string.ascii_letters + string.digits
DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
}

B = CardBehavior

#: Stripe's own well-known test payment methods / tokens.
STRIPE_TEST_TOKENS: Mapping[str, SandboxCard] = {
    "pm_card_visa": SandboxCard(B.APPROVE, "visa", "4242"),
    "pm_card_visa_debit": SandboxCard(B.APPROVE, "visa", "5556"),
    "pm_card_mastercard": SandboxCard(B.APPROVE, "mastercard", "4444"),
    "pm_card_amex": SandboxCard(B.APPROVE, "amex", "8431"),
    "tok_amex": SandboxCard(B.APPROVE, "amex", "8431"),
    "pm_card_chargeDeclined": SandboxCard(B.DECLINE, "visa", "0002"),
    "tok_chargeDeclined": SandboxCard(B.DECLINE, "visa", "0002"),
    "pm_card_chargeDeclinedInsufficientFunds": SandboxCard(B.INSUFFICIENT_FUNDS, "visa", "9995"),
    "tok_chargeDeclinedInsufficientFunds": SandboxCard(B.INSUFFICIENT_FUNDS, "visa", "9995"),
    "pm_card_threeDSecure2Required": SandboxCard(B.REQUIRES_ACTION, "visa", "3220"),
    "pm_card_threeDSecureRequired": SandboxCard(B.REQUIRES_ACTION, "visa", "3063"),
    "pm_card_authenticationRequired": SandboxCard(B.REQUIRES_ACTION, "visa", "3184"),
}

CREATE_PARAMS = frozenset({
    "amount", "currency", "capture_method", "confirm", "payment_method", "payment_method_types",
    "metadata", "description", "return_url", "customer", "statement_descriptor",
    "statement_descriptor_suffix", "receipt_email", "setup_future_usage", "off_session",
    "confirmation_method", "expand", "error_on_requires_action", "use_stripe_sdk",
    "payment_method_options", "automatic_payment_methods", "shipping", "transfer_group",
})
CONFIRM_PARAMS = frozenset({"payment_method", "return_url", "capture_method", "expand",
                            "error_on_requires_action", "use_stripe_sdk", "off_session",
                            "payment_method_options"})
CAPTURE_PARAMS = frozenset({"amount_to_capture", "final_capture", "metadata", "expand",
                            "statement_descriptor", "statement_descriptor_suffix"})
CANCEL_PARAMS = frozenset({"cancellation_reason", "expand"})
REFUND_PARAMS = frozenset({"payment_intent", "charge", "amount", "metadata", "reason", "expand",
                           "instructions_email"})
SEARCH_PARAMS = frozenset({"query", "limit", "page", "expand"})


#: Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal).
ZERO_DECIMAL: frozenset[str] = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
#: Stripe's three-decimal currencies: the last of the three decimals must be 0.
THREE_DECIMAL: frozenset[str] = frozenset("BHD JOD KWD OMR TND".split())
#: Zero-decimal currencies Stripe keeps two-decimal on the wire (multiples of 100).
TWO_DECIMAL_WHOLE: frozenset[str] = frozenset({"ISK"})


def wire_exponent(currency: str) -> int:
    """How many decimals Stripe's ``amount`` integer carries for ``currency``."""
    c = currency.upper()
    if c in ZERO_DECIMAL:
        return 0
    if c in THREE_DECIMAL:
        return 3
    return 2


def check_amount(amount: int, currency: str, param: str = "amount") -> None:
    """Stripe's per-currency amount rules; raises the 400 it answers."""
    c = currency.upper()
    if c in THREE_DECIMAL and amount % 10:
        raise invalid(f"Invalid amount: {amount} {c}. {c} is a three-decimal currency and the "
                      "last decimal must be 0 (the amount must be a multiple of 10).",
                      code="amount_invalid", param=param)
    if c in TWO_DECIMAL_WHOLE and amount % 100:
        raise invalid(f"Invalid amount: {amount} {c}. {c} amounts are represented with two "
                      "decimals that must be 00 (the amount must be a multiple of 100).",
                      code="amount_invalid", param=param)


def iso_minor(amount: int, currency: str) -> int | float:
    """A Stripe ``amount`` as the ISO 4217 minor units it represents (charges view)."""
    return wire_to_iso(amount, wire_exponent(currency), currency)


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


class StripeApiError(Exception):
    """A Stripe error answer: HTTP status + ``error`` object."""

    def __init__(
        self, status: int, type_: str, message: str, *, code: str | None = None,
        param: str | None = None, decline_code: str | None = None,
        payment_intent: dict[str, Any] | None = None, charge: str | None = None,
        payment_method: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"type": type_, "message": message}
        for key, value in (("code", code), ("param", param), ("decline_code", decline_code),
                           ("charge", charge), ("payment_intent", payment_intent),
                           ("payment_method", payment_method)):
            if value is not None:
                self.error[key] = value
        if code:
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


def invalid(message: str, *, code: str | None = None, param: str | None = None,
            status: int = 400, payment_intent: dict[str, Any] | None = None) -> StripeApiError:
    return StripeApiError(status, "invalid_request_error", message, code=code, param=param,
                          payment_intent=payment_intent)


@dataclass
class PaymentIntent:
    id: str
    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    payment_method: str | None
    payment_method_types: list[str]
    card: SandboxCard | None
    description: str | None = None
    return_url: str | None = None
    status: str = "requires_payment_method"
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0  # kept on the charge in Stripe; used for refund checks
    latest_charge: str | None = None
    next_action: dict[str, Any] | None = None
    last_payment_error: dict[str, Any] | None = None
    canceled_at: int | None = None
    cancellation_reason: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    client_secret: str = ""
    #: when it was created (time.monotonic): search sees it only after search_lag_ms
    created_monotonic: float = field(default_factory=time.monotonic, repr=False)

    @property
    def manual(self) -> bool:
        return self.capture_method == "manual"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "payment_intent", "amount": self.amount,
            "amount_capturable": self.amount_capturable, "amount_received": self.amount_received,
            "currency": self.currency, "capture_method": self.capture_method,
            "confirmation_method": "automatic", "status": self.status,
            "metadata": dict(self.metadata), "latest_charge": self.latest_charge,
            "next_action": self.next_action, "last_payment_error": self.last_payment_error,
            "payment_method": self.payment_method,
            "payment_method_types": list(self.payment_method_types),
            "canceled_at": self.canceled_at, "cancellation_reason": self.cancellation_reason,
            "client_secret": self.client_secret, "created": self.created,
            "description": self.description, "livemode": False,
        }

    def payment_method_dict(self) -> dict[str, Any] | None:
        """The PaymentMethod object behind ``payment_method`` (Stripe's ``payment_method``
        schema: id, object, billing_details, card, created, livemode, type)."""
        if self.payment_method is None:
            return None
        card = self.card
        return {
            "id": self.payment_method, "object": "payment_method",
            "billing_details": {"address": {"city": None, "country": None, "line1": None,
                                            "line2": None, "postal_code": None,
                                            "state": None},
                                "email": None, "name": None, "phone": None},
            "card": {"brand": card.brand if card else "unknown", "country": "US",
                     "exp_month": 12, "exp_year": 2034, "funding": "credit",
                     "last4": card.last4 if card else "0000", "fingerprint": None,
                     "checks": None, "networks": None, "three_d_secure_usage": None,
                     "wallet": None, "generated_from": None},
            "created": self.created, "customer": None, "livemode": False, "metadata": {},
            "type": "card",
        }

    def charge_dict(self) -> dict[str, Any]:
        """The Charge object (webhooks ``charge.*``); ``refunds`` is not included (Stripe
        stopped including it by default in API version 2022-11-15)."""
        failed = self.last_payment_error is not None and self.amount_received == 0
        return {
            "id": self.latest_charge, "object": "charge", "amount": self.amount,
            "amount_captured": self.amount_received, "amount_refunded": self.amount_refunded,
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "captured": self.amount_received > 0, "created": self.created,
            "currency": self.currency, "disputed": False, "livemode": False,
            "metadata": dict(self.metadata), "paid": not failed,
            "payment_intent": self.id, "payment_method": self.payment_method,
            "refunded": self.amount_received > 0 and self.amount_refunded >= self.amount_received,
            "status": "failed" if failed else "succeeded",
        }


@dataclass
class Refund:
    id: str
    amount: int
    currency: str
    payment_intent: str
    charge: str | None
    metadata: dict[str, str]
    reason: str | None
    status: str = "succeeded"
    failure_reason: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "object": "refund", "amount": self.amount, "currency": self.currency,
            "payment_intent": self.payment_intent, "charge": self.charge,
            "metadata": dict(self.metadata), "reason": self.reason, "status": self.status,
            "created": self.created,
        }
        if self.status == "failed":  # Stripe sends failure_reason only for a failed refund
            out["failure_reason"] = self.failure_reason or "unknown"
        return out


def _approve(pi: PaymentIntent) -> None:
    pi.next_action, pi.last_payment_error = None, None
    if pi.manual:
        pi.status, pi.amount_capturable = "requires_capture", pi.amount
    else:
        pi.status, pi.amount_received = "succeeded", pi.amount


def _decline(pi: PaymentIntent, decline_code: str, code: str = "card_declined") -> StripeApiError:
    message = DECLINE_MESSAGES.get(decline_code, "Your card was declined.")
    if code == "payment_intent_authentication_failure":
        message = "The provided PaymentMethod has failed authentication."
    pi.status, pi.next_action = "requires_payment_method", None
    payment_method = pi.payment_method_dict()
    pi.last_payment_error = {
        "type": "card_error", "code": code, "decline_code": decline_code, "message": message,
        "charge": pi.latest_charge, "payment_method": payment_method,
        "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
    }
    return StripeApiError(402, "card_error", message, code=code, decline_code=decline_code,
                          payment_intent=pi.to_dict(), charge=pi.latest_charge,
                          payment_method=payment_method)


def confirm(pi: PaymentIntent, three_ds_url: str) -> None:
    """Run the card's sandbox behaviour; raises the 402 envelope for a decline."""
    card = pi.card
    if card is None:
        raise invalid("You cannot confirm this PaymentIntent because it's missing a payment "
                      "method.", code="payment_intent_unexpected_state",
                      payment_intent=pi.to_dict())
    behavior = card.behavior
    if behavior in (CardBehavior.APPROVE, CardBehavior.DECLINE, CardBehavior.INSUFFICIENT_FUNDS):
        pi.latest_charge = new_id("ch")
    if behavior is CardBehavior.APPROVE:
        _approve(pi)
    elif behavior is CardBehavior.DECLINE:
        raise _decline(pi, "generic_decline")
    elif behavior is CardBehavior.INSUFFICIENT_FUNDS:
        raise _decline(pi, "insufficient_funds")
    elif behavior is CardBehavior.REQUIRES_ACTION:
        pi.status = "requires_action"
        pi.next_action = {"type": "redirect_to_url", "redirect_to_url": {
            "url": three_ds_url, "return_url": pi.return_url}}
    else:  # PENDING
        pi.latest_charge = new_id("ch")
        pi.status = "processing"


def complete_action(pi: PaymentIntent, succeed: bool) -> None:
    """The customer finished (or failed) 3-D Secure."""
    if pi.status != "requires_action":
        raise invalid(f"This PaymentIntent's status is {pi.status}; no action to complete.",
                      code="payment_intent_unexpected_state", payment_intent=pi.to_dict())
    pi.latest_charge = new_id("ch")
    if succeed:
        _approve(pi)
    else:
        _decline(pi, "authentication_required", code="payment_intent_authentication_failure")


def settle_processing(pi: PaymentIntent) -> bool:
    """Resolve an asynchronous (``processing``) PaymentIntent; False if not processing."""
    if pi.status != "processing":
        return False
    _approve(pi)
    return True


def capture(pi: PaymentIntent, amount: int | None) -> None:
    if pi.status != "requires_capture":
        raise invalid(
            f"This PaymentIntent could not be captured because it has a status of {pi.status}. "
            "Only a PaymentIntent with one of the following statuses may be captured: "
            "requires_capture.", code="payment_intent_unexpected_state",
            payment_intent=pi.to_dict())
    amount = pi.amount_capturable if amount is None else amount
    check_amount(amount, pi.currency, "amount_to_capture")
    if amount < 1 or amount > pi.amount_capturable:
        raise invalid("The amount_to_capture must be less than or equal to the "
                      f"amount_capturable ({pi.amount_capturable}).", code="amount_too_large",
                      param="amount_to_capture")
    pi.status, pi.amount_received, pi.amount_capturable = "succeeded", amount, 0


def cancel(pi: PaymentIntent, reason: str | None) -> None:
    if pi.status in ("succeeded", "canceled"):
        raise invalid(
            f"You cannot cancel this PaymentIntent because it has a status of {pi.status}. "
            "Only a PaymentIntent with one of the following statuses may be canceled: "
            "requires_payment_method, requires_capture, requires_confirmation, "
            "requires_action, processing.", code="payment_intent_unexpected_state",
            payment_intent=pi.to_dict())
    pi.status, pi.amount_capturable, pi.next_action = "canceled", 0, None
    pi.canceled_at, pi.cancellation_reason = int(time.time()), reason


def refund(pi: PaymentIntent, amount: int | None, metadata: dict[str, str],
           reason: str | None) -> Refund:
    if pi.status != "succeeded" or pi.amount_received == 0:
        raise invalid(f"This PaymentIntent ({pi.id}) does not have a successful charge to "
                      "refund.", code="charge_not_refundable" if pi.status != "canceled"
                      else "payment_intent_unexpected_state", param="payment_intent")
    remaining = pi.amount_received - pi.amount_refunded
    if remaining <= 0:
        raise invalid(f"Charge {pi.latest_charge} has already been refunded.",
                      code="charge_already_refunded", param="payment_intent")
    amount = remaining if amount is None else amount
    if amount < 1:
        raise invalid("Refund amount must be at least 1.", code="parameter_invalid_integer",
                      param="amount")
    check_amount(amount, pi.currency)
    if amount > remaining:
        raise invalid(f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                      f"({remaining})", code="amount_too_large", param="amount")
    pi.amount_refunded += amount
    async_result = pi.card is not None and pi.card.behavior is CardBehavior.PENDING
    return Refund(new_id("re"), amount, pi.currency, pi.id, pi.latest_charge, metadata, reason,
                  status="pending" if async_result else "succeeded")


# ---------------------------------------------------------------- Search Query Language

SEARCH_PARSE_ERROR = (
    "We were unable to parse your search query. Try using the format "
    "`metadata[\"key\"]:\"value\"` to query for metadata or `key:\"value\"` to query for "
    "other fields.")
MAX_SEARCH_CLAUSES = 10
#: query fields for payment intents: field -> (kind, attribute getter)
_PI_SEARCH_FIELDS: dict[str, tuple[str, Callable[[PaymentIntent], Any]]] = {
    "amount": ("number", lambda pi: pi.amount),
    "created": ("number", lambda pi: pi.created),
    "currency": ("token", lambda pi: pi.currency),
    "customer": ("token", lambda pi: None),  # the simulator keeps no customers
    "status": ("token", lambda pi: pi.status),
}
_QUOTED = r"'(?:[^'\\]|\\.)*'" + "|" + r'"(?:[^"\\]|\\.)*"'
_CLAUSE = re.compile(
    rf"""\s*(?P<neg>-)?(?:metadata\[(?P<key>{_QUOTED})\]|(?P<field>[A-Za-z_][A-Za-z0-9_.]*))"""
    rf"""\s*(?P<op>:|~|>=|<=|>|<)\s*(?:(?P<str>{_QUOTED})|(?P<num>-?\d+))""")
_JOIN = re.compile(r"\s+(AND|OR)\s+")

Predicate = Callable[[PaymentIntent], bool]


def _search_error(message: str = SEARCH_PARSE_ERROR) -> StripeApiError:
    return invalid(message, param="query")


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _compare(op: str, have: Any, want: Any) -> bool:
    if have is None:
        return False
    if op == ":":
        return bool(have == want)
    return bool({">": have > want, "<": have < want, ">=": have >= want,
                 "<=": have <= want}[op])


def _clause(m: re.Match[str]) -> Predicate:
    op, neg = m["op"], m["neg"] is not None
    if m["key"] is not None:  # metadata['KEY']:'VALUE' -- exact, case-sensitive
        key = _unquote(m["key"])
        if op != ":" or m["str"] is None:
            raise _search_error()
        value = _unquote(m["str"])

        def pred(pi: PaymentIntent) -> bool:
            return pi.metadata.get(key) == value
    else:
        name = m["field"]
        if name not in _PI_SEARCH_FIELDS:
            raise _search_error(
                f"Field `{name}` is an unsupported search field for resource "
                "`payment_intents`. See http://stripe.com/docs/search#query-fields-for-"
                "payment-intents for a list of supported fields.")
        kind, get = _PI_SEARCH_FIELDS[name]
        if kind == "number":
            if op == "~":
                raise _search_error()
            raw = m["num"] if m["num"] is not None else _unquote(m["str"])
            if not re.fullmatch(r"-?\d+", raw):
                raise _search_error()
            number = int(raw)

            def pred(pi: PaymentIntent) -> bool:
                return _compare(op, get(pi), number)
        else:
            if op != ":" or m["str"] is None:
                raise _search_error()
            token = _unquote(m["str"]).lower()

            def pred(pi: PaymentIntent) -> bool:
                value = get(pi)
                return value is not None and str(value).lower() == token
    return (lambda pi: not pred(pi)) if neg else pred


def parse_search_query(query: str) -> Predicate:
    """Compile a Search Query Language query over payment intents: clauses
    ``metadata['KEY']:'VALUE'`` / ``metadata["KEY"]:"VALUE"``, ``status:'...'``,
    ``currency:'...'``, ``customer:'...'``, ``amount`` / ``created`` with ``:``, ``>``,
    ``<``, ``>=``, ``<=``; ``-`` negates; joined by ``AND`` or by ``OR`` (not both, at
    most 10 clauses). Anything else raises Stripe's 400 ``invalid_request_error``."""
    clauses: list[Predicate] = []
    joins: set[str] = set()
    pos = 0
    while True:
        m = _CLAUSE.match(query, pos)
        if m is None:
            raise _search_error()
        clauses.append(_clause(m))
        pos = m.end()
        if query[pos:].strip() == "":
            break
        j = _JOIN.match(query, pos)
        if j is None:
            raise _search_error()
        joins.add(j[1])
        pos = j.end()
    if len(joins) > 1:
        raise _search_error("Using both AND and OR in the same search query is not supported.")
    if len(clauses) > MAX_SEARCH_CLAUSES:
        raise _search_error(f"A search query can contain at most {MAX_SEARCH_CLAUSES} "
                            "clauses.")
    combine = any if joins == {"OR"} else all
    return lambda pi: combine(c(pi) for c in clauses)


#: How long Stripe gives to respond to a new dispute in the simulator (Stripe's
#: ``evidence_details.due_by`` is set by the card network; 7-21 days is typical).
DISPUTE_RESPONSE_S = 14 * 24 * 3600


@dataclass
class Dispute:
    """Stripe's Dispute object (spec3 ``dispute``; required fields only, plus
    ``payment_intent``). ``status`` uses Stripe's own enum."""

    id: str
    amount: int
    currency: str
    charge: str
    payment_intent: str
    reason: str = "fraudulent"
    status: str = "needs_response"
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def open(self) -> bool:
        return self.status not in ("won", "lost", "warning_closed")

    def to_dict(self) -> dict[str, Any]:
        due = self.created + DISPUTE_RESPONSE_S
        return {
            "id": self.id, "object": "dispute", "amount": self.amount,
            "balance_transactions": [], "charge": self.charge, "created": self.created,
            "currency": self.currency, "evidence": {},
            "evidence_details": {"due_by": due if self.open else None,
                                 "has_evidence": False, "past_due": False,
                                 "submission_count": 0},
            "is_charge_refundable": False, "livemode": False, "metadata": {},
            "payment_intent": self.payment_intent, "reason": self.reason,
            "status": self.status,
        }
