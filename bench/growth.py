"""Growth (#15): does the gateway slow down as payments accumulate, and does the purge of
expired idempotency records stall requests?

Stores filled directly (SQLite: bench/search.py's bulk rows with every column the store
writes; Redis: through ``RedisStore.insert_payment``; 90 % of the payments belong to the
bench merchant), then measured through HTTP: per store, two `gateway serve` processes
run side by side, one on ``--small`` stored payments and one on ``--large``, and for
``--rounds`` rounds each kind of request is sent to one then the other as an open loop at
``--rate`` requests/s for ``--duration`` s:

- ``authorize``: ``POST /v1/payments`` (Stripe simulator in a `gateway sandbox` process);
- ``get``: ``GET /v1/payments/{id}`` of a random stored payment;
- ``by reference``: ``GET /v1/payments?reference=order-<n>`` of a random stored payment;
- ``first page``: ``GET /v1/payments?limit=100``.

Printed: p50 / p99 per size (medians over the rounds), the large/small ratio of the p50s,
and every answer that was not 200/201.

Then the purge (SQLite; Redis expires idempotency keys by TTL): a store holding
``--purge-rows`` completed idempotency records that expire 15 s after the gateway opened
it (so the purge at open finds nothing), authorizations at ``--rate``/s for 75 s: once a
minute (gateway.store.sqlite ``_PURGE_EVERY_S``) the store starts deleting expired records
inside the claims' own transactions, at most ``PURGE_BATCH`` (200) per claim, the next
claim going on while a batch came back full, so no single request carries the whole
delete. Printed: p50 / p99, the five slowest requests with their start times (s after the
load began; the purge is due at ~58 s and 60,000 records take ~300 claims), the slowest
in 55-67 s, the expired records left afterwards (0: the purge finished), and the same run
without expired records beside it.

    .venv/bin/python bench/growth.py [--stores sqlite,redis] [--small 1000]
        [--large 100000] [--rate 50] [--duration 5] [--rounds 3] [--purge-rows 60000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import headers, private_redis, tempdir
from bench.procs import (
    Call,
    Gateway,
    Run,
    gateway,
    median,
    open_loop,
    payment_call,
    pct,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session
from bench.search import _SQLITE_INSERT, MERCHANT, _sqlite_rows, docs, merchant_of, pid_of
from gateway.store import RedisStore, SQLiteStore
from gateway.store.redis import SEARCH_INDEX_VERSION, SEARCH_READY_KEY

KINDS = ("authorize", "get", "by reference", "first page")


def _mine(rng: random.Random, n: int) -> int:
    i = rng.randrange(n)
    while merchant_of(i) != MERCHANT:
        i -= 1
    return i


def calls(s: aiohttp.ClientSession, base: str, n: int, prefix: str) -> dict[str, Call]:
    rng = random.Random(n)
    auth = headers("unused")

    async def get(i: int) -> tuple[int, dict[str, Any] | None]:
        async with s.get(f"{base}/v1/payments/{pid_of(_mine(rng, n))}", headers=auth) as r:
            await r.read()
            return r.status, None

    async def by_reference(i: int) -> tuple[int, dict[str, Any] | None]:
        k = _mine(rng, n)
        async with s.get(f"{base}/v1/payments", params={"reference": f"order-{k}"},
                         headers=auth) as r:
            found = (await r.json())["data"] if r.status == 200 else []
            return (r.status if [p["id"] for p in found] == [pid_of(k)] else 0), None

    async def first_page(i: int) -> tuple[int, dict[str, Any] | None]:
        async with s.get(f"{base}/v1/payments", params={"limit": "100"}, headers=auth) as r:
            page = (await r.json())["data"] if r.status == 200 else []
            return (r.status if len(page) == 100 else 0), None

    return {"authorize": payment_call(s, base, prefix), "get": get,
            "by reference": by_reference, "first page": first_page}


async def make_schema(path: Path) -> None:
    store = SQLiteStore(path)  # creates the tables and indexes
    await store.open()
    await store.close()


async def fill_both(d: Path, n: int, redis_url: str) -> Path:
    """A SQLite file (bulk rows, bench/search.py's) and a Redis database (through
    RedisStore.insert_payment, 64 at a time) holding the same ``n`` payments."""
    d.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a bench, nothing else runs)
    path = d / "gw.db"
    await make_schema(path)
    t = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    store = RedisStore(redis_url)
    await store.open()
    try:
        for batch in docs(n):
            raws = [json.dumps(x, separators=(",", ":")) for x in batch]
            conn.execute("BEGIN")
            conn.executemany(_SQLITE_INSERT, _sqlite_rows(batch, raws))
            conn.execute("COMMIT")
            for k in range(0, len(batch), 64):
                await asyncio.gather(*[store.insert_payment(x, [])
                                       for x in batch[k:k + 64]])
    finally:
        conn.close()
        await store.close()
    client = redis.Redis.from_url(redis_url)
    client.set(SEARCH_READY_KEY, SEARCH_INDEX_VERSION)  # indexed as the store writes them
    client.close()
    print(f"  filled {n:,} payments in {time.perf_counter() - t:.0f} s", flush=True)
    return path


async def growth(store: str, urls: dict[str, str], dirs: dict[int, Path],
                 store_urls: dict[int, str], ns: argparse.Namespace) -> list[str]:
    sizes = sorted(dirs)
    figures: dict[tuple[str, int], dict[str, list[float]]] = {}
    wrong: Counter[str] = Counter()
    async with gateway(dirs[sizes[0]] / store, store_urls[sizes[0]],
                       providers_at(urls, "stripe")) as small, \
            gateway(dirs[sizes[1]] / store, store_urls[sizes[1]],
                    providers_at(urls, "stripe")) as large, \
            http_session(limit=0) as s:
        gws: dict[int, Gateway] = {sizes[0]: small, sizes[1]: large}
        run_tag = tag()
        for r in range(ns.rounds):
            for kind in KINDS:
                for n in sizes:
                    call = calls(s, gws[n].base, n, f"gr-{run_tag}-{n}-{r}")[kind]
                    run: Run = await open_loop(call, ns.rate, ns.duration)
                    ok = 201 if kind == "authorize" else 200
                    lat = run.latencies(ok)
                    f = figures.setdefault((kind, n), {"p50": [], "p99": []})
                    f["p50"].append(median(lat))
                    f["p99"].append(pct(lat, 0.99))
                    for x in run.samples:
                        if x.status != ok:
                            wrong[f"{kind}@{n}:{'error' if x.status == -1 else x.status}"] += 1
    lines = []
    for kind in KINDS:
        cells = []
        for n in sizes:
            f = figures[(kind, n)]
            cells.append(f"{statistics.median(f['p50']) * 1000:7.1f} "
                         f"{statistics.median(f['p99']) * 1000:7.1f}")
        ratio = (statistics.median(figures[(kind, sizes[1])]["p50"])
                 / statistics.median(figures[(kind, sizes[0])]["p50"]))
        lines.append(f"{store + ' ' + kind:20} {cells[0]}   {cells[1]}   {ratio:5.2f}x")
    other = ", ".join(f"{n}x{k}" for k, n in sorted(wrong.items())) or "none"
    lines.append(f"{store}: answers other than 200/201: {other}")
    return lines


def add_expiring_records(path: Path, rows: int, expires_at: float) -> None:
    """``rows`` completed idempotency records, each with a stored payment as its answer."""
    template = json.dumps(next(docs(1))[0], separators=(",", ":"))
    response = json.dumps({"status": 201, "body": template})
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO idempotency (scope, key, fingerprint, state, lease_until, created_at,"
        " expires_at, response) VALUES (?, ?, ?, 'completed', ?, ?, ?, ?)",
        ((f"{MERCHANT}:POST:/v1/payments", f"old-{i}", "f" * 64, now, now, expires_at,
          response) for i in range(rows)))
    conn.execute("COMMIT")
    conn.close()


async def purge(urls: dict[str, str], tmp: Path, ns: argparse.Namespace) -> list[str]:
    out = []
    for rows in (ns.purge_rows, 0):
        d = tmp / f"purge{rows}"
        d.mkdir(parents=True)
        path = d / "gw.db"
        await make_schema(path)
        started = time.time()
        add_expiring_records(path, rows, started + 15 + 5)  # ~5 s for the gateway's start
        async with gateway(d, f"sqlite:///{path}", providers_at(urls, "stripe")) as gw, \
                http_session(limit=0) as s:
            run = await open_loop(payment_call(s, gw.base, f"pg-{tag()}"), ns.rate, 75.0)
        ok = [x for x in run.samples if x.status == 201]
        slow = sorted(ok, key=lambda x: -x.latency)[:5]
        others = len(run.samples) - len(ok)
        # the purge is due at the first claim 60 s after the store was opened (at the
        # gateway's start, just before the load)
        window = [x.latency for x in ok if 55 <= x.start <= 67]
        conn = sqlite3.connect(path)
        left = conn.execute("SELECT COUNT(*) FROM idempotency WHERE key LIKE 'old-%'"
                            ).fetchone()[0]
        conn.close()
        out.append(f"sqlite, {rows:,} expiring records: p50 "
                   f"{median([x.latency for x in ok]) * 1000:.1f} ms, p99 "
                   f"{pct([x.latency for x in ok], 0.99) * 1000:.1f} ms; slowest "
                   + ", ".join(f"{x.latency * 1000:.0f} ms @{x.start:.1f}s" for x in slow)
                   + f"; slowest 55-67 s after the start "
                   f"{max(window, default=float('nan')) * 1000:.0f} ms; expired records left "
                   f"{left:,}; non-201: {others}")
        print(out[-1], flush=True)
    return out


async def main_async(ns: argparse.Namespace) -> None:
    tmp = tempdir()
    out: list[str] = []
    with sandbox(tmp / "sandbox.log") as ready, private_redis() as redis_url:
        urls = ready["base_urls"]
        base = redis_url.rsplit("/", 1)[0]
        sizes = [ns.small, ns.large]
        redis_of = {n: f"{base}/{i + 1}" for i, n in enumerate(sizes)}
        dirs = {n: tmp / f"n{n}" for n in sizes}
        paths = ({} if ns.purge_only else
                 {n: await fill_both(dirs[n], n, redis_of[n]) for n in sizes})
        for store in ([] if ns.purge_only else ns.stores.split(",")):
            store_urls = ({n: f"sqlite:///{paths[n]}" for n in sizes} if store == "sqlite"
                          else redis_of)
            lines = await growth(store, urls, dirs, store_urls, ns)
            for line in lines:
                print(line, flush=True)
            out += lines
        purged = await purge(urls, tmp, ns) if ns.purge_rows and "sqlite" in ns.stores else []
    print(f"\nopen loop {ns.rate:g}/s, {ns.duration:g} s per kind and size, medians of "
          f"{ns.rounds} rounds (ms); ratio = p50 at {ns.large:,} / p50 at {ns.small:,}")
    print(f"{'':20} {f'{ns.small:,} p50':>7} {'p99':>7}   {f'{ns.large:,} p50':>7} {'p99':>7}"
          "   ratio")
    for line in out:
        print(line)
    if purged:
        print("\npurge of expired idempotency records (200 per claim from the minute on):")
        for line in purged:
            print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--purge-rows", type=int, default=60_000)
    p.add_argument("--purge-only", action="store_true")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
