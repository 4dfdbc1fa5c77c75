"""Fire-and-forget webhook delivery from a simulator to the gateway.

Each simulator signs its own payloads; this only POSTs bytes. Notifications get their
first delivery attempt in order, one at a time. One that is not acknowledged (connection
error, timeout, non-2xx answer) is retried on its own with jittered exponential backoff
(``backoff_s`` doubling up to ``backoff_max_s``, each wait 0.5-1.5x that, so notifications
refused together do not all come back at once) for ``retry_for_s`` after its first
attempt -- 60 s by default, a time-compressed stand-in for real providers, which retry
for days (Adyen) -- without holding up the notifications behind it, so a gateway that was
down for a while (a crash, a restart) still gets everything, though not necessarily in
order. Like real providers it can also misbehave on request
(``POST /_sim/{provider}/webhooks``): ``duplicate_rate`` sends a notification twice with
that probability, and ``reorder_window_ms`` holds each notification back a random
0..window ms and sends it on its own, so later events can overtake earlier ones.
:meth:`WebhookSender.close` cancels every retry still due.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
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
        self, url: str | None = None, *, retry_for_s: float = 60.0, backoff_s: float = 0.2,
        backoff_max_s: float = 5.0, timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.retry_for_s = retry_for_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.deliveries: list[Delivery] = []
        self.duplicate_rate = 0.0
        self.reorder_window_ms = 0
        self.rng = random.Random()
        self._jitter = random.Random()
        self._held: set[asyncio.Task[None]] = set()
        self._retrying: set[asyncio.Task[None]] = set()
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

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str],
                       attempt: int) -> bool:
        """One POST; True when the gateway acknowledged it (2xx)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        status: int | None = None
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("webhook delivery to %s failed: %s", url, type(exc).__name__)
        self.deliveries.append(Delivery(url, status, attempt))
        return status is not None and 200 <= status < 300

    async def _deliver(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        """The first attempt; if it is not acknowledged, retries go on in the background."""
        first = time.monotonic()
        if await self._attempt(url, body, headers, 1):
            return
        task = asyncio.get_running_loop().create_task(
            self._retry(first, url, body, headers))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _retry(self, first: float, url: str, body: bytes,
                     headers: dict[str, str]) -> None:
        attempt, delay = 1, self.backoff_s
        while True:
            wait = delay * self._jitter.uniform(0.5, 1.5)
            if time.monotonic() + wait > first + self.retry_for_s:
                break
            await asyncio.sleep(wait)
            attempt += 1
            if await self._attempt(url, body, headers, attempt):
                return
            delay = min(delay * 2, self.backoff_max_s)
        log.warning("webhook to %s given up after %d attempts in %.0f s", url, attempt,
                    time.monotonic() - first)

    @property
    def retries_due(self) -> int:
        """Notifications not acknowledged yet whose retries are still due."""
        return len(self._retrying)

    def cancel_retries(self) -> None:
        """Drop every retry still due (the simulator forgot its payments: reset)."""
        for task in list(self._retrying):
            task.cancel()

    async def drain(self, timeout_s: float = 5.0, *, retries: bool = False) -> None:
        """Wait until every scheduled notification had its first delivery attempt and,
        with ``retries``, until none has a retry still due (tests)."""
        if self._queue is not None:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._held:
            await asyncio.wait_for(asyncio.gather(*self._held, return_exceptions=True),
                                   timeout_s)
        if retries and self._retrying:
            await asyncio.wait_for(
                asyncio.gather(*self._retrying, return_exceptions=True), timeout_s)

    async def close(self) -> None:
        """Stop delivering: pending first attempts and retries still due are dropped."""
        tasks = [*self._held, *self._retrying]
        if self._worker is not None:
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker, self._queue = None, None
        self._held.clear()
        self._retrying.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
