"""State of the Adyen simulator: payments, modifications, Adyen error envelopes.

Currencies and their decimals come from Adyen's own published table,
``providers/adyen/published/currencyList.mjs`` (Adyen/adyen-salesforce-headless-commerce-pwa,
MIT), read by the small parser here -- never from the adapter's copy. ``amount.value``
counts in those decimals; a currency Adyen does not list is refused with 422
``138 Unsupported currency specified``. The charges view converts values to ISO 4217
minor units (:mod:`providers.simulator.iso_units`).

Adyen error bodies look like ``{"status": 422, "errorCode": "167", "message":
"Original pspReference required for this operation", "errorType": "validation",
"pspReference": "..."}``. The error codes used here follow Adyen's documented list
where known (000, 010, 100, 101, 130, 137, 167, 800, 901, 704); they are close to,
not guaranteed identical with, what the live platform returns for each case.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from providers.simulator.iso_units import wire_to_iso
from providers.simulator.ledger import ChargeView
from providers.simulator.tokens import CardBehavior, SandboxCard, resolve_token

B = CardBehavior

#: Adyen test card numbers (docs "Test card numbers"), usable as
#: ``encryptedCardNumber: "test_<number>"`` / ``number`` / ``storedPaymentMethodId``.
ADYEN_TEST_CARDS: Mapping[str, SandboxCard] = {
    "4111111145551142": SandboxCard(B.APPROVE, "visa", "1142"),
    "5555341244441115": SandboxCard(B.APPROVE, "mc", "1115"),
    "2222400070000005": SandboxCard(B.APPROVE, "mc", "0005"),
    "370000000000002": SandboxCard(B.APPROVE, "amex", "0002"),
    "4917610000000000": SandboxCard(B.REQUIRES_ACTION, "visa", "0000"),  # 3DS2 challenge
    "5454545454545454": SandboxCard(B.REQUIRES_ACTION, "mc", "5454"),  # 3DS2 challenge
}

#: behaviour -> (resultCode, refusalReason, refusalReasonCode)
REFUSALS: Mapping[CardBehavior, tuple[str, str]] = {
    B.DECLINE: ("Refused", "2"),
    B.INSUFFICIENT_FUNDS: ("Not enough balance", "12"),
}


#: Adyen's published currency table (JavaScript module, vendored unchanged).
CURRENCY_LIST = Path(__file__).resolve().parent / "published" / "currencyList.mjs"
_ENTRY = re.compile(r"\{([^{}]*)\}")
_FIELD = re.compile(r"(\w+)\s*:\s*'([^']*)'")


def parse_currency_list(text: str) -> dict[str, int]:
    """``{code: decimals}`` from ``currencyList.mjs`` (an array of object literals
    ``{ Code: 'EUR', Currency: 'Euro', Decimals: '2' }``); ValueError when malformed."""
    table: dict[str, int] = {}
    for entry in _ENTRY.findall(text):
        fields = dict(_FIELD.findall(entry))
        code, decimals = fields.get("Code"), fields.get("Decimals")
        if not code or not re.fullmatch(r"[A-Z]{3}", code) or not decimals \
                or not decimals.isdigit():
            raise ValueError(f"unexpected entry in Adyen's currency list: {entry.strip()!r}")
        table[code] = int(decimals)
    if not table or len(table) != text.count("Code:"):
        raise ValueError("Adyen's currency list could not be read completely")
    return table


@cache
def adyen_decimals() -> dict[str, int]:
    return parse_currency_list(CURRENCY_LIST.read_text(encoding="utf-8"))


class AdyenApiError(Exception):
    """An error answer in Adyen's envelope."""

    def __init__(self, status: int, error_code: str, message: str,
                 error_type: str = "validation") -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.error_type = error_type

    def body(self, psp: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "errorCode": self.error_code,
                               "message": self.message, "errorType": self.error_type}
        if psp:
            out["pspReference"] = psp
        return out


def invalid(message: str, code: str = "000", status: int = 422) -> AdyenApiError:
    return AdyenApiError(status, code, message, "validation")


UNAUTHORIZED = AdyenApiError(401, "000", "HTTP Status Response - Unauthorized", "security")


def new_psp(rng: random.Random) -> str:
    """A 16-character pspReference (Adyen's are 16 alphanumerics, often digits)."""
    return "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(16))


