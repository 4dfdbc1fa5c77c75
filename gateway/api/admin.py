"""Admin endpoints (``Authorization: Bearer <admin token>``; merchant keys get 403).

Routing: ``POST /admin/routing/reload``, ``GET /admin/routing``. Operator tools (SPEC 9.2,
:mod:`gateway.operator`): ``POST /admin/payments/{id}/sync`` (look it up at the provider
now) and ``POST /admin/payments/{id}/resolve`` (``{"status", "reason",
"provider_reference"?}``); both answer the payment object of ``GET /v1/payments/{id}``.
"""

from __future__ import annotations

import hmac
import math

from aiohttp import web

from gateway import logs, operator
from gateway.api.auth import authenticate_merchant, bearer_token
from gateway.api.errors import ApiError
from gateway.api.validation import parse_json_body
from gateway.appkeys import CONFIG, ORCHESTRATOR, ROUTING, STORE
from gateway.payment_types import Payment
from gateway.reconcile import Reconciler

routes = web.RouteTableDef()


def require_admin(request: web.Request) -> None:
    config = request.app[CONFIG]
    token = bearer_token(request)
    expected = config.admin_token
    if token is None:
        raise ApiError(401, "authentication_failed", "missing_admin_token",
                       "send 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
        return
    try:
        authenticate_merchant(request, config)
    except ApiError:
        raise ApiError(401, "authentication_failed", "invalid_admin_token",
                       "invalid admin token") from None
    raise ApiError(403, "authentication_failed", "admin_only",
                   "merchant API keys cannot use admin endpoints")


@routes.post("/admin/routing/reload")
async def reload_routing(request: web.Request) -> web.Response:
    require_admin(request)
    result = await request.app[ROUTING].reload("admin_api")
    body = {"result": "applied" if result.changed else ("unchanged" if result.ok else "rejected"),
            "version": result.version, "errors": list(result.errors)}
    return web.json_response(body, status=200 if result.ok else 422)


@routes.get("/admin/routing")
async def routing_info(request: web.Request) -> web.Response:
    require_admin(request)
    table = request.app[ROUTING].table
    return web.json_response({"version": table.version, "source": table.source,
                              "rules": [r.name for r in table.rules]})


def _refusal(exc: operator.OperatorRefused) -> ApiError:
    headers = ({"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
               if exc.retry_after is not None else None)
    return ApiError(exc.status, exc.type, exc.code, exc.message, param=exc.param,
                    headers=headers)


async def _operator_body(request: web.Request, action: str) -> dict[str, object]:
    """The strict-JSON body (400s as on the merchant API), counted as refused."""
    logs.payment_id_var.set(request.match_info["payment_id"])
    try:
        return parse_json_body(await request.read())
    except ApiError:
        operator.count(action, "refused")
        raise


@routes.post("/admin/payments/{payment_id}/sync")
async def sync_payment(request: web.Request) -> web.Response:
    """Look the payment up at its provider now; apply what it proves; 200 with the
    payment (also unchanged, e.g. in a final status); 409 while a request or a
    reconciliation owns it; 503 + Retry-After when the provider does not answer."""
    require_admin(request)
    body = await _operator_body(request, "sync")
    if body:
        operator.count("sync", "refused")
        key = next(iter(body))
        raise ApiError(400, "invalid_request", "parameter_unknown",
                       f"unknown parameter {key}: sync takes no parameters", param=str(key))
    reconciler = Reconciler(request.app[CONFIG], request.app[STORE], request.app[ORCHESTRATOR])
    try:
        synced = await operator.sync(reconciler, request.match_info["payment_id"])
    except operator.OperatorRefused as exc:
        raise _refusal(exc) from None
    return web.json_response(Payment.public_of(synced.payment),
                             headers={"Gateway-Sync-Result": synced.result})


@routes.post("/admin/payments/{payment_id}/resolve")
async def resolve_payment(request: web.Request) -> web.Response:
    """An operator's verdict on an unresolved payment, along the state machine's edges."""
    require_admin(request)
    body = await _operator_body(request, "resolve")
    store, orch = request.app[STORE], request.app[ORCHESTRATOR]
    try:
        resolution = operator.parse_resolution(body)
    except operator.OperatorRefused as exc:
        operator.count("resolve", "refused")
        raise _refusal(exc) from None
    try:
        doc = await operator.resolve(store, orch.writer, request.app[CONFIG],
                                     request.match_info["payment_id"], resolution)
    except operator.OperatorRefused as exc:
        raise _refusal(exc) from None
    return web.json_response(Payment.public_of(doc))
