"""The aiohttp application factory: ``create_app(config)``.

Owned resources are opened and closed by ``cleanup_ctx`` in order: the in-process
simulators (only for providers marked ``sandbox: true``), the store, the provider
adapters and the orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from gateway import admission, metrics, notifications
from gateway.api import admin, admin_settlements, events, health, ledger, payments, webhooks
from gateway.api.middleware import request_context
from gateway.appkeys import (
    BREAKERS,
    CONFIG,
    ORCHESTRATOR,
    PROVIDERS,
    PUBLIC_URL,
    ROUTING,
    SANDBOX_PORTS,
    STORE,
)
from gateway.config import GatewayConfig
from gateway.orchestrator import Orchestrator
from gateway.provider_registry import build_providers, declaration_of, sandbox_types
from gateway.reconcile import Reconciler
from gateway.routing_runtime import RoutingRuntime
from gateway.store import Store, StoreError, make_store
from gateway.store.redis import RedisStore
from routing.breaker import BreakerBoard

log = logging.getLogger("gateway.app")


async def _sandbox_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    kinds = sandbox_types(config)
    if not kinds:
        app[SANDBOX_PORTS] = {}
        yield
        return
    from providers.sandbox import start_sandbox

    # The in-process simulators send their signed webhooks to this gateway (when its
    # public URL is known), signed with the secrets the gateway verifies with.
    hooks: dict[str, str] = {}
    secrets: dict[str, str] = {}
    public_url = app.get(PUBLIC_URL)
    for name, p in config.providers.items():
        if not p.sandbox or p.type in hooks:
            continue
        if public_url:
            hooks[p.type] = f"{public_url.rstrip('/')}/webhooks/{name}"
        signing_key = declaration_of(p).simulator_signing_key
        secret = p.credentials.get(signing_key) if signing_key else None
        if secret:
            secrets[p.type] = secret
    sim_host = await start_sandbox(
        config.sandbox_host, ports={k: 0 for k in kinds}, names=sorted(kinds),
        control_port=config.sandbox_control_port, webhook_urls=hooks, webhook_secrets=secrets,
    )
    app[SANDBOX_PORTS] = {k: v for k, v in sim_host.ports().items() if v is not None}
    log.info("in-process sandbox listening", extra={"ports": app[SANDBOX_PORTS],
                                                     "control_url": sim_host.control_url})
    try:
        yield
    finally:
        await sim_host.stop()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = make_store(config.store_url, pool_size=config.store_pool_size,
                       pool_timeout_s=config.store_pool_timeout_s)
    await store.open()
    try:
        await _check_durable(store, config)
        await _index_existing_payments(store)
    except BaseException:
        await store.close()
        raise
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}{port}", parts.path,
                       parts.query, parts.fragment))


async def _index_existing_payments(store: Store) -> None:
    """Redis: put payments stored before the search indexes existed into them, once (SPEC
    3.1; SQLite upgrades itself in ``open``). Runs before the gateway serves: about 90 s
    per million payments (18 s measured for 200,000); later starts find it done."""
    if not isinstance(store, RedisStore):
        return
    started = time.monotonic()
    indexed = await store.index_existing_payments()
    if indexed is not None:
        log.info("redis search index built", extra={
            "payments": indexed, "duration_s": round(time.monotonic() - started, 3)})


async def _check_durable(store: Store, config: GatewayConfig) -> None:
    """A Redis that keeps nothing across a restart (neither AOF nor RDB) would forget
    payments that providers still hold: refused unless ``store_options.allow_volatile``.
    RDB alone loses the writes since the last snapshot: allowed, with a warning."""
    if not isinstance(store, RedisStore):
        return
    mode = await store.persistence()
    if mode == "none" and not config.allow_volatile_store:
        raise StoreError(
            f"redis: {_without_password(config.store_url)} persists nothing (appendonly no, "
            'save ""); run it with AOF (appendonly yes) or set store_options: '
            "{allow_volatile: true}")
    if mode in ("rdb", None):
        log.warning("redis store durability", extra={"persistence": mode or "unknown"})


async def _routing_ctx(app: web.Application) -> AsyncIterator[None]:
    """Hot reload: a file watcher task and SIGHUP (when this loop can take signals)."""
    runtime = app[ROUTING]
    loop = asyncio.get_running_loop()
    watcher = asyncio.create_task(runtime.watch(app[CONFIG].routing_poll_s))
    tasks: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        task = loop.create_task(runtime.reload("sighup"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    hooked = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        hooked = True
    try:
        yield
    finally:
        if hooked:
            loop.remove_signal_handler(signal.SIGHUP)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _breakers_ctx(app: web.Application) -> AsyncIterator[None]:
    """One breaker per provider; with the Redis store their state is shared by replicas."""
    config = app[CONFIG]
    sync = None
    if config.store_url.startswith(("redis://", "rediss://")):
        from routing.breaker_sync import RedisBreakerSync

        sync = RedisBreakerSync(config.store_url)
    board = BreakerBoard({n: p.breaker for n, p in config.providers.items()}, sync=sync,
                         on_state=metrics.circuit_state_changed)
    await board.start()
    app[BREAKERS] = board
    try:
        yield
    finally:
        await board.close()


async def _providers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    providers = build_providers(config, app[SANDBOX_PORTS])
    started = []
    try:
        for p in providers.values():
            await p.start()
            started.append(p)
        app[PROVIDERS] = providers
        app[ORCHESTRATOR] = Orchestrator(config, app[STORE], providers, app[ROUTING],
                                         app[BREAKERS])
        yield
    finally:
        for p in started:
            await p.close()


async def _reconcile_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reconciliation loop (safe with several replicas: per-payment leases)."""
    config = app[CONFIG]
    if not config.reconciliation.enabled:
        yield
        return
    reconciler = Reconciler(config, app[STORE], app[ORCHESTRATOR])
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler.loop(stop), name="reconciliation")
    try:
        yield
    finally:
        stop.set()  # ends the loop after the pass in progress, if any
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(config: GatewayConfig, *, public_url: str | None = None) -> web.Application:
    """``public_url`` (e.g. ``http://127.0.0.1:8080``) is where in-process simulators
    deliver their webhooks; without it they send none."""
    app = web.Application(middlewares=[request_context, admission.admission_middleware],
                          client_max_size=webhooks.MAX_BODY_BYTES)
    app[CONFIG] = config
    settings = config.admission
    admission.install(app, settings.max_in_flight, settings.retry_after_s, settings.max_busy,
                      floor=settings.min_in_flight,
                      lag_target_s=settings.loop_lag_target_ms / 1000)
    if public_url:
        app[PUBLIC_URL] = public_url
    app[ROUTING] = RoutingRuntime(config)  # validates routing.yaml: a bad file fails start-up
    metrics.initialise(list(config.providers))
    metrics.initialise_settlement({n: p.currencies for n, p in config.providers.items()})
    app.cleanup_ctx.extend([_sandbox_ctx, _store_ctx, _routing_ctx, _breakers_ctx,
                            _providers_ctx, _reconcile_ctx])
    app.cleanup_ctx.append(notifications.worker_ctx)  # merchant notification delivery
    app.router.add_routes(admin.routes)
    app.router.add_routes(payments.routes)
    app.router.add_routes(health.routes)
    app.router.add_routes(webhooks.routes)
    app.router.add_routes(events.routes)
    app.router.add_routes(ledger.routes)
    app.router.add_routes(admin_settlements.routes)
    app.router.add_get("/metrics", health.metrics_handler)
    return app
