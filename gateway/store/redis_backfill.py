"""Backfill of the merchant listing zsets of the Redis notification outbox (SPEC 3.2).

``GET /v1/events`` walks one merchant's listing zsets (:func:`~gateway.store.redis.
notification_merchant_key`: all / by delivery state / by type). Events enqueued by a gateway
older than those zsets have only their hash (``gw:{ntf}:e:<id>``), due-zset and payment-list
entries, so they were never listed. :func:`backfill_listings` lists them, once per database:

* incremental: ``SCAN`` over the event hashes, :data:`BATCH` keys a step, so a large store
  neither blocks Redis nor delays the gateway's start (it runs as a background task of the
  store, :func:`start`, and retries after an error until it has finished once);
* idempotent and safe with live writers: each batch is written in one MULTI under WATCH of
  its event hashes, adds an event only when its merchant's ``all`` zset lacks it (``ZADD
  NX``), and marks the hash (field ``listed``) so that a concurrent state change, which
  WATCHes the event and reads its listing score, retries and moves the listing with it;
* its score puts a backfilled event before every event listed at enqueue (those score
  ``gw:{ntf}:seq``, from 1): ``created_at - 1e10``, so the old events keep their queue
  order among themselves and list after (older than) the new ones;
* done is recorded in :data:`MARKER_KEY` (``SET`` with the time it finished); a store
  opened later skips the scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gateway.store.redis import _NTF_EVENT_PREFIX, notification_merchant_key

log = logging.getLogger("gateway.store.redis")

#: Set once every event hash present at the scan has been listed.
MARKER_KEY = "gw:{ntf}:listing_backfill"
#: Event hashes per SCAN step (and per MULTI).
BATCH = 500
#: Backfilled events score below every enqueue-time score (the counter starts at 1).
SCORE_OFFSET = 1e10
#: Pause before trying again after an error (Redis unreachable at start).
RETRY_S = 5.0


def listing_score(doc: dict[str, Any]) -> float:
    created = doc.get("created_at")
    ts = float(created) if isinstance(created, int | float) and not isinstance(
        created, bool) else 0.0
    return ts - SCORE_OFFSET


async def _list_batch(r: Redis, keys: list[str]) -> int:
    """List the events of ``keys`` missing from their merchant's zsets; how many."""
    async with r.pipeline(transaction=True) as tx:
        while True:
            try:
                await tx.watch(*keys)
                async with r.pipeline(transaction=False) as read:
                    for key in keys:
                        read.hget(key, "doc")
                    raws = await read.execute()
                docs: list[tuple[str, dict[str, Any]]] = []
                for key, raw in zip(keys, raws, strict=True):
                    try:
                        doc = json.loads(raw) if raw is not None else None
                    except ValueError:
                        doc = None
                    if isinstance(doc, dict) and isinstance(doc.get("merchant_id"), str):
                        docs.append((key, doc))
                async with r.pipeline(transaction=False) as read:
                    for _key, doc in docs:
                        read.zscore(notification_merchant_key(doc["merchant_id"]),
                                    str(doc.get("id")))
                    scores = await read.execute()
                missing = [(k, d) for (k, d), s in zip(docs, scores, strict=True) if s is None]
                if not missing:
                    await tx.unwatch()
                    return 0
                tx.multi()
                for key, doc in missing:
                    eid, merchant = str(doc.get("id")), str(doc["merchant_id"])
                    member = {eid: listing_score(doc)}
                    for zkey in (notification_merchant_key(merchant),
                                 notification_merchant_key(merchant, "state",
                                                           str(doc.get("state") or "pending")),
                                 notification_merchant_key(merchant, "type",
                                                           str(doc.get("type") or ""))):
                        tx.zadd(zkey, member, nx=True)
                    tx.hset(key, "listed", "1")  # a concurrent state change retries
                await tx.execute()
                return len(missing)
            except WatchError:
                continue


async def backfill_listings(r: Redis, *, batch: int = BATCH) -> int:
    """List every event missing from its merchant's listing zsets, unless done before
    (:data:`MARKER_KEY`). Returns how many were added."""
    if await r.exists(MARKER_KEY):
        return 0
    added, cursor = 0, 0
    while True:
        cursor, keys = await r.scan(cursor, match=f"{_NTF_EVENT_PREFIX}*", count=batch)
        if keys:
            added += await _list_batch(r, [str(k) for k in keys])
        if int(cursor) == 0:
            break
    await r.set(MARKER_KEY, repr(time.time()))
    if added:
        log.info("notification listings backfilled", extra={"events": added})
    return added


async def _run(r: Redis) -> int:
    while True:
        try:
            return await backfill_listings(r)
        except (RedisError, OSError) as exc:
            log.warning("notification listing backfill failed; retrying",
                        extra={"error": type(exc).__name__, "retry_s": RETRY_S})
            await asyncio.sleep(RETRY_S)


def start(r: Redis) -> asyncio.Task[int]:
    """Run the backfill in the background (the store's start must not wait for it)."""
    return asyncio.create_task(_run(r), name="redis-notification-listing-backfill")


async def stop(task: asyncio.Task[int] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["BATCH", "MARKER_KEY", "backfill_listings", "listing_score", "start", "stop"]
