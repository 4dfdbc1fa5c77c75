"""Serve several simulated providers, each on its own TCP port, plus one control port.

``refuse`` really closes the provider's listening socket (and its open connections)
while the control port stays up; leaving ``refuse`` binds the same port again.

    host = SimulatorHost([StripeSimulator()], control_port=0)
    await host.start()            # ports 0 -> free ports, see host.port("stripe")
    ...
    await host.stop()
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from providers.simulator.control import build_control_app
from providers.simulator.faults import FaultMode, FaultSettings, merge_faults
from providers.simulator.provider import SimulatedProvider

SHUTDOWN_TIMEOUT_S = 2.0
CLOSE_SETTLE_ITERATIONS = 5
#: aiohttp's own: how long a provider port keeps an idle client connection open
KEEPALIVE_TIMEOUT_S = 75.0


def url_host(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass
class _Slot:
    sim: SimulatedProvider
    requested_port: int
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None
    port: int = 0
    #: client connections that carried a request (each transport counted once)
    connections_seen: int = 0
    transports: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    #: close the connection of the next request this many times, before processing it
    drop_unprocessed: int = 0


class SimulatorHost:
    def __init__(
        self,
        simulators: Iterable[SimulatedProvider],
        *,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        control_port: int | None = 0,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        """``ports`` maps provider name -> port (0 or missing: a free port);
        ``control_port=None`` serves no control app (in-process use via methods);
        ``keepalive_timeout_s``: a provider port closes a client connection idle that
        long (as a real provider's load balancer does)."""
        self.host = host
        self._keepalive_timeout_s = keepalive_timeout_s
        self._slots: dict[str, _Slot] = {}
        for sim in simulators:
            if sim.name in self._slots:
                raise ValueError(f"duplicate simulator {sim.name!r}")
            self._slots[sim.name] = _Slot(sim, (ports or {}).get(sim.name, 0))
        self._control_port_requested = control_port
        self._control_runner: web.AppRunner | None = None
        self._control_port: int | None = None
        self._lock = asyncio.Lock()
        self._started = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._lock = asyncio.Lock()
        self._started = True
        try:
            for slot in self._slots.values():
                slot.sim.prepare()
                app = slot.sim.build_app()
                app.middlewares.insert(0, _connection_counter(slot))
                slot.runner = web.AppRunner(
                    app, access_log=None, handle_signals=False,
                    shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                    keepalive_timeout=self._keepalive_timeout_s,
                )
                await slot.runner.setup()
                slot.port = slot.requested_port
                await self._listen(slot)
                slot.sim.base_url = f"http://{url_host(self.host)}:{slot.port}"
                if slot.sim.faults.mode is FaultMode.REFUSE:
                    await self._unlisten(slot)
            if self._control_port_requested is not None:
                runner = web.AppRunner(build_control_app(self), access_log=None,
                                       handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, self.host, self._control_port_requested)
                await site.start()
                self._control_runner = runner
                self._control_port = site.port
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for slot in self._slots.values():
            slot.sim._stopping.set()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None
        for slot in self._slots.values():
            if slot.runner is not None:
                await slot.runner.cleanup()
                slot.runner, slot.site = None, None
            await slot.sim.close()

    async def __aenter__(self) -> SimulatorHost:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------ listening

    async def _listen(self, slot: _Slot) -> None:
        assert slot.runner is not None
        site = web.TCPSite(slot.runner, self.host, slot.port, reuse_address=True)
        await site.start()
        slot.site, slot.port = site, site.port

    async def _unlisten(self, slot: _Slot) -> None:
        if slot.site is not None:
            await slot.site.stop()
            slot.site = None
        server = slot.runner.server if slot.runner is not None else None
        conns = server.connections if server is not None else []
        for conn in conns:
            conn.force_close()  # like a crashed process: open connections go too
        if conns:  # let in-process clients see the FIN before anyone sends again
            for _ in range(CLOSE_SETTLE_ITERATIONS):
                await asyncio.sleep(0)

    async def _sync_listening(self, slot: _Slot) -> None:
        if not self._started:
            return
        refuse = slot.sim.faults.mode is FaultMode.REFUSE
        if refuse and slot.site is not None:
            await self._unlisten(slot)
        elif not refuse and slot.site is None:
            await self._listen(slot)

    # ------------------------------------------------------------ queries

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def simulator(self, name: str) -> SimulatedProvider:
        return self._slots[name].sim

    def port(self, name: str) -> int:
        return self._slots[name].port

    def base_url(self, name: str) -> str:
        return f"http://{url_host(self.host)}:{self.port(name)}"

    def is_listening(self, name: str) -> bool:
        return self._slots[name].site is not None

    def connections_seen(self, name: str) -> int:
        """How many client connections have sent ``name`` a request since start: a client
        that keeps its connections alive opens one per concurrent caller, not one per
        call."""
        return self._slots[name].connections_seen

    def open_connections(self, name: str) -> int:
        """Client connections ``name``'s port holds open now (idle ones included)."""
        runner = self._slots[name].runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    def drop_unprocessed(self, name: str, times: int = 1) -> None:
        """The next ``times`` requests to ``name`` find their connection closed by the
        provider before it read them (a kept-alive connection the provider's side closed
        just as the client reused it): no answer, nothing processed."""
        self._slots[name].drop_unprocessed = times

    @property
    def control_port(self) -> int | None:
        return self._control_port

    @property
    def control_url(self) -> str | None:
        if self._control_port is None:
            return None
        return f"http://{url_host(self.host)}:{self._control_port}"

    def ports(self) -> dict[str, Any]:
        """What a runner prints once listening."""
        out: dict[str, Any] = {name: slot.port for name, slot in self._slots.items()}
        out["control"] = self._control_port
        return out

    # ------------------------------------------------------------ control

    async def set_faults(self, name: str, update: Any) -> FaultSettings:
        """Merge ``update`` (validated, see :func:`merge_faults`) and apply it now."""
        slot = self._slots[name]
        async with self._lock:
            slot.sim.faults = merge_faults(slot.sim.faults, update,
                                           supports_search=slot.sim.supports_search,
                                           provider=name)
            await self._sync_listening(slot)
        return slot.sim.faults

    async def reset(self, name: str | None = None) -> None:
        """Clear state, counters and faults of one simulator (or all)."""
        async with self._lock:
            for slot in self._slots.values():
                if name is None or name == slot.sim.name:
                    slot.sim.reset()
                    await self._sync_listening(slot)


def _connection_counter(slot: _Slot) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: counts each client connection once, at its first request (a transport
    lives as long as its connection; the weak set forgets closed ones), and carries out
    :meth:`SimulatorHost.drop_unprocessed`."""

    @web.middleware
    async def count(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and transport not in slot.transports:
            slot.transports.add(transport)
            slot.connections_seen += 1
        if slot.drop_unprocessed > 0 and transport is not None:
            slot.drop_unprocessed -= 1
            transport.abort()  # RST, nothing read or processed: the response goes nowhere
            return web.Response(status=503)
        return await handler(request)

    return count
