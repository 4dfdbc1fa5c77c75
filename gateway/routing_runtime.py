"""The live routing table: decide per payment, reload safely (SPEC section 7).

Reload triggers: SIGHUP, a change of the file (polled), and ``POST /admin/routing/reload``.
A reload parses and validates the whole file first; an invalid file is rejected, logged
and counted (``gateway_config_reloads_total{result="rejected"}``) and the running rules
stay. The active version is exported as ``gateway_routing_config_info{version}``.

Payments in flight keep the decision they started with: the orchestrator stores the
decision (rule, version, candidates) on the payment before the first provider call.
Without a routing file, gateway.yaml's static ``candidates`` list acts as one catch-all
rule named ``static``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.config import GatewayConfig
from routing.explain import static_table
from routing.loader import RoutingConfigError, load_routing
from routing.select import Decision, RouteRequest, decide

log = logging.getLogger("gateway.routing")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    changed: bool
    version: str
    errors: tuple[str, ...] = ()


class RoutingRuntime:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.path: Path | None = config.routing_file
        self.table = (load_routing(self.path, config.providers) if self.path
                      else static_table(config))
        self._mtime = self._stat()
        self._lock = asyncio.Lock()
        self._export(None)

    @property
    def version(self) -> str:
        return self.table.version

    def decide(self, body: Mapping[str, Any], payment_id: str, merchant_id: str) -> Decision:
        request = RouteRequest.from_body(body, payment_id=payment_id, merchant_id=merchant_id)
        return decide(self.table, request, self.config.providers)

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path else None
        except OSError:
            return None

    def _export(self, previous: str | None) -> None:
        if previous is not None and previous != self.table.version:
            if metrics.MULTIPROCESS:  # samples live in files: zero the old version
                metrics.ROUTING_CONFIG_INFO.labels(previous).set(0)
            else:
                metrics.ROUTING_CONFIG_INFO.remove(previous)
        metrics.ROUTING_CONFIG_INFO.labels(self.table.version).set(1)

    async def reload(self, trigger: str) -> ReloadResult:
        """Load and validate the file; swap it in only if valid."""
        async with self._lock:
            if self.path is None:
                metrics.CONFIG_RELOADS.labels("unchanged").inc()
                return ReloadResult(True, False, self.version)
            self._mtime = self._stat()
            try:
                table = await asyncio.to_thread(load_routing, self.path, self.config.providers)
            except RoutingConfigError as exc:
                errors = tuple(str(e) for e in exc.errors)
                metrics.CONFIG_RELOADS.labels("rejected").inc()
                log.error("routing reload rejected; the running rules stay",
                          extra={"trigger": trigger, "errors": list(errors),
                                 "version": self.version})
                return ReloadResult(False, False, self.version, errors)
            except OSError as exc:
                metrics.CONFIG_RELOADS.labels("rejected").inc()
                log.error("routing reload rejected: cannot read the file",
                          extra={"trigger": trigger, "error": exc.strerror})
                return ReloadResult(False, False, self.version, (f"{self.path}: {exc.strerror}",))
            previous = self.table.version
            if table.version == previous:
                metrics.CONFIG_RELOADS.labels("unchanged").inc()
                return ReloadResult(True, False, previous)
            self.table = table
            self._export(previous)
            metrics.CONFIG_RELOADS.labels("applied").inc()
            log.info("routing reloaded", extra={"trigger": trigger, "from_version": previous,
                                                "version": table.version})
            return ReloadResult(True, True, table.version)

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file's modification time; reload when it changes."""
        while True:
            await asyncio.sleep(interval_s)
            if self.path is not None and self._stat() != self._mtime:
                await self.reload("file_change")
