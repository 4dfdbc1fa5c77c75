"""Liveness, readiness and the metrics endpoint."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import metrics
from gateway.api.openapi import OPENAPI
from gateway.appkeys import ORCHESTRATOR, STORE

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    store_ok = await request.app[STORE].ping()
    config_ok = ORCHESTRATOR in request.app
    ok = store_ok and config_ok
    return web.json_response(
        {"status": "ready" if ok else "not_ready",
         "checks": {"store": store_ok, "config": config_ok}},
        status=200 if ok else 503,
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


metrics_handler = make_aiohttp_handler(metrics.exposition_registry())
