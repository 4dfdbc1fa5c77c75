"""What a follow-up operation (capture, void, refund, confirm) answers when it cannot be
done: the errors the API maps to HTTP statuses."""

from __future__ import annotations

from providers.base import ProviderFault


class OperationError(Exception):
    """A follow-up operation cannot be done; maps to an HTTP error."""

    http_status = 409
    type = "invalid_state"

    param: str | None = None

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidAmount(OperationError):
    """The provider cannot be sent this amount exactly (its wire units): HTTP 400, nothing
    sent, nothing changed."""

    http_status = 400
    type = "invalid_request"
    param = "amount"

    def __init__(self, message: str) -> None:
        super().__init__("amount_not_representable", message)


class ProviderUnavailable(OperationError):
    """The provider failed safely; nothing changed. HTTP 503 with Retry-After."""

    http_status = 503
    type = "provider_unavailable"

    @classmethod
    def of(cls, provider: str, fault: ProviderFault) -> ProviderUnavailable:
        return cls("provider_unavailable",
                   f"{provider} is unavailable ({fault.error_code}); nothing was changed")
