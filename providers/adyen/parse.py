"""Adyen Checkout answers -> :class:`ProviderResult` / :class:`RefundResult`.

Refusals (``resultCode: Refused``) are HTTP 200 answers, not exceptions: they become
``ProviderResult(DECLINED, declined, failure=Failure("card_declined", refusalReason,
decline_code, provider_code=refusalReasonCode))``. ``decline_code`` uses the
Stripe-style vocabulary the gateway exposes; :data:`REFUSAL_DECLINE_CODES` maps
Adyen's documented ``refusalReasonCode`` values (docs "Refusal reasons"); an
unlisted code becomes ``generic_decline`` (still a definite decline).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers import next_action as normalized_action
from providers.adyen.amounts import from_wire
from providers.adyen.errors import Refusal
from providers.adyen.status import (
    Modification,
    map_payment_modification,
    map_refund_modification,
    map_result_code,
)
from providers.amounts import AmountError
from providers.base import Failure, Outcome, ProviderResult, RefundResult
from providers.statuses import PaymentStatus, RefundStatus

P = PaymentStatus

#: Adyen refusalReasonCode -> gateway decline_code.
REFUSAL_DECLINE_CODES: Mapping[str, str] = {
    "2": "generic_decline",  # Refused
    "3": "call_issuer",  # Referral
    "4": "processing_error",  # Acquirer Error
    "5": "blocked_card",  # Blocked Card
    "6": "expired_card",  # Expired Card
    "7": "invalid_amount",  # Invalid Amount
    "8": "incorrect_number",  # Invalid Card Number
    "9": "issuer_not_available",  # Issuer Unavailable
    "10": "card_not_supported",  # Not supported
    "11": "authentication_failed",  # 3D Not Authenticated
    "12": "insufficient_funds",  # Not enough balance
    "14": "fraudulent",  # Acquirer Fraud
    "15": "cancelled",  # Cancelled
    "16": "cancelled",  # Shopper Cancelled
    "17": "incorrect_pin",  # Invalid Pin
    "18": "pin_try_exceeded",  # Pin tries exceeded
    "19": "incorrect_pin",  # Pin validation not possible
    "20": "fraudulent",  # FRAUD
    "21": "processing_error",  # Not Submitted
    "22": "fraudulent",  # FRAUD-CANCELLED
    "23": "transaction_not_allowed",  # Transaction Not Permitted
    "24": "incorrect_cvc",  # CVC Declined
    "25": "restricted_card",  # Restricted Card
    "26": "revocation_of_authorization",  # Revocation Of Auth
    "27": "generic_decline",  # Declined Non Generic
    "28": "withdrawal_count_limit_exceeded",  # Withdrawal amount exceeded
    "29": "withdrawal_count_limit_exceeded",  # Withdrawal count exceeded
    "31": "fraudulent",  # Issuer Suspected Fraud
    "32": "incorrect_address",  # AVS Declined
    "38": "authentication_required",  # Authentication required
}


def decline_code_for(refusal_reason_code: Any) -> str:
    return REFUSAL_DECLINE_CODES.get(str(refusal_reason_code), "generic_decline")


def iso_amount(body: Mapping[str, Any]) -> int | None:
    """``body["amount"]`` (Adyen's decimals) in ISO minor units of its currency; None
    when absent or not exactly convertible."""
    amount = body.get("amount")
    if isinstance(amount, Mapping):
        value, currency = amount.get("value"), amount.get("currency")
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(currency, str):
            try:
                return from_wire(value, currency)
            except (AmountError, ValueError):
                return None
    return None


def amount_currency(body: Mapping[str, Any]) -> str | None:
    amount = body.get("amount")
    currency = amount.get("currency") if isinstance(amount, Mapping) else None
    return currency.upper() if isinstance(currency, str) else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_payment(body: Mapping[str, Any], *, amount: int, capture_manual: bool,
                  return_url: str | None = None) -> ProviderResult:
    """A ``/payments`` (or ``/payments/details``) answer (HTTP 200) -> result. ``amount``
    is what was requested; ``return_url`` the ``returnUrl`` sent (for ``next_action``)."""
    raw = body.get("resultCode")
    psp = _str(body.get("pspReference"))
    raw_status = raw if isinstance(raw, str) else None
    status, _mapped = map_result_code(raw_status, capture_manual=capture_manual)
    if status is P.DECLINED or status is P.FAILED:
        reason = str(body.get("refusalReason") or raw_status or "refused")
        rcode = _str(body.get("refusalReasonCode"))
        if status is P.FAILED:
            failure = Failure("processing_error", reason, None, rcode)
        elif raw_status == "Cancelled":
            failure = Failure("card_declined", reason, "cancelled", rcode)
        else:
            failure = Failure("card_declined", reason, decline_code_for(rcode), rcode)
        return ProviderResult(Outcome.DECLINED, status, psp, raw_status, failure=failure)
    authorized: int | None = None
    captured: int | None = None
    if status in (P.AUTHORIZED, P.CAPTURED):
        authorized = iso_amount(body) if raw_status == "PartiallyAuthorised" else None
        authorized = authorized if authorized is not None else amount
        captured = authorized if status is P.CAPTURED else None
    action = body.get("action")
    next_action = normalized_action.adyen(action, return_url) \
        if status is P.REQUIRES_ACTION and isinstance(action, Mapping) else None
    return ProviderResult(Outcome.SUCCEEDED, status, psp, raw_status, authorized, captured,
                          next_action=next_action)


def parse_payment_modification(kind: Modification, body: Mapping[str, Any], *,
                               payment_psp: str | None) -> ProviderResult:
    """A capture / cancel answer (HTTP 201 ``received``) -> ``*_pending``.

    ``provider_reference`` stays the PAYMENT's pspReference: the gateway acts on the
    payment by it. The modification's own pspReference (body ``pspReference``) comes
    back in the CAPTURE / CANCELLATION webhook, whose ``originalReference`` is the
    payment's pspReference."""
    raw = body.get("status")
    status, _mapped = map_payment_modification(kind, raw if isinstance(raw, str) else None)
    psp = _str(body.get("paymentPspReference")) or payment_psp
    return ProviderResult(Outcome.SUCCEEDED, status, psp, _str(raw))


def parse_refund(body: Mapping[str, Any]) -> RefundResult:
    """A refund answer (HTTP 201 ``received``) -> refund ``pending``; provider_reference
    is the refund modification's pspReference (REFUND webhooks carry it)."""
    raw = body.get("status")
    status, _mapped = map_refund_modification(raw if isinstance(raw, str) else None)
    return RefundResult(Outcome.SUCCEEDED, status, _str(body.get("pspReference")), _str(raw))


def declined_payment(refusal: Refusal, status: PaymentStatus) -> ProviderResult:
    return ProviderResult(Outcome.DECLINED, status, failure=refusal.failure)


def declined_refund(refusal: Refusal) -> RefundResult:
    return RefundResult(Outcome.DECLINED, RefundStatus.FAILED, failure=refusal.failure)
