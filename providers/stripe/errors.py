"""Stripe SDK exceptions -> gateway outcomes (SPEC section 5), one explicit table.

:func:`translate` returns either a :class:`ProviderFault` to raise (never a decline)
or a :class:`Refusal`: a definite answer carried by an error response (card decline,
invalid request / invalid state), which the adapter turns into a ``DECLINED`` result.

| SDK exception                       | result                                         |
|-------------------------------------|------------------------------------------------|
| CardError (402)                     | Refusal card_declined (+decline_code)          |
| RateLimitError (429, 400 rate_limit)| RejectedSafe rate_limited                      |
| AuthenticationError / PermissionError (401/403) | RejectedSafe provider_auth_error   |
| IdempotencyError (400 key reused with other params) | Ambiguous idempotency_key_mismatch: the |
|                                     | first request with that key may have run       |
| InvalidRequestError (400/404)       | Refusal invalid_state / invalid_request /      |
|                                     | not_found (provider_code = Stripe code)        |
| APIError 409 (key in use)           | Ambiguous idempotency_conflict                 |
| APIError >= 500                     | Ambiguous http_<status>                        |
| APIError other (bad body, ...)      | Ambiguous invalid_response                     |
| APIConnectionError                  | classify_transport_error (cause chain)         |
| anything else                       | classify_transport_error -> Ambiguous unless a |
|                                     | known connect-phase error is in the chain      |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from providers.base import Ambiguous, Failure, ProviderFault
from providers.faults import classify_http_status, classify_transport_error

#: Stripe error codes that mean "not allowed in the object's current state".
INVALID_STATE_CODES = frozenset({
    "payment_intent_unexpected_state", "charge_already_refunded", "charge_already_captured",
    "charge_not_refundable", "amount_too_large", "charge_expired_for_capture",
    "refund_disputed_payment",
})


@dataclass(frozen=True)
class Refusal:
    """A definite refusal from Stripe (no money moved by this request)."""

    failure: Failure
    http_status: int | None
    payment_intent: dict[str, Any] | None = None  # the intent echoed in the error, if any

    @property
    def not_found(self) -> bool:
        return self.http_status == 404 or self.failure.provider_code == "resource_missing"


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return {}


def _message(exc: stripe.StripeError, err: dict[str, Any]) -> str:
    return str(err.get("message") or exc.user_message or type(exc).__name__)


def _intent(err: dict[str, Any]) -> dict[str, Any] | None:
    pi = err.get("payment_intent")
    return pi if isinstance(pi, dict) else None


def translate(exc: BaseException) -> ProviderFault | Refusal:
    if not isinstance(exc, stripe.StripeError):
        return classify_transport_error(exc)
    status = exc.http_status
    err = _error_body(exc)
    code = err.get("code") or exc.code
    if isinstance(exc, stripe.CardError):
        return Refusal(
            Failure("card_declined", _message(exc, err), err.get("decline_code") or None,
                    code or "card_declined"),
            status, _intent(err),
        )
    if isinstance(exc, stripe.RateLimitError):
        return classify_http_status(429) or Ambiguous("rate_limited")
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return classify_http_status(status if status in (401, 403) else 401) or Ambiguous(
            "provider_auth_error")
    if isinstance(exc, stripe.IdempotencyError):
        return Ambiguous("idempotency_key_mismatch", _message(exc, err), status=status)
    if isinstance(exc, stripe.InvalidRequestError):
        if status == 404 or code == "resource_missing":
            kind = "not_found"
        elif code in INVALID_STATE_CODES:
            kind = "invalid_state"
        else:
            kind = "invalid_request"
        return Refusal(Failure(kind, _message(exc, err), None, code), status, _intent(err))
    if isinstance(exc, stripe.APIConnectionError):
        return classify_transport_error(exc)
    if isinstance(exc, stripe.APIError):
        if status == 409:
            return Ambiguous("idempotency_conflict", _message(exc, err), status=status)
        if status is not None and status >= 500:
            fault = classify_http_status(status)
            if fault is not None:
                return fault
        return Ambiguous("invalid_response", _message(exc, err), status=status)
    return Ambiguous("unclassified_error", f"unexpected {type(exc).__name__}", status=status)
