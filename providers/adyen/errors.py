"""Adyen SDK exceptions -> gateway outcomes (SPEC section 5), one explicit table.

The Adyen SDK raises an ``AdyenAPIResponseError`` subclass for every non-2xx answer
(``Adyen.client._raise_http_error``) and lets network errors from ``requests``
propagate unwrapped (``requests.ConnectionError`` wrapping urllib3's
``MaxRetryError(NewConnectionError)`` / ``ProtocolError(RemoteDisconnected)``, or
``requests.ReadTimeout``), with their cause chain intact.

:func:`translate` returns a :class:`ProviderFault` to raise (never a decline) or a
:class:`Refusal` -- a definite "not done" answer carried by an error response -- which
the adapter turns into a ``DECLINED`` result.

| exception / HTTP status                          | result                               |
|--------------------------------------------------|--------------------------------------|
| AdyenAPIAuthenticationError (401)                | RejectedSafe provider_auth_error     |
| AdyenAPIInvalidPermission (403, e.g. bad         | RejectedSafe provider_auth_error     |
|   merchantAccount "901")                         |                                      |
| AdyenAPIResponseError 429                        | RejectedSafe rate_limited            |
| AdyenAPIUnprocessableEntity 422, errorCode 704   | Ambiguous idempotency_conflict: the  |
|   (idempotency key in use / reused)              |   first request with the key may run |
| AdyenAPIValidationError (400) /                  | Refusal invalid_request (authorize)  |
|   AdyenAPIUnprocessableEntity (422)              |   or invalid_state (modifications);  |
|                                                  |   provider_code = Adyen errorCode    |
| AdyenAPICommunicationError 404                   | RejectedSafe provider_config_error:  |
|                                                  |   the endpoint does not exist (wrong |
|                                                  |   base URL / version), nothing ran.  |
|                                                  |   Deliberately NOT "not_found", which|
|                                                  |   would prove a lookup found nothing |
| status >= 500 (incl. CommunicationError 500)     | Ambiguous http_<status>              |
| other AdyenAPIResponseError (405, 409, 413, ...) | Ambiguous http_<status>              |
| other AdyenError (e.g. AdyenInvalidRequestError, | Ambiguous unclassified_error         |
|   raised before sending: missing credentials)    |                                      |
| requests / urllib3 / socket errors               | classify_transport_error: refused /  |
|                                                  |   DNS / connect timeout -> Rejected- |
|                                                  |   Safe; read timeout / disconnect -> |
|                                                  |   Ambiguous                          |
| anything else                                    | Ambiguous unclassified_error         |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import Adyen
from Adyen.exceptions import AdyenAPIResponseError, AdyenError

from providers.base import Ambiguous, Failure, ProviderFault, RejectedSafe
from providers.faults import classify_http_status, classify_transport_error

#: Adyen errorCode for "request already processed or in progress" (idempotency).
IDEMPOTENCY_ERROR_CODES = frozenset({"704"})


@dataclass(frozen=True)
class Refusal:
    """A definite refusal carried by a 400/422 answer (no money moved by this request)."""

    failure: Failure
    http_status: int | None


def error_body(exc: AdyenError) -> dict[str, Any]:
    body = exc.message
    return body if isinstance(body, dict) else {}


def _status(exc: AdyenError) -> int | None:
    status = exc.status_code
    if isinstance(status, int):
        return status
    try:
        return int(status)
    except (TypeError, ValueError):
        return None


def _message(exc: AdyenError, body: dict[str, Any]) -> str:
    msg = body.get("message")
    if isinstance(msg, str) and msg:
        return msg
    raw = exc.message if isinstance(exc.message, str) else ""
    return raw[:200] or type(exc).__name__


def translate(exc: BaseException, *, modification: bool = False) -> ProviderFault | Refusal:
    """Map one exception from an SDK call; ``modification`` selects the refusal code."""
    if not isinstance(exc, AdyenError):
        return classify_transport_error(exc)
    if not isinstance(exc, AdyenAPIResponseError):
        return Ambiguous("unclassified_error", f"unexpected {type(exc).__name__}")
    status = _status(exc)
    body = error_body(exc)
    code = body.get("errorCode") or exc.error_code or None
    code = str(code) if code is not None else None
    message = _message(exc, body)
    if isinstance(exc, Adyen.AdyenAPIAuthenticationError | Adyen.AdyenAPIInvalidPermission):
        fault = classify_http_status(status if status in (401, 403) else 401)
        return fault or RejectedSafe("provider_auth_error", message, status=status)
    if status == 429:
        return classify_http_status(429) or RejectedSafe("rate_limited", message, status=429)
    if status == 422 and code in IDEMPOTENCY_ERROR_CODES:
        return Ambiguous("idempotency_conflict", message, status=status)
    if status in (400, 422):
        kind = "invalid_state" if modification else "invalid_request"
        return Refusal(Failure(kind, message, None, code), status)
    if status == 404:
        return RejectedSafe("provider_config_error", f"endpoint not found: {message}",
                            status=status)
    if status is not None and status >= 500:
        return classify_http_status(status) or Ambiguous(f"http_{status}", message,
                                                         status=status)
    label = f"http_{status}" if status is not None else "unclassified_error"
    return Ambiguous(label, message, status=status)
