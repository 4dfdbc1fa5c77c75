"""Admission control (issue #15 item 5): a bound on the payment operations one process
has in progress, so that past its capacity the gateway sheds work instead of taking more
than it can do (latency of everyone rising, pools exhausted, payments left pending).

A payment operation is a request that may call a provider: ``POST /v1/payments`` (a new
authorization, or the replay of one), and the follow-ups ``capture``, ``void``,
``refunds`` and ``confirm`` of a payment. While ``admission.max_in_flight`` of them are
in progress in this process, the next one is answered at once ``503`` with
``Retry-After`` (``admission.retry_after_s``) and error code ``gateway_overloaded``,
before its handler runs: nothing is stored, no idempotency key is claimed, no provider is
called, so the merchant may retry with the same Idempotency-Key (the 503 is not
remembered). Every shed request counts in ``gateway_requests_shed_total{operation}``.
Reads, webhooks, health and admin endpoints are never shed (they are cheap, and a
provider's webhook must not be refused for the merchants' load).

The check is one integer comparison on the event loop (no lock: the loop is one thread),
so a shed answer costs little more than reading the request. Sizing: in-flight =
throughput x latency (Little's law); see ``AdmissionSettings`` in :mod:`gateway.config`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from gateway import metrics
from gateway.api.errors import ApiError
from providers.base import Operation

#: The operations counted and shed, as labels of gateway_requests_shed_total.
OPERATIONS: Final = (Operation.AUTHORIZE, Operation.CAPTURE, Operation.VOID, Operation.REFUND,
                     Operation.CONFIRM)

#: (method, route template) -> operation
_ROUTES: Final[dict[tuple[str, str], Operation]] = {
    ("POST", "/v1/payments"): Operation.AUTHORIZE,
    ("POST", "/v1/payments/{payment_id}/capture"): Operation.CAPTURE,
    ("POST", "/v1/payments/{payment_id}/void"): Operation.VOID,
    ("POST", "/v1/payments/{payment_id}/refunds"): Operation.REFUND,
    ("POST", "/v1/payments/{payment_id}/confirm"): Operation.CONFIRM,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def operation_of(method: str, route: str) -> Operation | None:
    """The payment operation a request is (``route``: its route template), else None."""
    return _ROUTES.get((method, route))


class Admission:
    """Counts the payment operations in progress in this process against ``limit``."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if retry_after_s < 1:
            raise ValueError("retry_after_s must be >= 1")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._in_flight = 0
        # every operation's series exists from the start, at 0 (the alert's increase())
        self._shed = {op: metrics.REQUESTS_SHED.labels(op) for op in OPERATIONS}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_enter(self, operation: Operation) -> bool:
        """Take a place for ``operation``; False (and counted as shed) when none is left.
        Every True must be followed by one :meth:`leave`."""
        if self._in_flight >= self.limit:
            self._shed[operation].inc()
            return False
        self._in_flight += 1
        return True

    def leave(self) -> None:
        self._in_flight -= 1

    def refusal(self) -> ApiError:
        return ApiError(
            503, "internal", "gateway_overloaded",
            f"the gateway has {self.limit} payment operations in progress, its limit; "
            "nothing was done: retry after Retry-After seconds with the same "
            "Idempotency-Key", headers={"Retry-After": str(self.retry_after_s)})


ADMISSION: Final = web.AppKey("admission", Admission)


def _route(request: web.Request) -> str | None:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else None


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sheds payment operations past the app's :data:`ADMISSION` limit (placed inside
    ``request_context``, which turns the ApiError into the JSON 503 and counts it)."""
    if request.method != "POST":
        return await handler(request)
    route = _route(request)
    operation = operation_of(request.method, route) if route is not None else None
    admission = request.app.get(ADMISSION)
    if operation is None or admission is None:
        return await handler(request)
    if not admission.try_enter(operation):
        raise admission.refusal()
    try:
        return await handler(request)
    finally:
        admission.leave()


def install(app: web.Application, limit: int, retry_after_s: int = 1) -> Admission:
    """Create the app's admission control (call before the app is frozen) and return it;
    ``admission_middleware`` must be among the app's middlewares."""
    admission = Admission(limit, retry_after_s)
    app[ADMISSION] = admission
    return admission
