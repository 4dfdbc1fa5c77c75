"""Store contract for search_payments (SPEC 3.1), run against SQLite and Redis.

Every test taking ``store`` / ``store_url`` runs once per backend (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.store import PaymentSearch, RedisStore, SQLiteStore, Store, make_store
from gateway.store.redis import (
    SEARCH_READY_KEY,
    doc_key,
    events_key,
    search_index_args,
    search_key,
)
from gateway.store.sqlite import SCHEMA_VERSION


def pay(pid: str, created_at: float, merchant: str = "acme", status: str = "authorized",
        provider: str | None = "stripe_main", reference: str | None = None,
        **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": pid, "merchant_id": merchant, "status": status, "provider": provider,
        "provider_reference": None, "reference": reference, "created_at": created_at,
        "updated_at": created_at, "amount": 1000, "currency": "EUR",
    }
    doc.update(extra)
    return doc


async def search(store: Store, merchant: str = "acme", **kw: Any) -> tuple[list[str], bool]:
    docs, more = await store.search_payments(PaymentSearch(merchant_id=merchant, **kw))
    return [d["id"] for d in docs], more


async def all_pages(store: Store, limit: int, **kw: Any) -> list[list[str]]:
    """Every page, following starting_after from the last doc of each page."""
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while True:
        docs, more = await store.search_payments(
            PaymentSearch(merchant_id="acme", limit=limit, starting_after=after, **kw))
        pages.append([d["id"] for d in docs])
        if not more:
            return pages
        assert len(docs) == limit
        after = (docs[-1]["created_at"], docs[-1]["id"])


async def seed(store: Store, n: int, start: float = 1000.0, **kw: Any) -> list[str]:
    """n payments pay_000.. created one second apart; newest first as returned."""
    ids = []
    for i in range(n):
        pid = f"pay_{i:03d}"
        await store.insert_payment(pay(pid, start + i, **kw), [])
        ids.append(pid)
    return ids[::-1]


# ----------------------------------------------------------------------------- filters


async def test_newest_first_and_merchant_scoped(store: Store) -> None:
    await store.insert_payment(pay("pay_a", 10.0), [])
    await store.insert_payment(pay("pay_b", 30.0), [])
    await store.insert_payment(pay("pay_c", 20.0), [])
    await store.insert_payment(pay("pay_x", 40.0, merchant="globex"), [])
    assert await search(store) == (["pay_b", "pay_c", "pay_a"], False)
    assert await search(store, "globex") == (["pay_x"], False)
    assert await search(store, "nobody") == ([], False)
    docs, _ = await store.search_payments(PaymentSearch(merchant_id="acme", limit=1))
    assert docs == [await store.get_payment("pay_b")]  # the whole stored doc


async def test_every_filter_alone_and_combined(store: Store) -> None:
    rows = [
        ("pay_1", 1.0, "authorized", "stripe_main", "order-1"),
        ("pay_2", 2.0, "captured", "stripe_main", "order-2"),
        ("pay_3", 3.0, "authorized", "adyen_eu", "order-1"),
        ("pay_4", 4.0, "declined", None, "order-3"),
        ("pay_5", 5.0, "captured", "adyen_eu", None),
        ("pay_6", 6.0, "authorized", "adyen_eu", "order-1"),
    ]
    for pid, created, status, provider, ref in rows:
        await store.insert_payment(pay(pid, created, status=status, provider=provider,
                                       reference=ref), [])
    await store.insert_payment(pay("pay_g", 3.5, merchant="globex", reference="order-1"), [])
    assert await search(store, reference="order-1") == (["pay_6", "pay_3", "pay_1"], False)
    assert await search(store, reference="order-9") == ([], False)
    assert await search(store, status="captured") == (["pay_5", "pay_2"], False)
    assert await search(store, provider="adyen_eu") == (["pay_6", "pay_5", "pay_3"], False)
    assert await search(store, created_gte=3.0) == (["pay_6", "pay_5", "pay_4", "pay_3"], False)
    assert await search(store, created_lt=3.0) == (["pay_2", "pay_1"], False)
    assert await search(store, created_gte=2.0, created_lt=5.0) == (
        ["pay_4", "pay_3", "pay_2"], False)
    assert await search(store, status="authorized", provider="adyen_eu") == (
        ["pay_6", "pay_3"], False)
    assert await search(store, reference="order-1", status="authorized",
                        provider="stripe_main") == (["pay_1"], False)
    assert await search(store, reference="order-1", created_lt=6.0, created_gte=2.0) == (
        ["pay_3"], False)
    assert await search(store, status="captured", provider="adyen_eu", created_lt=5.0) == (
        [], False)
    assert await search(store, reference="order-1", limit=2) == (["pay_6", "pay_3"], True)


async def test_empty_reference_is_a_reference(store: Store) -> None:
    await store.insert_payment(pay("pay_1", 1.0, reference=""), [])
    await store.insert_payment(pay("pay_2", 2.0, reference=None), [])
    assert await search(store, reference="") == (["pay_1"], False)


async def test_limit_and_has_more(store: Store) -> None:
    ids = await seed(store, 5)
    assert await search(store, limit=1) == (ids[:1], True)
    assert await search(store, limit=4) == (ids[:4], True)
    assert await search(store, limit=5) == (ids, False)
    assert await search(store, limit=100) == (ids, False)


async def test_unsearchable_docs_are_left_out(store: Store) -> None:
    """No merchant_id or no numeric created_at: not searchable (and no error)."""
    await store.insert_payment(pay("pay_1", 1.0), [])
    no_created = pay("pay_2", 2.0)
    del no_created["created_at"]
    await store.insert_payment(no_created, [])
    await store.insert_payment(pay("pay_3", 3.0, merchant_id=None), [])
    assert await search(store) == (["pay_1"], False)
    no_created["status"] = "captured"
    assert await store.update_payment(no_created, 1, [])
    assert await search(store) == (["pay_1"], False)


# -------------------------------------------------------------------------- pagination


async def test_pagination_55_in_pages_of_20(store: Store) -> None:
    ids = await seed(store, 55)
    pages = await all_pages(store, 20)
    assert [len(p) for p in pages] == [20, 20, 15]
    assert [pid for page in pages for pid in page] == ids


async def test_pagination_with_filters_and_range(store: Store) -> None:
    for i in range(30):
        await store.insert_payment(
            pay(f"pay_{i:03d}", 100.0 + i, status="captured" if i % 3 else "authorized",
                reference="r" if i % 2 else "s"), [])
    want = [f"pay_{i:03d}" for i in range(29, -1, -1) if i % 3 and 105 <= 100 + i < 125]
    pages = await all_pages(store, 4, status="captured", created_gte=105.0, created_lt=125.0)
    assert [pid for page in pages for pid in page] == want
    want = [f"pay_{i:03d}" for i in range(29, -1, -1) if i % 2 and i % 3]
    pages = await all_pages(store, 3, reference="r", status="captured")
    assert [pid for page in pages for pid in page] == want


async def test_equal_created_at_orders_by_id_desc_and_pages_through_ties(store: Store) -> None:
    """(created_at desc, id desc) is a total order: ties never repeat or vanish."""
    for pid in ("pay_b", "pay_d", "pay_a", "pay_c", "pay_e"):
        await store.insert_payment(pay(pid, 50.0), [])
    await store.insert_payment(pay("pay_z", 49.0), [])
    await store.insert_payment(pay("pay_0", 51.0), [])
    assert (await search(store))[0] == ["pay_0", "pay_e", "pay_d", "pay_c", "pay_b", "pay_a",
                                        "pay_z"]
    for limit in (1, 2, 3):
        pages = await all_pages(store, limit)
        assert [pid for page in pages for pid in page] == [
            "pay_0", "pay_e", "pay_d", "pay_c", "pay_b", "pay_a", "pay_z"], limit
    assert await search(store, starting_after=(50.0, "pay_c")) == (
        ["pay_b", "pay_a", "pay_z"], False)
    # a cursor between members (a payment that no longer matches, e.g. another status)
    assert await search(store, starting_after=(50.0, "pay_bb")) == (
        ["pay_b", "pay_a", "pay_z"], False)
    assert await search(store, starting_after=(50.0, "pay_c"), created_lt=50.0) == (
        ["pay_z"], False)
    assert await search(store, starting_after=(51.0, "pay_0"), created_gte=50.0, limit=2) == (
        ["pay_e", "pay_d"], True)


async def test_pagination_stable_while_payments_are_inserted(store: Store, store_url: str
                                                             ) -> None:
    """Another writer keeps inserting (newer) payments while the pages are read: the walk
    returns every payment that existed exactly once, in order; the new ones (newer) can
    only come before them, never in between."""
    ids = await seed(store, 55)
    writer = make_store(store_url)
    await writer.open()
    stop = asyncio.Event()

    async def insert_newer() -> int:
        n = 0
        while not stop.is_set():
            await writer.insert_payment(pay(f"pay_new_{n:04d}", 5000.0 + n), [])
            n += 1
            await asyncio.sleep(0.001)
        return n

    task = asyncio.create_task(insert_newer())
    try:
        await asyncio.sleep(0.02)
        pages: list[list[str]] = []
        after: tuple[float, str] | None = None
        while True:
            docs, more = await store.search_payments(
                PaymentSearch(merchant_id="acme", limit=20, starting_after=after))
            pages.append([d["id"] for d in docs])
            if not more:
                break
            after = (docs[-1]["created_at"], docs[-1]["id"])
            await asyncio.sleep(0.01)  # let the writer insert between pages
    finally:
        stop.set()
        inserted = await task
        await writer.close()
    assert inserted > 0
    seen = [pid for page in pages for pid in page]
    assert len(seen) == len(set(seen))
    assert [p for p in seen if not p.startswith("pay_new_")] == ids
    # the new payments are newer than every old one: they come first, never in between
    first_old = seen.index(ids[0])
    assert all(p.startswith("pay_new_") for p in seen[:first_old])
    assert not any(p.startswith("pay_new_") for p in seen[first_old:])


async def test_concurrent_pages_with_inserts_each_payment_once(store: Store, store_url: str
                                                               ) -> None:
    """Readers walk all pages concurrently with a writer; each walk from a fixed cursor
    returns the payments older than that cursor exactly once."""
    ids = await seed(store, 60)
    cursor_doc = await store.get_payment(ids[0])
    assert cursor_doc is not None
    cursor = (cursor_doc["created_at"], cursor_doc["id"])
    writer = make_store(store_url)
    await writer.open()

    async def walk() -> list[str]:
        out: list[str] = []
        after: tuple[float, str] | None = cursor
        while True:
            docs, more = await store.search_payments(
                PaymentSearch(merchant_id="acme", limit=7, starting_after=after))
            out += [d["id"] for d in docs]
            if not more:
                return out
            after = (docs[-1]["created_at"], docs[-1]["id"])

    async def write() -> None:
        for n in range(40):
            await writer.insert_payment(pay(f"pay_new_{n:03d}", 9000.0 + n), [])

    try:
        results = await asyncio.gather(walk(), write(), walk(), walk())
    finally:
        await writer.close()
    for walked in (results[0], results[2], results[3]):
        assert walked == ids[1:]


# ------------------------------------------------------------------ index maintenance


async def test_status_change_moves_the_payment_between_status_filters(store: Store) -> None:
    doc = pay("pay_1", 1.0, status="authorized")
    await store.insert_payment(doc, [])
    await store.insert_payment(pay("pay_2", 2.0, status="authorized"), [])
    assert await search(store, status="authorized") == (["pay_2", "pay_1"], False)
    doc.update(status="captured", updated_at=3.0)
    assert await store.update_payment(doc, 1, [{"type": "captured"}])
    assert await search(store, status="captured") == (["pay_1"], False)
    assert await search(store, status="authorized") == (["pay_2"], False)
    assert await search(store) == (["pay_2", "pay_1"], False)
    # a lost CAS changes no index
    stale = {**doc, "status": "voided"}
    assert not await store.update_payment(stale, 1, [])
    assert await search(store, status="voided") == ([], False)
    assert await search(store, status="captured") == (["pay_1"], False)


async def test_provider_and_reference_changes_move_the_payment(store: Store) -> None:
    doc = pay("pay_1", 1.0, status="pending", provider=None, reference="old")
    await store.insert_payment(doc, [])
    assert await search(store, provider="stripe_main") == ([], False)
    doc.update(provider="stripe_main", status="authorized", reference="new")
    assert await store.update_payment(doc, 1, [])
    assert await search(store, provider="stripe_main") == (["pay_1"], False)
    assert await search(store, reference="old") == ([], False)
    assert await search(store, reference="new") == (["pay_1"], False)
    doc.update(provider="adyen_eu")  # failover to another provider
    assert await store.update_payment(doc, 2, [])
    assert await search(store, provider="stripe_main") == ([], False)
    assert await search(store, provider="adyen_eu", status="authorized") == (["pay_1"], False)
    doc.update(provider=None, reference=None)
    assert await store.update_payment(doc, 3, [])
    assert await search(store, provider="adyen_eu") == ([], False)
    assert await search(store, reference="new") == ([], False)
    assert await search(store) == (["pay_1"], False)


async def test_update_with_notifications_keeps_the_index(store: Store) -> None:
    doc = pay("pay_1", 1.0, status="authorized")
    await store.insert_payment(doc, [])
    doc["status"] = "captured"
    ntf = {"id": "evt_1", "merchant_id": "acme", "payment_id": "pay_1", "type": "t",
           "created_at": 5.0, "payload": {}}
    assert await store.update_payment(doc, 1, [{"type": "x"}], [ntf])
    assert await search(store, status="captured") == (["pay_1"], False)
    assert await store.list_events("pay_1") == [{"type": "x"}]
    assert [n["id"] for n in await store.list_notifications("pay_1")] == ["evt_1"]


# ------------------------------------------------------------------- backend specifics


_OLD_PAYMENTS_TABLE = """
CREATE TABLE payments (
    id TEXT PRIMARY KEY, merchant_id TEXT, status TEXT NOT NULL, provider TEXT,
    provider_reference TEXT, updated_at REAL NOT NULL, version INTEGER NOT NULL,
    reconcile INTEGER NOT NULL DEFAULT 0, doc TEXT NOT NULL
);
CREATE INDEX payments_reconcile ON payments (reconcile, updated_at);
CREATE INDEX payments_provider_ref ON payments (provider, provider_reference);
"""


async def test_sqlite_database_without_search_columns_is_upgraded_on_open(tmp_path: Path
                                                                          ) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_PAYMENTS_TABLE)
    for i, (status, ref) in enumerate([("authorized", "o-1"), ("captured", "o-2"),
                                       ("captured", None)]):
        doc = {**pay(f"pay_{i}", 10.0 + i, status=status, reference=ref), "version": 1}
        conn.execute(
            "INSERT INTO payments (id, merchant_id, status, provider, provider_reference,"
            " updated_at, version, reconcile, doc) VALUES (?, ?, ?, ?, ?, ?, 1, 0, ?)",
            (doc["id"], "acme", status, "stripe_main", None, doc["updated_at"], json.dumps(doc)))
    legacy = pay("pay_legacy", 5.0)
    del legacy["created_at"]  # a doc without created_at stays unsearchable, not an error
    conn.execute("INSERT INTO payments (id, merchant_id, status, updated_at, version, doc)"
                 " VALUES ('pay_legacy', 'acme', 'authorized', 5.0, 1, ?)", (json.dumps(legacy),))
    conn.commit()
    conn.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        assert await search(store) == (["pay_2", "pay_1", "pay_0"], False)
        assert await search(store, reference="o-2") == (["pay_1"], False)
        assert await search(store, status="captured", limit=1) == (["pay_2"], True)
        doc = await store.get_payment("pay_0")
        assert doc is not None
        doc["status"] = "captured"
        assert await store.update_payment(doc, 1, [])
        assert await search(store, status="captured") == (["pay_2", "pay_1", "pay_0"], False)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        cols = {r[1] for r in conn.execute("PRAGMA table_info(payments)")}
        assert {"created_at", "reference"} <= cols
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(payments)")}
        assert {"payments_search", "payments_search_reference", "payments_search_status",
                "payments_search_provider"} <= indexes
        row = conn.execute("SELECT created_at, reference FROM payments WHERE id = 'pay_0'"
                           ).fetchone()
        assert row == (10.0, "o-1")
    finally:
        conn.close()
    store = SQLiteStore(path)  # a second open finds it current and changes nothing
    await store.open()
    try:
        assert await search(store, status="captured") == (["pay_2", "pay_1", "pay_0"], False)
    finally:
        await store.close()


@pytest.mark.parametrize("query", [
    {}, {"reference": "r"}, {"status": "captured"}, {"provider": "stripe_main"},
    {"status": "captured", "created_gte": 1.0, "starting_after": (5.0, "pay_x")},
])
async def test_sqlite_every_search_reads_one_index_range(tmp_path: Path, query: dict) -> None:
    """The plan is an index SEARCH in page order (no scan, no sort step)."""
    from gateway.store.sqlite import _search_sql

    store = SQLiteStore(tmp_path / "plan.db")
    await store.open()
    try:
        sql, params = _search_sql(PaymentSearch(merchant_id="acme", **query))
        conn = sqlite3.connect(tmp_path / "plan.db")
        plan = " | ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        conn.close()
    finally:
        await store.close()
    assert plan.startswith("SEARCH payments USING INDEX payments_search"), plan
    assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan


async def test_redis_search_index_layout(redis_url: str) -> None:
    s = RedisStore(redis_url)
    await s.open()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        doc = pay("pay_1", 12.5, status="authorized", reference="order-7")
        await s.insert_payment(doc, [])
        assert raw.zscore(search_key("acme", "all"), "pay_1") == 12.5
        assert raw.zscore(search_key("acme", "st", "authorized"), "pay_1") == 12.5
        assert raw.zscore(search_key("acme", "pv", "stripe_main"), "pay_1") == 12.5
        assert raw.zscore(search_key("acme", "ref", "order-7"), "pay_1") == 12.5
        prefix = search_key("acme", "all")[: -len("all")]
        assert prefix.startswith("gw:ix:{") and prefix.endswith("}:")
        assert search_key("globex", "all") != search_key("acme", "all")
        doc["status"] = "captured"
        assert await s.update_payment(doc, 1, [])
        assert raw.exists(search_key("acme", "st", "authorized")) == 0  # emptied, gone
        assert raw.zscore(search_key("acme", "st", "captured"), "pay_1") == 12.5
    finally:
        raw.close()
        await s.close()


async def test_redis_payment_written_before_the_index_is_indexed_by_its_next_update(
        redis_url: str) -> None:
    """A payment stored by a version without search indexes shows up once it changes."""
    s = RedisStore(redis_url)
    await s.open()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        doc = {**pay("pay_old", 3.0, status="authorized"), "version": 1}
        raw.hset(doc_key("pay_old"), mapping={"v": "1", "doc": json.dumps(doc)})
        raw.rpush(events_key("pay_old"), json.dumps({"type": "created"}))
        assert await search(s) == ([], False)
        doc["status"] = "captured"
        assert await s.update_payment(doc, 1, [])
        assert await search(s, status="captured") == (["pay_old"], False)
        assert await search(s, status="authorized") == ([], False)
    finally:
        raw.close()
        await s.close()


async def test_redis_payments_stored_before_the_index_are_indexed_once(redis_url: str) -> None:
    """index_existing_payments: the Redis counterpart of the SQLite upgrade."""
    s = RedisStore(redis_url)
    await s.open()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for i, status in enumerate(["authorized", "captured", "captured"]):
            doc = {**pay(f"pay_old{i}", 10.0 + i, status=status, reference=f"o-{i}"),
                   "version": 1}
            raw.hset(doc_key(doc["id"]), mapping={"v": "1", "doc": json.dumps(doc)})
        unsearchable = {**pay("pay_nocreated", 1.0), "version": 1}
        del unsearchable["created_at"]
        raw.hset(doc_key("pay_nocreated"), mapping={"v": "1", "doc": json.dumps(unsearchable)})
        await s.insert_payment(pay("pay_new", 20.0), [])  # indexed already: stays once
        raw.set("gw:{ntf}:e:evt_1", "x")  # other keys are left alone
        assert await search(s) == (["pay_new"], False)

        assert await s.index_existing_payments(batch=2) == 4
        assert await search(s) == (["pay_new", "pay_old2", "pay_old1", "pay_old0"], False)
        assert await search(s, status="captured") == (["pay_old2", "pay_old1"], False)
        assert await search(s, reference="o-0") == (["pay_old0"], False)
        assert await s.index_existing_payments() is None  # done: not scanned again
        assert raw.get(SEARCH_READY_KEY) == "1"
    finally:
        raw.close()
        await s.close()


async def test_redis_backfill_never_indexes_a_stale_read(redis_url: str) -> None:
    """A payment updated between the backfill's read and its write keeps the index its
    update wrote (the backfill's write is conditional on the version it read)."""
    s = RedisStore(redis_url)
    await s.open()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        doc = {**pay("pay_old", 5.0, status="authorized"), "version": 1}
        raw.hset(doc_key("pay_old"), mapping={"v": "1", "doc": json.dumps(doc)})
        doc["status"] = "captured"
        assert await s.update_payment(doc, 1, [])  # now version 2, indexed as captured
        stale = {**doc, "status": "authorized"}
        assert await s._eval("ix_backfill", [doc_key("pay_old")],
                             ["1", "pay_old", *search_index_args(stale)]) == 0
        assert await search(s, status="authorized") == ([], False)
        assert await search(s, status="captured") == (["pay_old"], False)
    finally:
        raw.close()
        await s.close()


async def test_a_merchant_only_ever_gets_its_own_payments(store: Store) -> None:
    """Even if a doc's merchant_id changed (the gateway never does that), the old
    merchant's list no longer shows it."""
    doc = pay("pay_1", 1.0)
    await store.insert_payment(doc, [])
    doc["merchant_id"] = "globex"
    assert await store.update_payment(doc, 1, [])
    assert await search(store, "acme") == ([], False)
    assert await search(store, "acme", status="authorized") == ([], False)
    assert await search(store, "globex") == (["pay_1"], False)