def new_redirect_result(rng: random.Random) -> str:
    """An opaque ``redirectResult`` (Adyen's are long base64-like strings, e.g. the
    published example ``X6XtfGC3!Y...``)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!+/="
    return "".join(rng.choice(alphabet) for _ in range(64))


def card_for(payment_method: Any) -> tuple[SandboxCard, str]:
    """Resolve ``paymentMethod`` to a card; returns ``(card, token)`` or raises 422."""
    if not isinstance(payment_method, Mapping):
        raise invalid("Required object 'paymentMethod' is not provided.")
    pm_type = payment_method.get("type", "scheme")
    if pm_type not in ("scheme", "card", None):
        raise invalid(f"Unsupported payment method type {pm_type!r}", "905")
    stored = payment_method.get("storedPaymentMethodId")
    number = payment_method.get("encryptedCardNumber") or payment_method.get("number")
    if isinstance(stored, str) and stored:
        card = resolve_token(stored, ADYEN_TEST_CARDS)
        if card is None:
            raise invalid("Contract not found", "800")
        return card, stored
    if isinstance(number, str) and number:
        digits = number.removeprefix("test_").replace(" ", "")
        card = resolve_token(number, ADYEN_TEST_CARDS) or ADYEN_TEST_CARDS.get(digits)
        if card is None:
            raise invalid("Invalid card number", "101")
        return card, number
    raise invalid("Missing payment method details: storedPaymentMethodId or card number",
                  "000")


def parse_amount(raw: Any, *, required: bool = True) -> tuple[int, str] | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, Mapping):
        raise invalid("No amount specified", "100")
    value, currency = raw.get("value"), raw.get("currency")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise invalid("Invalid amount specified", "137")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise invalid(f"Invalid currency: {currency!r}", "000")
    if currency.upper() not in adyen_decimals():
        raise invalid("Unsupported currency specified", "138")
    return value, currency.upper()


@dataclass
class SimPayment:
    psp: str
    merchant_account: str
    reference: str
    amount: int
    currency: str
    card: SandboxCard
    manual: bool
    result_code: str
    refusal_reason: str | None = None
    refusal_code: str | None = None
    captured: int = 0
    refunded: int = 0
    cancelled: bool = False
    modifications: list[str] = field(default_factory=list)
    #: the request's returnUrl: where the 3-D Secure page sends the shopper back
    return_url: str | None = None

    @property
    def authorised(self) -> bool:
        return self.result_code == "Authorised"

    def status(self) -> str:
        """The status string the charges view reports (Adyen journal-like)."""
        if not self.authorised:
            return self.result_code
        if self.cancelled:
            return "Cancelled"
        if self.refunded:
            return "Refunded" if self.refunded >= self.captured else "PartiallyRefunded"
        if self.captured:
            return "SentForSettle"
        return "Authorised"

    def iso(self, value: int) -> int | float:
        """An ``amount.value`` (Adyen's decimals) as ISO 4217 minor units."""
        return wire_to_iso(value, adyen_decimals()[self.currency], self.currency)

    def view(self) -> ChargeView:
        return ChargeView(self.psp, self.iso(self.amount), self.currency, self.status(),
                          self.iso(self.captured), self.iso(self.refunded))

    def amount_dict(self, value: int | None = None) -> dict[str, Any]:
        return {"currency": self.currency, "value": self.amount if value is None else value}

    def payment_response(self, action: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "additionalData": {"paymentMethod": self.card.brand,
                               "cardSummary": self.card.last4},
            "amount": self.amount_dict(),
            "merchantReference": self.reference,
            "paymentMethod": {"brand": self.card.brand, "type": "scheme"},
            "pspReference": self.psp,
            "resultCode": self.result_code,
        }
        if self.authorised:
            body["additionalData"]["authCode"] = "065696"
        if self.refusal_reason is not None:
            body["refusalReason"] = self.refusal_reason
            body["refusalReasonCode"] = self.refusal_code
        if action is not None:
            body["action"] = action
        return body

    # ---------------------------------------------------------------- modifications

    def _require_open_authorisation(self) -> None:
        if not self.authorised:
            raise invalid("Original pspReference required for this operation", "167")
        if self.cancelled:
            raise invalid("Not allowed: the payment was cancelled", "010")

    def capture(self, value: int) -> None:
        self._require_open_authorisation()
        if self.captured + value > self.amount:
            raise invalid("Invalid amount specified: capture exceeds the authorised amount",
                          "137")
        self.captured += value

    def cancel(self) -> None:
        self._require_open_authorisation()
        if self.captured:
            raise invalid("Not allowed: the payment was already captured", "010")
        self.cancelled = True

    def refund(self, value: int) -> None:
        if not self.authorised:
            raise invalid("Original pspReference required for this operation", "167")
        if self.captured == 0:
            raise invalid("Not allowed: nothing was captured", "010")
        if self.refunded + value > self.captured:
            raise invalid("Invalid amount specified: refund exceeds the captured amount",
                          "137")
        self.refunded += value


#: Days of the defence period the simulator gives (``defensePeriodEndsAt``).
DEFENSE_PERIOD_DAYS = 14


@dataclass
class SimDispute:
    """A chargeback on a payment, in the terms of Adyen's dispute notifications
    (Webhooks-v1 ``DisputesNotificationAdditionalData``): its own ``psp``, the
    ``disputeStatus`` enum, a Visa fraud reason code."""

    psp: str
    payment: SimPayment
    value: int  # Adyen's decimals, like amount.value
    defense_period_ends_at: str
    dispute_status: str = "Undefended"
    reason_code: str = "10.4"

    @property
    def open(self) -> bool:
        return self.dispute_status not in ("Won", "Lost", "Accepted", "Expired")

    def additional_data(self) -> dict[str, str]:
        """All strings, as the published schema has them."""
        scheme = {"visa": "visa", "mastercard": "mc", "amex": "amex"}.get(
            self.payment.card.brand, self.payment.card.brand)
        return {
            "chargebackReasonCode": self.reason_code,
            "chargebackSchemeCode": scheme,
            "defendable": "true" if self.open else "false",
            "defensePeriodEndsAt": self.defense_period_ends_at,
            "disputeStatus": self.dispute_status,
            "grossCurrency": self.payment.currency,
            "grossValue": str(self.value),
            "paymentMethodVariant": scheme,
        }
