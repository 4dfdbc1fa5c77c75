"""Typed aiohttp application state keys (``app[CONFIG]`` etc.)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.http_server import ConnectionGuard
    from gateway.notifications import NotificationWorker
    from gateway.orchestrator import Orchestrator
    from gateway.routing_runtime import RoutingRuntime
    from gateway.store import Store
    from providers.base import Provider
    from routing.breaker import BreakerBoard

CONFIG: web.AppKey[GatewayConfig] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
ORCHESTRATOR: web.AppKey[Orchestrator] = web.AppKey("orchestrator")
PROVIDERS: web.AppKey[dict[str, Provider]] = web.AppKey("providers")
SANDBOX_PORTS: web.AppKey[dict[str, int]] = web.AppKey("sandbox_ports")
ROUTING: web.AppKey[RoutingRuntime] = web.AppKey("routing")
BREAKERS: web.AppKey[BreakerBoard] = web.AppKey("breakers")
PUBLIC_URL: web.AppKey[str] = web.AppKey("public_url", str)
CONNECTION_GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")
#: The merchant notification worker (its ``wake()`` sends a re-queued event at once).
NOTIFIER: web.AppKey[NotificationWorker] = web.AppKey("notifier")
