"""Fire-and-forget webhook delivery from a simulator to the gateway.

Each simulator signs its own payloads; this only POSTs bytes, in order, one at a
time, retrying a few times on connection errors and non-2xx answers, like a
provider would (compressed in time).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

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
        self._queue: asyncio.Queue[tuple[str, bytes, dict[str, str]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def send(self, body: bytes, headers: dict[str, str]) -> None:
        """Schedule delivery of one notification (no-op when no URL is configured)."""
        if not self.url:
            return
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

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker, self._queue = None, None
        if self._session is not None:
            await self._session.close()
            self._session = None
