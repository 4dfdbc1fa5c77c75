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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

from providers.simulator.control import build_control_app
from providers.simulator.faults import FaultMode, FaultSettings, merge_faults
from providers.simulator.provider import SimulatedProvider

SHUTDOWN_TIMEOUT_S = 2.0
CLOSE_SETTLE_ITERATIONS = 5


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


class SimulatorHost:
    def __init__(
        self,
        simulators: Iterable[SimulatedProvider],
        *,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        control_port: int | None = 0,
    ) -> None:
        """``ports`` maps provider name -> port (0 or missing: a free port);
        ``control_port=None`` serves no control app (in-process use via methods)."""
        self.host = host
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
                slot.runner = web.AppRunner(
                    slot.sim.build_app(), access_log=None, handle_signals=False,
                    shutdown_timeout=SHUTDOWN_TIMEOUT_S,
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
