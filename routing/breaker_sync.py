"""Breaker sharing between replicas through Redis (:class:`RedisBreakerSync`).

Each local transition of a :class:`routing.breaker.ProviderBreaker` is written to Redis
(``gw:breaker:{<provider>}``) by a fire-and-forget task, and a background task reads all
keys every ``refresh_s`` (default 0.2 s) and applies newer remote states through the
breaker's :meth:`~routing.breaker.ProviderBreaker.apply_remote`: a circuit opened by one
replica is honoured by the others within about ``refresh_s``, with no Redis round trip on
the payment path. Redis being down is logged; breakers keep working locally.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from routing.breaker import BreakerRecord, ProviderBreaker, is_state

log = logging.getLogger(__name__)

_PUBLISH_LUA = """
local cur = redis.call('HGET', KEYS[1], 'ver')
if cur and tonumber(cur) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'ts', ARGV[2], 'opened_at', ARGV[3],
           'origin', ARGV[4], 'ver', ARGV[5])
return 1
"""


class RedisBreakerSync:
    """Breaker sharing through Redis hashes ``gw:breaker:{<provider>}`` (one per provider).

    Writes are conditional on :attr:`BreakerRecord.version` (the newest transition wins,
    whatever the arrival order) and run in fire-and-forget tasks. A background loop reads
    every key each ``refresh_s`` seconds (one pipelined round trip), applies newer remote
    records, and re-writes local records newer than Redis's (so writes lost while Redis
    was down are repaired). Redis errors are logged once per outage and otherwise ignored.
    """

    def __init__(
        self,
        url: str,
        *,
        refresh_s: float = 0.2,
        op_timeout_s: float = 0.5,
        key_prefix: str = "gw:breaker:",
    ) -> None:
        self._url = url
        self.refresh_s = refresh_s
        self._op_timeout_s = op_timeout_s
        self._prefix = key_prefix
        self._breakers: Mapping[str, ProviderBreaker] = {}
        self._origin = ""
        self._client: aredis.Redis | None = None
        self._script: Any = None
        self._loop_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._healthy = True
        self._closed = False

    def key(self, provider: str) -> str:
        return f"{self._prefix}{{{provider}}}"

    def attach(self, breakers: Mapping[str, ProviderBreaker], origin: str) -> None:
        self._breakers = breakers
        self._origin = origin

    async def start(self) -> None:
        self._client = aredis.Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=self._op_timeout_s,
            socket_connect_timeout=self._op_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(_PUBLISH_LUA)
        await self.refresh_once()
        self._loop_task = asyncio.create_task(self._loop(), name="breaker-sync")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._loop_task, *self._pending) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()
        self._loop_task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- writes ------------------------------------------------------------------------

    def publish(self, provider: str, record: BreakerRecord) -> None:
        """Called inline by a breaker transition: schedule the write and return."""
        if self._client is None or self._closed:
            return  # not started: the refresh loop writes newer local states later
        try:
            task = asyncio.get_running_loop().create_task(self._write(provider, record))
        except RuntimeError:
            return  # no running loop (sync caller): the refresh loop catches up
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, provider: str, rec: BreakerRecord) -> None:
        try:
            async with asyncio.timeout(self._op_timeout_s * 2):
                await self._script(
                    keys=[self.key(provider)],
                    args=[rec.state, rec.ts_ms, rec.opened_at_ms, rec.origin, rec.version],
                )
            self._mark(ok=True)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(ok=False, exc=exc)
        except Exception:
            log.exception("breaker sync: writing %s failed", provider)

    # -- reads -------------------------------------------------------------------------

    async def _loop(self) -> None:
        task = asyncio.current_task()
        while not self._closed:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh_once()
            except Exception:  # keep refreshing whatever happens
                log.exception("breaker sync: refresh failed")
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a cancel swallowed inside a Redis call

    async def refresh_once(self) -> None:
        """Read all keys once; apply newer remote records, re-write newer local ones."""
        client = self._client
        names = list(self._breakers)
        if client is None or not names:
            return
        try:
            async with asyncio.timeout(self._op_timeout_s * 2):
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.hgetall(self.key(name))
                rows = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(ok=False, exc=exc)
            return
        self._mark(ok=True)
        for name, row in zip(names, rows, strict=True):
            breaker = self._breakers[name]
            remote = _parse(row)
            if remote is not None and breaker.apply_remote(remote):
                log.info("breaker %s: applied %s from replica %s", name, remote.state,
                         remote.origin)
            elif breaker.record.ts_ms > 0 and (
                remote is None or breaker.record.version > remote.version
            ):
                self.publish(name, breaker.record)

    def _mark(self, *, ok: bool, exc: BaseException | None = None) -> None:
        if ok and not self._healthy:
            log.info("breaker sync: Redis reachable again")
        elif not ok and self._healthy:
            log.warning("breaker sync: Redis unavailable, breakers work locally: %r", exc)
        self._healthy = ok

    @property
    def healthy(self) -> bool:
        return self._healthy


def _parse(row: Mapping[str, str] | None) -> BreakerRecord | None:
    if not row:
        return None
    try:
        state = row["state"]
        if not is_state(state):
            return None
        return BreakerRecord(
            state=state,
            opened_at_ms=int(row.get("opened_at") or 0),
            ts_ms=int(row["ts"]),
            origin=row.get("origin", ""),
        )
    except (KeyError, ValueError):
        return None
