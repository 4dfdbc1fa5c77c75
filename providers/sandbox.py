"""``gateway sandbox``: run the provider simulators and their control API.

In-process use (``gateway serve`` with ``sandbox: true`` providers)::

    host = await start_sandbox(host="127.0.0.1", ports={"stripe": 0}, control_port=0)
    host.base_url("stripe"); host.control_url
    await host.stop()

Simulators are found by name in :data:`SIMULATORS` (``module:Class``, from each
provider folder's declaration in ``providers/registry.py``); a provider
whose simulator module does not exist yet is skipped. Each simulator class takes
keyword arguments ``webhook_url`` and (optionally) ``webhook_secret``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from providers.registry import DECLARATIONS
from providers.simulator.host import SimulatorHost
from providers.simulator.provider import SimulatedProvider

#: Provider type -> its simulator (``module:Class``) and default port, from the registry.
SIMULATORS: dict[str, str] = {t: d.simulator for t, d in DECLARATIONS.items()}
DEFAULT_PORTS: dict[str, int] = {t: d.default_sandbox_port for t, d in DECLARATIONS.items()}
DEFAULT_CONTROL_PORT = 12100


def simulator_class(name: str) -> type[SimulatedProvider] | None:
    """The simulator class for ``name``, or None when it is not implemented (yet)."""
    target = SIMULATORS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None  # the provider package / simulator module does not exist
        raise
    cls = getattr(module, attr, None)
    return cls if isinstance(cls, type) and issubclass(cls, SimulatedProvider) else None


def build_simulators(
    names: Sequence[str] | None = None, *, webhook_urls: Mapping[str, str] | None = None,
    webhook_secrets: Mapping[str, str] | None = None,
) -> list[SimulatedProvider]:
    sims: list[SimulatedProvider] = []
    for name in names or list(SIMULATORS):
        cls = simulator_class(name)
        if cls is None:
            continue
        kwargs: dict[str, Any] = {"webhook_url": (webhook_urls or {}).get(name)}
        if webhook_secrets and name in webhook_secrets:
            kwargs["webhook_secret"] = webhook_secrets[name]
        sims.append(cls(**kwargs))
    return sims


async def start_sandbox(
    host: str = "127.0.0.1", *, ports: Mapping[str, int] | None = None,
    control_port: int | None = 0, webhook_urls: Mapping[str, str] | None = None,
    webhook_secrets: Mapping[str, str] | None = None, names: Sequence[str] | None = None,
) -> SimulatorHost:
    """Build and start the simulators (ports 0 = free ports); the caller stops the host."""
    sims = build_simulators(names, webhook_urls=webhook_urls, webhook_secrets=webhook_secrets)
    sim_host = SimulatorHost(sims, host=host, ports=ports, control_port=control_port)
    await sim_host.start()
    return sim_host


def ready_line(sim_host: SimulatorHost) -> str:
    return json.dumps({
        "event": "sandbox_listening", "host": sim_host.host, "ports": sim_host.ports(),
        "base_urls": {n: sim_host.base_url(n) for n in sim_host.names},
        "control_url": sim_host.control_url,
    })


async def run_sandbox(
    host: str = "127.0.0.1", *, ports: Mapping[str, int] | None = None,
    control_port: int = DEFAULT_CONTROL_PORT, webhook_urls: Mapping[str, str] | None = None,
    webhook_secrets: Mapping[str, str] | None = None, stop: asyncio.Event | None = None,
    on_ready: Callable[[SimulatorHost], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when no event is given)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    sim_host = await start_sandbox(host, ports=ports, control_port=control_port,
                                   webhook_urls=webhook_urls, webhook_secrets=webhook_secrets)
    try:
        if on_ready is not None:
            on_ready(sim_host)
        await stop.wait()
    finally:
        await sim_host.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)


def _pairs(values: Sequence[str], flag: str, parser: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            parser.error(f"{flag} expects PROVIDER=VALUE, got {item!r}")
        out[name.strip().lower()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway sandbox",
                                description="Run the provider simulators and their control API.")
    p.add_argument("--host", default="127.0.0.1")
    for name, port in DEFAULT_PORTS.items():
        p.add_argument(f"--{name}-port", type=int, default=port, metavar="P",
                       help=f"{name} simulator port (default {port}; 0 = any free port)")
    p.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT, metavar="P")
    p.add_argument("--webhook-url", action="append", default=[], metavar="PROVIDER=URL",
                   help="where a simulator posts its signed webhooks (repeatable)")
    p.add_argument("--webhook-secret", action="append", default=[], metavar="PROVIDER=SECRET",
                   help="webhook signing secret of a simulator (repeatable)")
    return p


def sandbox_main(args: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(args)
    ports = {name: getattr(ns, f"{name}_port") for name in DEFAULT_PORTS}
    webhook_urls = _pairs(ns.webhook_url, "--webhook-url", parser)
    webhook_secrets = _pairs(ns.webhook_secret, "--webhook-secret", parser)

    def announce(sim_host: SimulatorHost) -> None:
        print(ready_line(sim_host), flush=True)

    try:
        asyncio.run(run_sandbox(ns.host, ports=ports, control_port=ns.control_port,
                                webhook_urls=webhook_urls, webhook_secrets=webhook_secrets,
                                on_ready=announce))
    except OSError as exc:
        print(f"gateway sandbox: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(sandbox_main())
