"""Request id, metrics, access log and the JSON error boundary for every request."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from gateway import logs, metrics
from gateway.api.errors import ApiError
from gateway.appkeys import CONFIG
from gateway.http_server import guard_of, read_body_within
from gateway.store import StoreError
from gateway.store.pool import request_scope

log = logging.getLogger("gateway.http")

_HTTP_ERRORS = {
    404: ("not_found", "route_not_found", "no such endpoint"),
    405: ("invalid_request", "method_not_allowed", "method not allowed on this endpoint"),
    413: ("invalid_request", "body_too_large", "request body too large"),
}

#: Not counted in the store's per-request budget (they use its background reserve):
#: readiness must not turn red because payments fill the budget.
_UNBUDGETED = frozenset({"/healthz", "/readyz", "/metrics"})


def _route(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def _check_encoding(request: web.Request) -> None:
    """Bodies are accepted uncompressed only (SPEC 12.1): a compressed body would be
    inflated before any size limit applies, and garbage in it must not reach a parser."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(400, "invalid_request", "unsupported_content_encoding",
                       "send the body uncompressed (Content-Encoding: identity)",
                       param="Content-Encoding")


async def _read_body(request: web.Request) -> None:
    """The whole body within ``server.body_timeout_s`` (a slow body holds a connection
    and a handler): else 408 and the connection is closed."""
    timeout_s = request.app[CONFIG].server.body_timeout_s
    try:
        await read_body_within(request, timeout_s)
    except TimeoutError:
        metrics.HTTP_CONNECTIONS_CLOSED.labels("body_timeout").inc()
        raise ApiError(408, "invalid_request", "request_timeout",
                       f"the request body did not arrive within {timeout_s:g} s",
                       headers={"Connection": "close"}) from None


@web.middleware
async def request_context(request: web.Request, handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")
    if not (0 < len(rid) <= 64 and rid.isprintable()):
        rid = "req_" + uuid.uuid4().hex[:20]
    logs.request_id_var.set(rid)
    logs.payment_id_var.set(request.match_info.get("payment_id"))
    t0 = time.perf_counter()
    route = _route(request)
    status = 500
    guard = guard_of(request)
    if guard is not None:
        guard.request_started(request.transport)
    try:
        try:
            _check_encoding(request)
            await _read_body(request)
            if route in _UNBUDGETED:
                response = await handler(request)
            else:  # its first store operation takes its store place (gateway.store.pool)
                with request_scope():
                    response = await handler(request)
        except ApiError as err:
            response = err.response()
            if err.status == 408:
                response.force_close()  # the rest of that body must not be read as a request
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            typ, code, message = _HTTP_ERRORS.get(
                exc.status, ("invalid_request", "http_error", exc.reason))
            response = ApiError(exc.status, typ, code, message).response()
        except StoreError as exc:
            # The store cannot be reached or cannot take the write: nothing was decided
            # that is not already recorded (write-ahead), so the same request may be
            # retried with the same Idempotency-Key.
            log.error("store unavailable", extra={"route": route, "reason": str(exc)})
            response = ApiError(503, "internal", "store_unavailable",
                                "the payment store is unavailable; retry with the same "
                                "Idempotency-Key", headers={"Retry-After": "2"}).response()
        except Exception:
            log.exception("unhandled error", extra={"route": route})
            response = ApiError(500, "internal", "internal_error",
                                "internal error; the request may be retried with the same "
                                "Idempotency-Key").response()
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    finally:
        if guard is not None:
            guard.request_finished(request.transport)
        elapsed = time.perf_counter() - t0
        metrics.child(metrics.HTTP_REQUESTS, request.method, route, str(status)).inc()
        metrics.child(metrics.HTTP_DURATION, route).observe(elapsed)
        if route not in ("/metrics", "/healthz", "/readyz") and log.isEnabledFor(logging.INFO):
            log.info("request", extra={"method": request.method, "route": route,
                                       "status": status, "duration_ms": round(elapsed * 1000, 1)})
