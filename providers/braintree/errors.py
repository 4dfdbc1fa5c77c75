"""Braintree SDK exceptions and validation errors -> gateway outcomes (SPEC section 5).

Exceptions are *never* declines. :func:`translate` returns the fault to raise:

| SDK exception                                   | fault                                   |
|-------------------------------------------------|-----------------------------------------|
| AuthenticationError (401) / AuthorizationError (403) | RejectedSafe provider_auth_error   |
| TooManyRequestsError (429)                      | RejectedSafe rate_limited               |
| UpgradeRequiredError (426)                      | RejectedSafe provider_config_error: the |
|                                                 | API version was refused, nothing ran    |
| ConfigurationError                              | RejectedSafe provider_config_error      |
|                                                 | (raised before anything is sent)        |
| NotFoundError (404)                             | RejectedSafe not_found                  |
| ServerError (500) / ServiceUnavailableError (503) | Ambiguous http_<status>              |
| / GatewayTimeoutError (504)                     |                                         |
| RequestTimeoutError (408, or "search timeout")  | Ambiguous request_timeout               |
| http.ConnectTimeoutError                        | RejectedSafe connect_timeout            |
| http.ReadTimeoutError                           | Ambiguous read_timeout                  |
| http.ConnectionError                            | by cause chain: refused/DNS/TLS ->      |
|                                                 | RejectedSafe, remote disconnected /     |
|                                                 | reset -> Ambiguous, unknown -> Ambiguous|
| http.InvalidResponseError / other http.TimeoutError | Ambiguous                           |
| UnexpectedError "Unexpected HTTP_RESPONSE <n>"  | classify_http_status(n), else Ambiguous |
| anything else (bad XML, AttributeError, ...)    | cause chain, else Ambiguous             |
|                                                 | unclassified_error                      |

With ``wrap_http_exceptions=True`` the SDK raises its wrapper *inside* the ``except``
clause that caught the ``requests`` error and passes that error as the argument, so
the whole chain (``requests.ConnectionError -> MaxRetryError -> NewConnectionError ->
ConnectionRefusedError``, or ``-> ProtocolError -> RemoteDisconnected``) survives and
:func:`providers.faults.classify_transport_error` can walk it. A connection refused
is reported as ``connection_refused`` here whatever order the shared table uses
(urllib3's NewConnectionError subclasses its ConnectTimeoutError).

Validation errors (an ``ErrorResult`` without a transaction) are definite refusals
and become ``DECLINED`` results; :func:`validation_failure_code` names them.
"""

from __future__ import annotations

import re

import braintree.exceptions as bte
from braintree.exceptions.http.connection_error import ConnectionError as BtConnectionError
from braintree.exceptions.http.invalid_response_error import InvalidResponseError
from braintree.exceptions.http.timeout_error import ConnectTimeoutError, ReadTimeoutError
from braintree.exceptions.http.timeout_error import TimeoutError as BtTimeoutError

from providers.base import Ambiguous, NotFound, ProviderFault, RejectedSafe
from providers.faults import (
    UNCLASSIFIED,
    classify_http_status,
    classify_transport_error,
    exception_chain,
)

# ------------------------------------------------------------------ validation codes

#: Error codes that mean "not allowed in the transaction's current state".
INVALID_STATE_CODES: frozenset[str] = frozenset({
    "91504",   # CannotBeVoided
    "91505",   # CannotRefundCredit
    "91506",   # CannotRefundUnlessSettled
    "91507",   # CannotSubmitForSettlement
    "91512",   # HasAlreadyBeenRefunded
    "91574",   # CannotRefundSettlingTransaction
    "915103",  # CannotSubmitForPartialSettlement
})
#: Error codes that mean "more than is available".
AMOUNT_TOO_LARGE_CODES: frozenset[str] = frozenset({
    "91521",   # RefundAmountIsTooLarge
    "91522",   # SettlementAmountIsTooLarge
    "81528",   # AmountIsTooLarge
})
#: api_request_key reused with other parameters: the first request may have run.
IDEMPOTENCY_MISMATCH = "915232"
#: api_request_key still in flight (retryable per Braintree's docs).
IDEMPOTENCY_IN_FLIGHT = "915233"
#: Braintree's idempotency layer hit a server error for this key (retryable).
IDEMPOTENCY_SERVER_ERROR = "915235"


