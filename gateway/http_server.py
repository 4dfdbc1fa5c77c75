"""``gateway serve``'s listener: aiohttp behind a connection guard (issue #11, connection
hygiene).

aiohttp alone holds a half-open connection until its keep-alive timer fires and accepts
connections until the process runs out of file descriptors, so 2,000 slowloris
connections starve every other merchant. :class:`ConnectionGuard` adds what a server
facing the internet needs, configured by ``server:`` in gateway.yaml
(:class:`gateway.config.ServerSettings`):

- a **header timeout**: a connection that has not completed a request's headers within
  ``header_timeout_s`` of opening (or of its first byte after a response) is closed;
- a **body timeout**: a request body that has not fully arrived within ``body_timeout_s``
  is answered 408 and the connection closed (:func:`read_body_within`, a middleware step,
  so the in-process test server has it too);
- a **keep-alive timeout** for idle connections between requests (aiohttp's own timer);
- a **connection limit**, below the process's file-descriptor limit: when it is reached,
  the connection that has been waiting longest without a request in progress is closed to
  admit the new one (a slowloris holds only waiting connections, a merchant's request in
  progress is never cut); only when every connection has a request in progress is the new
  one refused.

The guard wraps each aiohttp protocol in a thin forwarding protocol; which connection is
busy is marked by the request middleware through ``request.transport``. Nothing here reads
aiohttp's private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from aiohttp import web

from gateway import metrics
from gateway.appkeys import CONNECTION_GUARD
from gateway.config import ServerSettings

log = logging.getLogger("gateway.server")
T = TypeVar("T")

#: ``uvloop`` runs ``gateway serve`` on uvloop's event loop (when it is installed; it is
#: not a dependency) instead of the standard library's: measured side by side
#: (bench/loops_side_by_side.py, two gateways under the same load at the same time) it
#: saved no CPU per Stripe authorization on SQLite (uvloop/asyncio 1.02, median of 4
#: rounds) and 5 % on Redis (0.95), so the default stays asyncio.
EVENT_LOOP_ENV = "GATEWAY_EVENT_LOOP"


def event_loop_choice() -> str:
    """``asyncio`` (the default) or ``uvloop`` (asked for and installed)."""
    if os.environ.get(EVENT_LOOP_ENV, "asyncio").strip().lower() != "uvloop":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the event loop :func:`event_loop_choice` names."""
    if event_loop_choice() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)

#: File descriptors kept free of connections: the store, provider connection pools, the
#: in-process simulators, log files; plus twice the listen backlog, because asyncio accepts
#: up to ``backlog`` connections in one go (each takes a descriptor before the guard sees
#: it) and a closed connection's descriptor is freed one loop turn later.
FD_RESERVE_MIN = 64
FD_RESERVE_DIVISOR = 16


