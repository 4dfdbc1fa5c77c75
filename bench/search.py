"""Search and list latency (SPEC 3.1) at 1,000,000 payments, SQLite store vs Redis store.

Fills a fresh SQLite file and a private redis-server with ``--payments`` payments (default
1,000,000) written in bulk: SQLite rows with every column the store's insert writes, in
large transactions; Redis through the store's own insert script (so its search indexes
are exactly what the gateway writes), pipelined. 90 % of them belong to merchant
``bench`` (the one searched), the rest to ``other``; statuses, providers and references
vary. Then, through ``Store.search_payments`` (what ``GET /v1/payments`` calls), it prints
p50 / p99 over ``--samples`` calls of:

* a reference lookup (``reference=order-<n>``, random existing references),
* the first page of 100,
* a deep page of 100 (``starting_after`` a random payment in the older half),
* a deep page of 100 with ``status=captured``.

With ``--upgrade`` it also times the one-off upgrade of a store written before search
existed: SQLite's migration on open (the column fill and the four index builds; the
column additions themselves are instant) and Redis' ``index_existing_payments``.

    .venv/bin/python bench/search.py [--payments N] [--samples S] [--upgrade]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench.common import private_redis, tempdir
from gateway.model import new_payment
from gateway.store import PaymentSearch, RedisStore, SQLiteStore, Store, in_reconcile_index
from gateway.store.redis import (
    _INSERT,
    SEARCH_READY_KEY,
    UNRESOLVED_KEY,
    _insert_args,
    doc_key,
    events_key,
)

MERCHANT = "bench"
BASE = 1_700_000_000.0
STEP_S = 0.002  # created_at of payment i is BASE + i * STEP_S
STATUSES = ["captured"] * 5 + ["authorized"] * 2 + ["declined", "refunded", "voided"]
PROVIDERS = ["stripe_main", "adyen_eu", "braintree_us"]
BATCH = 20_000


def merchant_of(i: int) -> str:
    return "other" if i % 10 == 9 else MERCHANT


def pid_of(i: int) -> str:
    return f"pay_{i:09d}"


def docs(n: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of stored payment documents, as the gateway writes them."""
    body = {"amount": 1250, "currency": "EUR", "capture": "manual",
            "payment_method": {"type": "card", "token": "tok_visa", "brand": "visa"},
            "metadata": {"cart": "c-77"}}
    template = new_payment("pay_x", MERCHANT, body, "f" * 64)
    rng = random.Random(7)
    batch: list[dict[str, Any]] = []
    for i in range(n):
        created = BASE + i * STEP_S
        status = STATUSES[rng.randrange(len(STATUSES))]
        provider = PROVIDERS[i % 3] if status != "declined" or i % 2 else None
        doc = {**template, "id": pid_of(i), "merchant_id": merchant_of(i), "status": status,
               "provider": provider, "reference": f"order-{i}", "created_at": created,
               "updated_at": created + 1.5, "version": 1,
               "provider_reference": None if provider is None else f"pi_{i}",
               "routing": {"rule": "default", "config_version": "3f9c2a1"},
               "amount_authorized": 0 if status == "declined" else 1250,
               "amount_captured": 1250 if status in ("captured", "refunded") else 0,
               "attempts": [{"provider": provider or "stripe_main",
                             "outcome": "declined" if status == "declined" else "succeeded",
                             "started_at": "2023-11-14T22:13:20.000Z", "duration_ms": 212,
                             "_key": f"{pid_of(i)}:1:authorize"}]}
        batch.append(doc)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


_SQLITE_INSERT = (
    "INSERT INTO payments (id, merchant_id, status, provider, provider_reference, updated_at,"
    " version, reconcile, doc, created_at, reference) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)")


def _sqlite_rows(batch: list[dict[str, Any]], raws: list[str]) -> list[tuple[Any, ...]]:
    return [(d["id"], d["merchant_id"], d["status"], d["provider"], d["provider_reference"],
             d["updated_at"], int(in_reconcile_index(d)), raw, d["created_at"], d["reference"])
            for d, raw in zip(batch, raws, strict=True)]


