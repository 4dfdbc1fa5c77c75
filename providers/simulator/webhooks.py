"""Fire-and-forget webhook delivery from a simulator to the gateway.

Each simulator signs its own payloads; this only POSTs bytes, in order, one at a
time, retrying a few times on connection errors and non-2xx answers, like a
provider would (compressed in time). Like real providers it can also misbehave on
request (``POST /_sim/{provider}/webhooks``): ``duplicate_rate`` sends a notification
twice with that probability, and ``reorder_window_ms`` holds each notification back a
random 0..window ms and sends it on its own, so later events can overtake earlier ones.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    url: str
    status: int | None  # None: connection failed
    attempt: int


class WebhookSender:
    def __init__(
        self, url: str | None = None, *, attempts: int = 3, backoff_s: float = 0.2,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.deliveries: list[Delivery] = []
        self.duplicate_rate = 0.0
        self.reorder_window_ms = 0
        self.rng = random.Random()
        self._held: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[tuple[str, bytes, dict[str, str]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def configure(self, settings: Any) -> dict[str, Any]:
        """Merge ``{"duplicate_rate": 0..1, "reorder_window_ms": >= 0}``; ValueError if bad."""
        if not isinstance(settings, dict):
            raise ValueError("expected a JSON object")
        unknown = set(settings) - {"duplicate_rate", "reorder_window_ms"}
        if unknown:
            raise ValueError(f"unknown setting {sorted(unknown)[0]}")
        rate = settings.get("duplicate_rate", self.duplicate_rate)
        window = settings.get("reorder_window_ms", self.reorder_window_ms)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError("duplicate_rate must be a number between 0 and 1")
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError("reorder_window_ms must be a non-negative integer")
        self.duplicate_rate, self.reorder_window_ms = float(rate), window
        return self.settings()

    def settings(self) -> dict[str, Any]:
        return {"url": self.url, "duplicate_rate": self.duplicate_rate,
                "reorder_window_ms": self.reorder_window_ms}

    def send(self, body: bytes, headers: dict[str, str]) -> None:
        """Schedule delivery of one notification (no-op when no URL is configured)."""
        if not self.url:
            return
        copies = 2 if self.rng.random() < self.duplicate_rate else 1
        if self.reorder_window_ms:
            for _ in range(copies):
                delay = self.rng.uniform(0, self.reorder_window_ms / 1000)
                task = asyncio.get_running_loop().create_task(
                    self._deliver_later(delay, self.url, body, headers))
                self._held.add(task)
                task.add_done_callback(self._held.discard)
            return
        for _ in range(copies):
            self._enqueue(body, headers)

    async def _deliver_later(self, delay: float, url: str, body: bytes,
                             headers: dict[str, str]) -> None:
        await asyncio.sleep(delay)
        await self._deliver(url, body, headers)

    def _enqueue(self, body: bytes, headers: dict[str, str]) -> None:
        assert self.url is not None
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(self._queue))
        self._queue.put_nowait((self.url, body, headers))

    async def _run(self, queue: asyncio.Queue[tuple[str, bytes, dict[str, str]]]) -> None:
        while True:
            url, body, headers = await queue.get()
            try:
                await self._deliver(url, body, headers)
            finally:
                queue.task_done()

    async def _deliver(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        for attempt in range(1, self.attempts + 1):
            status: int | None = None
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("webhook delivery to %s failed: %s", url, type(exc).__name__)
            self.deliveries.append(Delivery(url, status, attempt))
            if status is not None and 200 <= status < 300:
                return
            await asyncio.sleep(self.backoff_s * attempt)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until every scheduled delivery was attempted (tests)."""
        if self._queue is not None:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._held:
            await asyncio.wait_for(asyncio.gather(*self._held, return_exceptions=True),
                                   timeout_s)

    async def close(self) -> None:
        for task in list(self._held):
            task.cancel()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker, self._queue = None, None
        if self._session is not None:
            await self._session.close()
            self._session = None
