"""Admin endpoints (``Authorization: Bearer <admin token>``; merchant keys get 403)."""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.api.auth import authenticate_merchant, bearer_token
from gateway.api.errors import ApiError
from gateway.appkeys import CONFIG, ROUTING

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