def fill(n: int, sqlite_path: Path, redis_url: str) -> dict[str, float]:
    """Bulk insert (blocking: nothing else runs meanwhile); the schema must exist."""
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    client = redis.Redis.from_url(redis_url)
    insert = client.register_script(_INSERT)
    took = {"json": 0.0, "sqlite": 0.0, "redis": 0.0}
    done = 0
    for batch in docs(n):
        t = time.perf_counter()
        raws = [json.dumps(d, separators=(",", ":")) for d in batch]
        took["json"] += time.perf_counter() - t
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(_SQLITE_INSERT, _sqlite_rows(batch, raws))
        conn.execute("COMMIT")
        took["sqlite"] += time.perf_counter() - t
        t = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for d in batch:  # the store's own script and arguments (RedisStore.insert_payment)
            pid, args = _insert_args(d, [])
            insert(keys=[doc_key(pid), events_key(pid), UNRESOLVED_KEY], args=args,
                   client=pipe)
        pipe.execute()
        took["redis"] += time.perf_counter() - t
        done += len(batch)
        if done % 200_000 == 0 or done == n:
            print(f"  filled {done:,} / {n:,}  (json {took['json']:.0f} s, sqlite "
                  f"{took['sqlite']:.0f} s, redis {took['redis']:.0f} s)", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    took["redis_memory_mb"] = float(client.info("memory")["used_memory"]) / 2**20
    client.close()
    took["sqlite_mb"] = sqlite_path.stat().st_size / 2**20
    return took


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


async def _timed(samples: int, call: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    for k in range(min(20, samples)):  # warm up
        await call(k)
    out = []
    for k in range(samples):
        t = time.perf_counter()
        await call(k)
        out.append(time.perf_counter() - t)
    return _pct(out, 0.50), _pct(out, 0.99)


def _mine_at_or_below(i: int) -> int:
    while merchant_of(i) != MERCHANT:
        i -= 1
    return i


async def measure(store: Store, n: int, samples: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(11)
    refs = [_mine_at_or_below(rng.randrange(n)) for _ in range(samples + 20)]
    deep = [_mine_at_or_below(rng.randrange(n // 20, n // 2)) for _ in range(samples + 20)]

    async def reference(k: int) -> None:
        i = refs[k]
        got, _ = await store.search_payments(
            PaymentSearch(merchant_id=MERCHANT, reference=f"order-{i}"))
        assert [d["id"] for d in got] == [pid_of(i)], (i, got[:1])

    async def first(k: int) -> None:
        got, more = await store.search_payments(PaymentSearch(merchant_id=MERCHANT, limit=100))
        assert len(got) == 100 and more and got[0]["id"] == pid_of(_mine_at_or_below(n - 1))

    async def deep_page(k: int) -> None:
        i = deep[k]
        after = (BASE + i * STEP_S, pid_of(i))
        got, more = await store.search_payments(
            PaymentSearch(merchant_id=MERCHANT, limit=100, starting_after=after))
        assert len(got) == 100 and more and got[0]["id"] == pid_of(_mine_at_or_below(i - 1))

    async def deep_status(k: int) -> None:
        i = deep[k]
        after = (BASE + i * STEP_S, pid_of(i))
        got, more = await store.search_payments(PaymentSearch(
            merchant_id=MERCHANT, limit=100, status="captured", starting_after=after))
        assert more and len(got) == 100 and all(d["status"] == "captured" for d in got)
        assert got[0]["created_at"] < after[0]

    return {
        "reference lookup": await _timed(samples, reference),
        "first page of 100": await _timed(samples, first),
        "deep page of 100 (starting_after)": await _timed(samples, deep_page),
        "deep page of 100, status=captured": await _timed(samples, deep_status),
    }


async def time_upgrades(sqlite_path: Path, redis_url: str) -> dict[str, float]:
    """Undo what the upgrades did (schema version, search indexes; Redis' done marker),
    then time the upgrades."""
    conn = sqlite3.connect(sqlite_path)
    conn.execute("PRAGMA user_version = 0")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                " AND name LIKE 'payments_search%'").fetchall():
        conn.execute(f"DROP INDEX {name}")
    conn.commit()
    conn.close()
    took = {}
    t = time.perf_counter()
    store: Store = SQLiteStore(sqlite_path)
    await store.open()
    took["sqlite"] = time.perf_counter() - t
    await store.close()
    client = redis.Redis.from_url(redis_url)
    client.delete(SEARCH_READY_KEY)
    client.close()
    redis_store = RedisStore(redis_url)
    await redis_store.open()
    t = time.perf_counter()
    await redis_store.index_existing_payments()
    took["redis"] = time.perf_counter() - t
    await redis_store.close()
    return took


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--payments", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--upgrade", action="store_true",
                    help="also time the upgrade of a store written before search existed")
    args = ap.parse_args()
    n = args.payments
    with private_redis() as redis_url:
        path = tempdir() / "search.db"
        print(f"filling SQLite ({path}) and Redis with {n:,} payments "
              f"({n - n // 10:,} of merchant {MERCHANT!r})", flush=True)
        t = time.perf_counter()
        schema = SQLiteStore(path)  # creates the tables and the search indexes
        await schema.open()
        await schema.close()
        took = fill(n, path, redis_url)
        print(f"filled in {time.perf_counter() - t:.0f} s: SQLite file "
              f"{took['sqlite_mb']:.0f} MiB, Redis used_memory {took['redis_memory_mb']:.0f} MiB")
        results: dict[str, dict[str, tuple[float, float]]] = {}
        try:
            for name, store in (("sqlite", SQLiteStore(path)), ("redis", RedisStore(redis_url))):
                await store.open()
                try:
                    results[name] = await measure(store, n, args.samples)
                finally:
                    await store.close()
            upgrades = await time_upgrades(path, redis_url) if args.upgrade else None
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
    print(f"\nStore.search_payments at {n:,} payments, {args.samples} calls each "
          "(ms, p50 / p99):")
    print(f"  {'':36s} {'SQLite':>17s} {'Redis':>17s}")
    for what in results["sqlite"]:
        cells = [f"{results[s][what][0]:7.2f} / {results[s][what][1]:7.2f}"
                 for s in ("sqlite", "redis")]
        print(f"  {what:36s} {cells[0]:>17s} {cells[1]:>17s}")
    if upgrades is not None:
        print(f"\nupgrade of a store written before search, {n:,} payments: SQLite open "
              f"(migration) {upgrades['sqlite']:.1f} s, Redis index_existing_payments "
              f"{upgrades['redis']:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