def validation_failure_code(codes: list[str], *, authorize: bool) -> str:
    """The gateway failure code for a validation ErrorResult with these error codes."""
    if authorize:
        return "invalid_request"
    if any(c in AMOUNT_TOO_LARGE_CODES for c in codes):
        return "amount_too_large"
    if any(c in INVALID_STATE_CODES for c in codes):
        return "invalid_state"
    return "invalid_request"


def idempotency_fault(codes: list[str], message: str) -> ProviderFault | None:
    """Validation errors of the api_request_key layer are faults, not refusals."""
    if IDEMPOTENCY_MISMATCH in codes:
        return Ambiguous("idempotency_key_mismatch", message)
    if IDEMPOTENCY_IN_FLIGHT in codes:
        return Ambiguous("idempotency_conflict", message)
    if IDEMPOTENCY_SERVER_ERROR in codes:
        return Ambiguous("idempotency_server_error", message)
    return None


# ------------------------------------------------------------------ exceptions

_STATUS_IN_MESSAGE = re.compile(r"HTTP_RESPONSE\s+(\d{3})")

#: Exact HTTP-status exceptions of the SDK (most specific first).
_HTTP_EXCEPTIONS: tuple[tuple[type[BaseException], int], ...] = (
    (bte.AuthenticationError, 401),
    (bte.AuthorizationError, 403),
    (bte.TooManyRequestsError, 429),
    (bte.ServerError, 500),
    (bte.ServiceUnavailableError, 503),
    (bte.GatewayTimeoutError, 504),
)


def _transport(exc: BaseException) -> ProviderFault:
    for link in exception_chain(exc):
        if isinstance(link, ConnectionRefusedError):  # before urllib3's timeout subclassing
            return RejectedSafe("connection_refused", "request not sent: connection refused")
    return classify_transport_error(exc)


def translate(exc: BaseException) -> ProviderFault:
    """The fault for an exception raised by a Braintree SDK call. Never a decline."""
    if isinstance(exc, ProviderFault):
        return exc
    for typ, status in _HTTP_EXCEPTIONS:
        if isinstance(exc, typ):
            fault = classify_http_status(status)
            assert fault is not None
            return fault
    if isinstance(exc, bte.NotFoundError):
        return NotFound(str(exc) or "not found", status=404)
    if isinstance(exc, bte.UpgradeRequiredError):
        return RejectedSafe("provider_config_error", "API version refused (426)", status=426)
    if isinstance(exc, bte.ConfigurationError):
        return RejectedSafe("provider_config_error", str(exc) or "SDK configuration error")
    if isinstance(exc, bte.RequestTimeoutError):
        return Ambiguous("request_timeout", str(exc) or "request timeout (408)", status=408)
    if isinstance(exc, ConnectTimeoutError):
        return RejectedSafe("connect_timeout", "request not sent: connect timeout")
    if isinstance(exc, ReadTimeoutError):
        return Ambiguous("read_timeout", "outcome unknown: read timeout")
    if isinstance(exc, BtConnectionError):
        return _transport(exc)
    if isinstance(exc, InvalidResponseError | BtTimeoutError):
        fault = _transport(exc)
        if fault.error_code == UNCLASSIFIED:
            return Ambiguous("invalid_response", f"outcome unknown: {type(exc).__name__}")
        return fault
    if isinstance(exc, bte.UnexpectedError):
        match = _STATUS_IN_MESSAGE.search(str(exc))
        if match:
            status = int(match.group(1))
            return classify_http_status(status) or Ambiguous(
                f"http_{status}", f"unexpected HTTP status {status}", status=status)
        return _transport(exc)
    fault = _transport(exc)
    if fault.error_code == UNCLASSIFIED:
        return Ambiguous(UNCLASSIFIED, f"outcome unknown: {type(exc).__name__}")
    return fault
