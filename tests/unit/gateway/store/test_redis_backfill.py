"""Redis: events queued before the merchant listing zsets existed are listed by the
backfill a store runs at its start (gateway/store/redis_backfill.py; SPEC 3.2
``GET /v1/events``). The old format is written as the old gateway left it: the event hash,
its due-zset and payment-list entries, no listing zsets."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis.asyncio as aredis

from gateway.store import EventSearch
from gateway.store.base import new_notification
from gateway.store.redis import (
    NTF_DUE_KEY,
    RedisStore,
    notification_key,
    notification_merchant_key,
    notification_payment_key,
)
from gateway.store.redis_backfill import MARKER_KEY, backfill_listings
from tests.unit.gateway.test_notifications import outbox_event


async def _write_old(r: aredis.Redis, event: dict[str, Any], state: str = "pending") -> None:
    doc = {**new_notification(event), "state": state}
    doc.pop("lease_owner")
    doc.pop("lease_until")
    await r.hset(notification_key(doc["id"]), "doc", json.dumps(doc))
    if state == "pending":
        await r.zadd(NTF_DUE_KEY, {doc["id"]: float(doc["next_attempt_at"])})
    await r.rpush(notification_payment_key(str(doc["payment_id"])), doc["id"])


async def _ids(store: RedisStore, **filters: Any) -> list[str]:
    out: list[str] = []
    after: str | None = None
    while True:
        page, more = await store.search_notifications(EventSearch(
            "acme", limit=7, starting_after=after, **filters))
        out += [str(e["id"]) for e in page]
        if not more:
            return out
        after = out[-1]


async def _open(url: str) -> RedisStore:
    store = RedisStore(url)
    await store.open()
    return store


async def test_old_events_are_listed_after_the_store_starts(redis_url: str) -> None:
    r = aredis.from_url(redis_url, decode_responses=True)
    base = time.time() - 3600
    old = [f"evt_old{i:02d}" for i in range(30)]
    for i, eid in enumerate(old):
        ev = outbox_event(eid, pid=f"pay_o{i % 4}", created=base + i)
        if i % 5 == 0:
            ev["type"] = ev["payload"]["type"] = "payment.refunded"
        await _write_old(r, ev, state="delivered" if i % 3 == 0 else "pending")
    await _write_old(r, outbox_event("evt_gx", merchant="globex", pid="pay_g", created=base))
    assert not await r.exists(notification_merchant_key("acme"))

    store = await _open(redis_url)
    try:
        assert await store.listing_backfill() == 31
        assert await r.get(MARKER_KEY)
        assert await _ids(store) == list(reversed(old))  # newest first, queue order kept
        assert await _ids(store, state="delivered") == [
            old[i] for i in reversed(range(30)) if i % 3 == 0]
        assert await _ids(store, state="pending") == [
            old[i] for i in reversed(range(30)) if i % 3]
        assert await _ids(store, type="payment.refunded") == [
            old[i] for i in reversed(range(30)) if i % 5 == 0]
        globex, _ = await store.search_notifications(EventSearch("globex"))
        assert [e["id"] for e in globex] == ["evt_gx"]
        # an event queued now lists before (newer than) every backfilled one
        await store.enqueue_notification(outbox_event("evt_new", pid="pay_n"))
        assert (await _ids(store))[:2] == ["evt_new", old[-1]]
        # a backfilled event changes state like any other: the listing follows
        claimed = await store.claim_due_notifications(time.time(), 100, 30, "w")
        assert old[1] in [e["id"] for e in claimed]
        await store.record_notification_attempt(old[1], {"at": time.time(), "status": 200},
                                                True, None, owner="w")
        assert old[1] in await _ids(store, state="delivered")
        assert old[1] not in await _ids(store, state="pending")
    finally:
        await store.close()

    # done once: a later start does not scan again, and nothing changes
    scores = await r.zrange(notification_merchant_key("acme"), 0, -1, withscores=True)
    store = await _open(redis_url)
    try:
        assert await store.listing_backfill() == 0
    finally:
        await store.close()
    assert await r.zrange(notification_merchant_key("acme"), 0, -1,
                          withscores=True) == scores
    await r.aclose()


async def test_the_backfill_is_idempotent_and_incremental(redis_url: str) -> None:
    """Run without the marker, again and in small SCAN steps: each event is listed once,
    with one score; events already listed (queued by this version) keep theirs."""
    r = aredis.from_url(redis_url, decode_responses=True)
    store = await _open(redis_url)
    try:
        await store.listing_backfill()
        await store.enqueue_notification(outbox_event("evt_current", pid="pay_c"))
        for i in range(12):
            await _write_old(r, outbox_event(f"evt_b{i:02d}", pid="pay_b",
                                             created=time.time() - 100 + i))
        await r.delete(MARKER_KEY)
        before = await r.zscore(notification_merchant_key("acme"), "evt_current")
        assert await backfill_listings(r, batch=3) == 12
        await r.delete(MARKER_KEY)
        assert await backfill_listings(r, batch=5) == 0  # nothing missing any more
        assert await r.zscore(notification_merchant_key("acme"), "evt_current") == before
        assert await r.zcard(notification_merchant_key("acme")) == 13
        assert await r.zcard(notification_merchant_key("acme", "state", "pending")) == 13
        assert (await _ids(store))[0] == "evt_current"
    finally:
        await store.close()
        await r.aclose()


@pytest.mark.parametrize("raw", ["not json", json.dumps({"id": "evt_x"})])
async def test_unreadable_events_are_skipped(redis_url: str, raw: str) -> None:
    r = aredis.from_url(redis_url, decode_responses=True)
    try:
        await r.hset(notification_key("evt_x"), "doc", raw)
        assert await backfill_listings(r) == 0
        assert await r.get(MARKER_KEY)
    finally:
        await r.aclose()


async def _claimed_old_event(r: aredis.Redis, store: RedisStore, eid: str) -> None:
    """An old-format event (no listing), claimed by worker ``w`` (the backfill marker
    removed, so the backfill runs again)."""
    await store.listing_backfill()
    await _write_old(r, outbox_event(eid, pid=f"pay_{eid}", created=time.time() - 50))
    claimed = await store.claim_due_notifications(time.time(), 100, 30, "w")
    assert eid in [e["id"] for e in claimed]
    await r.delete(MARKER_KEY)


async def _listed_under(r: aredis.Redis, eid: str) -> list[str]:
    return [state for state in ("pending", "delivered", "failed")
            if await r.zscore(notification_merchant_key("acme", "state", state), eid)
            is not None]


async def test_a_delivery_between_the_backfills_read_and_write_is_listed_as_delivered(
        redis_url: str) -> None:
    """The event is delivered after the backfill read it (pending) and before its MULTI:
    the WATCH on the event makes the backfill read it again, so it is listed as
    delivered, once -- never left listed as pending."""
    r = aredis.from_url(redis_url, decode_responses=True)
    store = await _open(redis_url)
    try:
        await _claimed_old_event(r, store, "evt_race1")
        seen: list[str] = []

        class Meddling:  # the client the backfill uses; delivers once after its first read
            def __getattr__(self, name: str) -> Any:
                return getattr(r, name)

            def pipeline(self, transaction: bool = True) -> Any:
                pipe = r.pipeline(transaction=transaction)
                if not transaction and not seen:
                    execute = pipe.execute

                    async def read_then_deliver(*a: Any, **kw: Any) -> Any:
                        got = await execute(*a, **kw)
                        if not seen:
                            seen.append(json.loads(got[0])["state"])
                            await store.record_notification_attempt(
                                "evt_race1", {"at": time.time(), "status": 200}, True, None,
                                owner="w")
                        return got

                    pipe.execute = read_then_deliver  # type: ignore[method-assign]
                return pipe

        assert await backfill_listings(Meddling()) == 1  # type: ignore[arg-type]
        assert seen == ["pending"]  # it had read the event before the delivery
        assert await _listed_under(r, "evt_race1") == ["delivered"]
        assert await _ids(store, state="delivered") == ["evt_race1"]
        assert await _ids(store) == ["evt_race1"]
    finally:
        await store.close()
        await r.aclose()


async def test_a_backfill_between_a_deliverys_read_and_write_moves_the_listing(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backfill lists the event (pending) after a delivery read it unlisted and before
    the delivery's MULTI: the backfill's mark on the event makes the delivery read it again
    and move the listing to delivered."""
    r = aredis.from_url(redis_url, decode_responses=True)
    store = await _open(redis_url)
    try:
        await _claimed_old_event(r, store, "evt_race2")
        read_score = store._listing_score
        scores: list[Any] = []

        async def read_then_backfill(pipe: Any, doc: dict[str, Any]) -> Any:
            score = await read_score(pipe, doc)
            scores.append(score)
            if len(scores) == 1:
                assert await backfill_listings(r) == 1
                assert await _listed_under(r, "evt_race2") == ["pending"]
            return score

        monkeypatch.setattr(store, "_listing_score", read_then_backfill)
        await store.record_notification_attempt(
            "evt_race2", {"at": time.time(), "status": 200}, True, None, owner="w")
        assert scores[0] is None and len(scores) == 2 and scores[1] is not None  # re-read
        assert await _listed_under(r, "evt_race2") == ["delivered"]
        assert await _ids(store, state="pending") == []
        assert await _ids(store, state="delivered") == ["evt_race2"]
    finally:
        await store.close()
        await r.aclose()