def _reserve(soft: int, backlog: int) -> int:
    return 2 * backlog + max(FD_RESERVE_MIN, soft // FD_RESERVE_DIVISOR)


def connection_limit(configured: int, backlog: int) -> int:
    """``configured``, lowered to fit the file-descriptor limit (raising the soft limit
    towards the hard one first, as far as the configured limit needs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # the smallest soft limit that leaves ``configured`` after the reserve
    base = configured + 2 * backlog
    want = max(base + FD_RESERVE_MIN,
               -(-base * FD_RESERVE_DIVISOR // (FD_RESERVE_DIVISOR - 1)))
    if soft != resource.RLIM_INFINITY and soft < want and (
            hard == resource.RLIM_INFINITY or soft < hard):
        new_soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
    if soft == resource.RLIM_INFINITY:
        return configured
    fitted = max(1, min(configured, soft - _reserve(soft, backlog)))
    if fitted < configured:
        log.warning("connection limit lowered to fit the file-descriptor limit",
                    extra={"configured": configured, "limit": fitted, "nofile": soft})
    return fitted


@dataclass(eq=False)
class _Connection:
    transport: asyncio.Transport
    opened_at: float
    idle_since: float  # start of the current wait for a request
    served: int = 0  # requests finished on this connection
    busy: int = 0  # requests in progress
    first_byte_at: float | None = None  # first byte of the next request while idle


class _GuardedProtocol(asyncio.Protocol):
    """Forwards every protocol event to aiohttp's handler; tells the guard what happens."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._conn: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's TCPTransport has the methods without subclassing
        # asyncio.Transport)
        self._conn = self._guard.opened(cast(asyncio.Transport, transport))
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None and not conn.busy and conn.first_byte_at is None:
            conn.first_byte_at = time.monotonic()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._guard.closed(self._conn)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


@dataclass(eq=False)
class ConnectionGuard:
    settings: ServerSettings
    limit: int
    _all: dict[asyncio.Transport, _Connection] = field(default_factory=dict)
    # connections without a request in progress, longest waiting first
    _waiting: OrderedDict[asyncio.Transport, _Connection] = field(default_factory=OrderedDict)
    _sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ConnectionGuard:
        return cls(settings=settings,
                   limit=connection_limit(settings.max_connections, settings.backlog))

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]
                         ) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, inner())

    def __len__(self) -> int:
        return len(self._all)

    # -- connection events -------------------------------------------------------------

    def opened(self, transport: asyncio.Transport) -> _Connection:
        if len(self._all) >= self.limit:
            self._make_room()
        now = time.monotonic()
        conn = _Connection(transport=transport, opened_at=now, idle_since=now)
        if len(self._all) >= self.limit:  # every connection has a request in progress
            metrics.HTTP_CONNECTIONS_CLOSED.labels("refused").inc()
            transport.abort()
            return conn
        self._all[transport] = conn
        self._waiting[transport] = conn
        metrics.HTTP_CONNECTIONS.set(len(self._all))
        return conn

    def closed(self, conn: _Connection) -> None:
        if self._all.pop(conn.transport, None) is not None:
            self._waiting.pop(conn.transport, None)
            metrics.HTTP_CONNECTIONS.set(len(self._all))

    def request_started(self, transport: asyncio.Transport | None) -> None:
        conn = self._all.get(transport) if transport is not None else None
        if conn is None:
            return
        conn.busy += 1
        self._waiting.pop(transport, None)  # type: ignore[arg-type]

    def request_finished(self, transport: asyncio.Transport | None) -> None:
        conn = self._all.get(transport) if transport is not None else None
        if conn is None:
            return
        conn.busy -= 1
        conn.served += 1
        if not conn.busy:
            conn.idle_since = time.monotonic()
            conn.first_byte_at = None
            self._waiting[conn.transport] = conn
            self._waiting.move_to_end(conn.transport)

    def _make_room(self) -> None:
        if not self._waiting:
            return
        _, victim = self._waiting.popitem(last=False)
        self._close(victim, "evicted")

    def _close(self, conn: _Connection, reason: str) -> None:
        metrics.HTTP_CONNECTIONS_CLOSED.labels(reason).inc()
        self._all.pop(conn.transport, None)
        self._waiting.pop(conn.transport, None)
        metrics.HTTP_CONNECTIONS.set(len(self._all))
        conn.transport.abort()

    # -- timeouts ----------------------------------------------------------------------

    def expired(self, now: float) -> list[_Connection]:
        s = self.settings
        out = []
        for conn in self._waiting.values():
            if conn.first_byte_at is not None:
                deadline = conn.first_byte_at + s.header_timeout_s
            elif conn.served == 0:
                deadline = conn.opened_at + s.header_timeout_s
            else:
                deadline = conn.idle_since + s.keepalive_timeout_s
            if now >= deadline:
                out.append(conn)
        return out

    def sweep(self) -> int:
        expired = self.expired(time.monotonic())
        for conn in expired:
            reason = "keepalive_timeout" if (conn.served and conn.first_byte_at is None) \
                else "header_timeout"
            self._close(conn, reason)
        return len(expired)

    async def _sweep_loop(self) -> None:
        s = self.settings
        period = min(1.0, max(0.05, min(s.header_timeout_s, s.keepalive_timeout_s) / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="connection-guard")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


async def read_body_within(request: web.Request, timeout_s: float) -> None:
    """Read (and cache) the request body, at most ``timeout_s``; raises TimeoutError."""
    if request.body_exists:
        async with asyncio.timeout(timeout_s):
            await request.read()


def guard_of(request: web.Request) -> ConnectionGuard | None:
    return request.app.get(CONNECTION_GUARD)


@dataclass(eq=False)
class Listener:
    """A started app on a socket, behind its guard; :meth:`close` stops it all."""

    runner: web.AppRunner
    server: asyncio.Server
    guard: ConnectionGuard

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        await self.guard.stop()
        await self.runner.cleanup()


async def listen(app: web.Application, host: str, port: int, settings: ServerSettings, *,
                 reuse_port: bool = False, shutdown_timeout_s: float = 5.0) -> Listener:
    """Start ``app`` (its cleanup contexts: store, providers, ...) and listen on host:port
    (0: any free port) behind a :class:`ConnectionGuard`."""
    guard = ConnectionGuard.from_settings(settings)
    app[CONNECTION_GUARD] = guard
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           # aiohttp's own timer only as a backstop: the guard closes
                           # (and counts) idle connections first
                           keepalive_timeout=max(settings.keepalive_timeout_s,
                                                 settings.header_timeout_s) + 1.0,
                           shutdown_timeout=shutdown_timeout_s)
    await runner.setup()  # opens the store, providers, ...: StoreError surfaces here
    handlers = runner.server
    assert handlers is not None  # set by setup()
    try:
        server = await asyncio.get_running_loop().create_server(
            guard.protocol_factory(handlers), host, port, backlog=settings.backlog,
            reuse_port=reuse_port or None)
    except BaseException:
        await runner.cleanup()
        raise
    guard.start()
    return Listener(runner=runner, server=server, guard=guard)


async def serve(app: web.Application, host: str, port: int, settings: ServerSettings, *,
                reuse_port: bool = False) -> None:
    """Serve ``app`` until SIGINT/SIGTERM."""
    listener = await listen(app, host, port, settings, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    log.info("listening", extra={"host": host, "port": listener.port,
                                 "max_connections": listener.guard.limit})
    try:
        await stopping.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await listener.close()
