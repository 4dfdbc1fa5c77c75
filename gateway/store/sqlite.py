"""SQLite backend: durable, single node (SPEC section 10).

Design:

* One ``sqlite3`` connection, used only from ONE dedicated single-thread executor, so
  the event loop never blocks on disk I/O and calls on one store are serialised. Its
  queue is bounded by a per-request budget (:mod:`gateway.store.pool`): at most
  ``pool_size`` requests use the store at once; the next one's first call waits
  ``pool_timeout_s`` for a place, then StoreError (503) before anything is claimed.
* ``journal_mode=WAL`` and ``synchronous=FULL``: a commit is on disk when the call
  returns.
* Group commit for the payment hot path's writes (:meth:`SQLiteStore._write`: claim with
  insert, payment update, idempotency completion/release, notification attempts): the
  writes that arrive while the store thread is busy wait in a list, and the thread then
  runs them all in ONE ``BEGIN IMMEDIATE`` transaction, each inside its own ``SAVEPOINT``
  (one write that fails is rolled back alone and raises to its caller only), with one
  ``COMMIT`` (one fsync) for all, and hands every caller its result in one event-loop
  callback, after that commit: no caller sees its write done before it is on disk, and
  when the commit fails every write of the group fails with StoreError. A write arriving
  at an idle store runs at once, alone. Fewer fsyncs and fewer executor round trips per
  payment; the loop never waits on the disk.
* Every read-then-write runs in a ``BEGIN IMMEDIATE`` transaction, which takes the
  database write lock up front; several processes (or several store instances) on one
  file therefore stay atomic too (``busy_timeout`` makes the others wait).
* Times are ``time.time()`` of this host.
* The tables, the schema version and the migrations are in
  :mod:`gateway.store.sqlite_schema`.

The semantics both backends share are written down in :mod:`gateway.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.base import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT_S,
    AlreadyExists,
    Claim,
    ClaimOutcome,
    Completion,
    EventSearch,
    IdempotencyRecord,
    PaymentInsert,
    PaymentQuery,
    PaymentSearch,
    Store,
    StoreError,
    check_ledger_entry,
    dumps,
    in_reconcile_index,
    new_notification,
    requeue,
    search_fields,
    search_reference,
    settle_notification,
)
from gateway.store.pool import RequestBudget
from gateway.store.sqlite_schema import SCHEMA_VERSION, SEARCH_INDEXES, apply_schema

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

#: one write waiting for the next group commit: the function, its arguments, its future
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the event loop: hand each write of a committed (or failed) group its answer."""
    for future, value, exc in results:
        if future.done():  # its caller was cancelled; the write itself stands
            continue
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

#: Unmatched webhooks kept (the oldest beyond this are dropped).
UNMATCHED_WEBHOOKS_MAX = 10_000

_PURGE_EVERY_S = 60.0
#: Expired idempotency records deleted per purge step: a purge rides in a claim's own
#: transaction, a bounded batch at a time (a backlog is worked off over the next claims,
#: never in one long transaction that stalls a request).
PURGE_BATCH = 200


def _payment_fields(doc: dict[str, Any]) -> tuple[str, float]:
    pid = doc.get("id")
    if not isinstance(pid, str) or not pid:
        raise ValueError("payment doc needs a non-empty string 'id'")
    updated_at = doc.get("updated_at")
    if isinstance(updated_at, bool) or not isinstance(updated_at, int | float):
        raise ValueError("payment doc needs a numeric 'updated_at' (unix seconds)")
    if not isinstance(doc.get("status"), str):
        raise ValueError("payment doc needs a string 'status'")
    return pid, float(updated_at)


def _search_columns(doc: dict[str, Any]) -> tuple[float | None, str | None]:
    fields = search_fields(doc)
    return (None if fields is None else fields[1]), search_reference(doc)


def _search_sql(query: PaymentSearch) -> tuple[str, list[Any]]:
    """The page query: equality filters, then one index range in page order."""
    way = ("reference" if query.reference is not None else "status"
           if query.status is not None else "provider" if query.provider is not None else "all")
    index = SEARCH_INDEXES[way].split(" ", 1)[0]
    where = ["merchant_id = ?"]
    params: list[Any] = [query.merchant_id]
    for column in ("reference", "status", "provider"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.created_gte is not None:
        where.append("created_at >= ?")
        params.append(float(query.created_gte))
    else:
        where.append("created_at IS NOT NULL")
    # One upper bound as a row value, so a deep page starts at its cursor in the index:
    # created_at < lt is (created_at, id) < (lt, '') ('' sorts before every id).
    upper: tuple[float, str] | None = None
    if query.created_lt is not None:
        upper = (float(query.created_lt), "")
    if query.starting_after is not None:
        after = (float(query.starting_after[0]), str(query.starting_after[1]))
        upper = after if upper is None or after < upper else upper
    if upper is not None:
        where.append("(created_at, id) < (?, ?)")
        params.extend(upper)
    sql = (f"SELECT doc FROM payments INDEXED BY {index} WHERE {' AND '.join(where)}"
           " ORDER BY created_at DESC, id DESC LIMIT ?")
    params.append(int(query.limit) + 1)
    return sql, params


def _matches(doc: dict[str, Any], query: PaymentQuery) -> bool:
    if query.provider is not None and doc.get("provider") != query.provider:
        return False
    return all(doc.get(k) == v for k, v in query.extra.items())


def _retry_after(lease_until: float, now: float) -> float:
    return float(max(1, math.ceil(lease_until - now)))


class SQLiteStore(Store):
    """Store on one SQLite file; see the module docstring for the guarantees."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0,
                 pool_size: int = DEFAULT_POOL_SIZE,
                 pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S) -> None:
        self._path = Path(path)
        #: requests using the store at once; see gateway.store.pool
        self.budget = RequestBudget(pool_size, pool_timeout_s, f"sqlite: {self._path}")
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._last_purge = 0.0
        # group commit (see _write): the writes waiting for the store thread, whether a
        # group is already submitted to it, and whether the thread is inside a group
        self._group: list[_Job] = []
        self._group_lock = threading.Lock()
        self._group_submitted = False
        self._in_group = False

    @property
    def path(self) -> Path:
        return self._path

    # plumbing ------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("SQLite store is not open")
        await self.budget.admit()  # a request's first call waits here, or StoreError
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {self._path}: {exc}") from exc

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the write ``fn(*args)`` (it must make its changes inside ``self._tx()``)
        with the next group commit (module docstring); its result once committed."""
        if self._executor is None:
            raise StoreError("SQLite store is not open")
        await self.budget.admit()  # a request's first call waits here, or StoreError
        executor = self._executor
        if executor is None:  # closed while this call waited for a place
            raise StoreError("SQLite store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._group_lock:
            self._group.append((fn, args, future))
            submit = not self._group_submitted
            self._group_submitted = True
        if submit:
            try:
                executor.submit(self._commit_group_sync, loop)
            except RuntimeError:  # the executor was shut down (closed meanwhile)
                with self._group_lock:
                    stranded, self._group = self._group, []
                    self._group_submitted = False
                _deliver([(f, None, StoreError("SQLite store is not open"))
                          for _, _, f in stranded])
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {self._path}: {exc}") from exc

    def _commit_group_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the store thread: run every waiting write in one transaction and commit."""
        with self._group_lock:
            jobs, self._group = self._group, []
            self._group_submitted = False
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            self._in_group = True
            try:
                for fn, args, future in jobs:
                    try:
                        results.append((future, fn(*args), None))
                    except Exception as exc:  # rolled back to its savepoint by _tx
                        results.append((future, None, exc))
                    if not conn.in_transaction:
                        # SQLite itself rolled the whole transaction back (an I/O error,
                        # a full disk): nothing of the group is kept
                        raise sqlite3.OperationalError(
                            "the group's transaction was rolled back by SQLite")
            finally:
                self._in_group = False
            conn.execute("COMMIT")
        except Exception as exc:  # not begun, rolled back, or the commit failed
            with contextlib.suppress(Exception):
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            results = [(future, None, exc) for _, _, future in jobs]
        loop.call_soon_threadsafe(_deliver, results)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("SQLite store is not open")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.
        Inside a group commit (:meth:`_write`), a savepoint of the group's transaction:
        released on success, rolled back (alone) on error."""
        conn = self._db()
        if self._in_group:
            conn.execute("SAVEPOINT write")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                raise
            conn.execute("RELEASE write")
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        with self._group_lock:  # nothing of an earlier open is left waiting
            self._group, self._group_submitted = [], False
        try:
            await self._run(self._open_sync)
        except OSError as exc:  # a missing, unwritable or full directory
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"sqlite: cannot open {self._path}: {exc.strerror or exc}") from exc
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite: could not enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")
            apply_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._purge(time.time())

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> bool:
        if self._executor is None:
            return False
        try:
            return await self._run(self._ping_sync)
        except StoreError:
            return False

    def _ping_sync(self) -> bool:
        """Ready means able to take a write (a read-only file or a full disk is not)."""
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO health (k, at) VALUES (1, ?)", (time.time(),))
        return True

    # payments ------------------------------------------------------------------
    async def insert_payment(self, doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
        pid, updated_at = _payment_fields(doc)
        stored = {**doc, "version": 1}
        ok = await self._write(
            self._insert_sync, pid, stored, updated_at, [dumps(e) for e in events]
        )
        if not ok:
            raise AlreadyExists(f"payment {pid} already exists")
        doc["version"] = 1

    def _insert_sync(
        self, pid: str, stored: dict[str, Any], updated_at: float, events: list[str]
    ) -> bool:
        with self._tx() as conn:
            return self._insert_in(conn, pid, stored, updated_at, events)

    @staticmethod
    def _insert_in(
        conn: sqlite3.Connection, pid: str, stored: dict[str, Any], updated_at: float,
        events: list[str],
    ) -> bool:
        cur = conn.execute(
            "INSERT INTO payments (id, merchant_id, status, provider, provider_reference,"
            " updated_at, version, reconcile, doc, created_at, reference)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                pid,
                stored.get("merchant_id"),
                stored["status"],
                stored.get("provider"),
                stored.get("provider_reference"),
                updated_at,
                1,
                int(in_reconcile_index(stored)),
                dumps(stored),
                *_search_columns(stored),
            ),
        )
        if cur.rowcount != 1:
            return False
        conn.executemany(
            "INSERT INTO events (payment_id, event) VALUES (?, ?)", [(pid, e) for e in events]
        )
        return True

    async def get_payment(self, payment_id: str) -> dict[str, Any] | None:
        raw = await self._run(self._get_sync, payment_id)
        return None if raw is None else json.loads(raw)

    def _get_sync(self, payment_id: str) -> str | None:
        row = self._db().execute("SELECT doc FROM payments WHERE id = ?", (payment_id,)).fetchone()
        return None if row is None else str(row["doc"])

    async def update_payment(
        self, doc: dict[str, Any], expected_version: int, events: list[dict[str, Any]],
        notifications: Sequence[dict[str, Any]] = (),
        ledger: Sequence[dict[str, Any]] = (),
        completion: Completion | None = None,
    ) -> bool:
        pid, updated_at = _payment_fields(doc)
        new_version = int(expected_version) + 1
        stored = {**doc, "version": new_version}
        for entry in ledger:
            check_ledger_entry(entry)
        ok = await self._write(
            self._update_sync,
            pid,
            int(expected_version),
            stored,
            updated_at,
            [dumps(e) for e in events],
            [new_notification(n) for n in notifications],
            list(ledger),
            None if completion is None else (completion.scope, completion.key,
                                             dumps(completion.response),
                                             float(completion.ttl_s)),
        )
        if ok:
            doc["version"] = new_version
            if completion is not None:
                completion.written = True
        return ok

    def _update_sync(
        self,
        pid: str,
        expected_version: int,
        stored: dict[str, Any],
        updated_at: float,
        events: list[str],
        notifications: Sequence[dict[str, Any]] = (),
        ledger: Sequence[dict[str, Any]] = (),
        completion: tuple[str, str, str, float] | None = None,
    ) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE payments SET merchant_id = ?, status = ?, provider = ?,"
                " provider_reference = ?, updated_at = ?, version = ?, reconcile = ?, doc = ?,"
                " created_at = ?, reference = ? WHERE id = ? AND version = ?",
                (
                    stored.get("merchant_id"),
                    stored["status"],
                    stored.get("provider"),
                    stored.get("provider_reference"),
                    updated_at,
                    stored["version"],
                    int(in_reconcile_index(stored)),
                    dumps(stored),
                    *_search_columns(stored),
                    pid,
                    expected_version,
                ),
            )
            if cur.rowcount != 1:
                return False
            conn.executemany(
                "INSERT INTO events (payment_id, event) VALUES (?, ?)", [(pid, e) for e in events]
            )
            for ntf in notifications:
                self._insert_ntf(conn, ntf)
            for entry in ledger:
                self._insert_ledger(conn, entry)
            if completion is not None:
                self._complete_in(conn, *completion)
            return True

    # ledger ----------------------------------------------------------------------
    @staticmethod
    def _insert_ledger(conn: sqlite3.Connection, entry: dict[str, Any]) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO ledger (id, payment_id, merchant_id, currency, provider,"
            " created_at, entry) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry["id"], entry.get("payment_id"), entry["merchant_id"], entry["currency"],
             entry.get("provider"), entry.get("created_at"), dumps(entry)),
        )
        if cur.rowcount != 1:
            return False
        for account, delta in ((entry["debit"], entry["amount"]),
                               (entry["credit"], -entry["amount"])):
            conn.execute(
                "INSERT INTO ledger_balances (merchant_id, currency, account, balance)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (merchant_id, currency, account)"
                " DO UPDATE SET balance = balance + excluded.balance",
                (entry["merchant_id"], entry["currency"], account, delta),
            )
        return True

    async def append_ledger(self, entries: Sequence[dict[str, Any]]) -> int:
        for entry in entries:
            check_ledger_entry(entry)
        return await self._run(self._append_ledger_sync, list(entries))

    def _append_ledger_sync(self, entries: list[dict[str, Any]]) -> int:
        with self._tx() as conn:
            return sum(self._insert_ledger(conn, e) for e in entries)

    async def ledger_entries_between(self, provider: str, start: float, end: float
                                     ) -> list[dict[str, Any]]:
        rows = await self._run(self._ledger_between_sync, provider, float(start), float(end))
        return [json.loads(r) for r in rows]

    def _ledger_between_sync(self, provider: str, start: float, end: float) -> list[str]:
        cur = self._db().execute(
            "SELECT entry FROM ledger WHERE provider = ? AND created_at >= ?"
            " AND created_at < ? ORDER BY created_at, seq", (provider, start, end))
        return [str(r["entry"]) for r in cur.fetchall()]

    async def save_settlement_lines(self, provider: str, lines: Sequence[dict[str, Any]]
                                    ) -> int:
        return await self._run(self._save_lines_sync, provider, list(lines))

    def _save_lines_sync(self, provider: str, lines: list[dict[str, Any]]) -> int:
        with self._tx() as conn:
            new = 0
            for line in lines:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO settlement_lines (provider, line_id, settled_on,"
                    " line) VALUES (?, ?, ?, ?)",
                    (provider, str(line["line_id"]), str(line["settled_on"]), dumps(line)))
                new += cur.rowcount
            return new

    async def list_settlement_lines(self, provider: str, settled_on: str
                                    ) -> list[dict[str, Any]]:
        rows = await self._run(self._list_lines_sync, provider, settled_on)
        return [json.loads(r) for r in rows]

    def _list_lines_sync(self, provider: str, settled_on: str) -> list[str]:
        cur = self._db().execute(
            "SELECT line FROM settlement_lines WHERE provider = ? AND settled_on = ?"
            " ORDER BY rowid", (provider, settled_on))
        return [str(r["line"]) for r in cur.fetchall()]

    async def list_ledger(self, payment_id: str) -> list[dict[str, Any]]:
        rows = await self._run(self._list_ledger_sync, payment_id)
        return [json.loads(r) for r in rows]

    def _list_ledger_sync(self, payment_id: str) -> list[str]:
        cur = self._db().execute(
            "SELECT entry FROM ledger WHERE payment_id = ? ORDER BY seq", (payment_id,))
        return [str(r["entry"]) for r in cur.fetchall()]

    async def ledger_balances(self, merchant_id: str, currency: str) -> dict[str, int]:
        return await self._run(self._balances_sync, merchant_id, currency)

    def _balances_sync(self, merchant_id: str, currency: str) -> dict[str, int]:
        cur = self._db().execute(
            "SELECT account, balance FROM ledger_balances WHERE merchant_id = ?"
            " AND currency = ? ORDER BY account", (merchant_id, currency))
        return {str(r["account"]): int(r["balance"]) for r in cur.fetchall()}

    async def list_events(self, payment_id: str) -> list[dict[str, Any]]:
        rows = await self._run(self._events_sync, payment_id)
        return [json.loads(r) for r in rows]

    def _events_sync(self, payment_id: str) -> list[str]:
        cur = self._db().execute(
            "SELECT event FROM events WHERE payment_id = ? ORDER BY id", (payment_id,)
        )
        return [str(r["event"]) for r in cur.fetchall()]

    async def find_by_provider_reference(self, provider: str, reference: str) -> str | None:
        return await self._run(self._find_ref_sync, provider, reference)

    def _find_ref_sync(self, provider: str, reference: str) -> str | None:
        row = (
            self._db()
            .execute(
                "SELECT id FROM payments WHERE provider = ? AND provider_reference = ?"
                " ORDER BY updated_at DESC LIMIT 1",
                (provider, reference),
            )
            .fetchone()
        )
        return None if row is None else str(row["id"])

    async def query_payments(self, query: PaymentQuery) -> list[dict[str, Any]]:
        if query.limit <= 0 or not query.statuses:
            return []
        return await self._run(self._query_sync, query)

    def _query_sync(self, query: PaymentQuery) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(query.statuses))
        sql = (
            f"SELECT doc FROM payments WHERE reconcile = 1 AND status IN ({marks})"
            " AND updated_at < ?"
        )
        params: list[Any] = [*query.statuses, float(query.updated_before)]
        if query.provider is not None:
            sql += " AND provider = ?"
            params.append(query.provider)
        sql += " ORDER BY updated_at, id"
        if not query.extra:
            sql += " LIMIT ?"
            params.append(int(query.limit))
        out: list[dict[str, Any]] = []
        cur = self._db().execute(sql, params)
        try:  # closing the cursor ends the read transaction of an unfinished SELECT
            for row in cur:
                doc = json.loads(row["doc"])
                if _matches(doc, query):
                    out.append(doc)
                    if len(out) >= query.limit:
                        break
        finally:
            cur.close()
        return out

    async def search_payments(self, query: PaymentSearch) -> tuple[list[dict[str, Any]], bool]:
        if query.limit <= 0:
            return [], False
        sql, params = _search_sql(query)
        rows = await self._run(self._search_sync, sql, params)
        docs = [json.loads(r) for r in rows]
        return docs[: query.limit], len(docs) > query.limit

    def _search_sync(self, sql: str, params: list[Any]) -> list[str]:
        # one statement: a consistent snapshot of the page (WAL readers see one commit)
        return [str(r["doc"]) for r in self._db().execute(sql, params).fetchall()]

    # idempotency ---------------------------------------------------------------
    async def claim_idempotency(
        self, scope: str, key: str, fingerprint: str, lease_s: float, ttl_s: float,
        insert: PaymentInsert | None = None,
    ) -> Claim:
        new: tuple[str, dict[str, Any], float, list[str]] | None = None
        if insert is not None:
            pid, updated_at = _payment_fields(insert.doc)
            new = (pid, {**insert.doc, "version": 1}, updated_at,
                   [dumps(e) for e in insert.events])
        claim = await self._write(
            self._claim_sync, scope, key, fingerprint, float(lease_s), float(ttl_s), new
        )
        if claim.created and insert is not None:
            insert.doc["version"] = 1
        return claim

    def _purge(self, now: float) -> None:
        """Delete every expired idempotency record and lease (they already behave as
        absent), in their own transaction (at open, before any request)."""
        self._last_purge = now
        with self._tx() as conn:
            conn.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))

    def _purge_in(self, conn: sqlite3.Connection, now: float) -> None:
        """One purge step inside the caller's transaction: at most :data:`PURGE_BATCH`
        expired idempotency records (oldest expiry first); a full batch leaves the next
        claim to go on."""
        done = conn.execute(
            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
            " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)", (now, PURGE_BATCH),
        ).rowcount
        conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        self._last_purge = 0.0 if done >= PURGE_BATCH else now

    def _claim_sync(
        self, scope: str, key: str, fingerprint: str, lease_s: float, ttl_s: float,
        new: tuple[str, dict[str, Any], float, list[str]] | None = None,
    ) -> Claim:
        now = time.time()
        with self._tx() as conn:
            if now - self._last_purge >= _PURGE_EVERY_S:
                self._purge_in(conn, now)
            claim = self._claim_in(conn, now, scope, key, fingerprint, lease_s, ttl_s)
            if new is not None and claim.outcome in (ClaimOutcome.NEW,
                                                     ClaimOutcome.TAKEN_OVER):
                claim.created = self._insert_in(conn, *new)
            elif (new is not None and claim.outcome is ClaimOutcome.COMPLETED
                  and claim.record is not None and claim.record.response is not None
                  and claim.record.response.get("payment_id") == new[0]):
                row = conn.execute("SELECT doc FROM payments WHERE id = ?",
                                   (new[0],)).fetchone()
                claim.payment = None if row is None else json.loads(row["doc"])
            return claim

    @staticmethod
    def _claim_in(
        conn: sqlite3.Connection, now: float, scope: str, key: str, fingerprint: str,
        lease_s: float, ttl_s: float,
    ) -> Claim:
        """The claim's statements, inside the caller's transaction."""
        keep_s = max(ttl_s, lease_s)
        row = conn.execute(
            "SELECT fingerprint, state, lease_until, created_at, expires_at, response"
            " FROM idempotency WHERE scope = ? AND key = ?",
            (scope, key),
        ).fetchone()
        if row is not None and row["expires_at"] <= now:
            conn.execute("DELETE FROM idempotency WHERE scope = ? AND key = ?", (scope, key))
            row = None
        if row is None:
            lease_until = now + lease_s
            conn.execute(
                "INSERT INTO idempotency (scope, key, fingerprint, state, lease_until,"
                " created_at, expires_at, response) VALUES (?, ?, ?, 'in_progress', ?, ?, ?,"
                " NULL)",
                (scope, key, fingerprint, lease_until, now, now + keep_s),
            )
            rec = IdempotencyRecord(fingerprint, "in_progress", lease_until, now)
            return Claim(ClaimOutcome.NEW, rec)
        rec = IdempotencyRecord(
            fingerprint=str(row["fingerprint"]),
            state=str(row["state"]),
            lease_until=float(row["lease_until"]),
            created_at=float(row["created_at"]),
            response=None if row["response"] is None else json.loads(row["response"]),
        )
        if rec.fingerprint != fingerprint:
            return Claim(ClaimOutcome.MISMATCH, rec)
        if rec.state == "completed":
            return Claim(ClaimOutcome.COMPLETED, rec)
        if rec.lease_until > now:
            return Claim(ClaimOutcome.IN_PROGRESS, rec, _retry_after(rec.lease_until, now))
        rec.lease_until = now + lease_s
        conn.execute(
            "UPDATE idempotency SET lease_until = ?, expires_at = MAX(expires_at, ?)"
            " WHERE scope = ? AND key = ?",
            (rec.lease_until, now + keep_s, scope, key),
        )
        return Claim(ClaimOutcome.TAKEN_OVER, rec)

    async def complete_idempotency(
        self, scope: str, key: str, response: dict[str, Any], ttl_s: float
    ) -> None:
        await self._write(self._complete_sync, scope, key, dumps(response), float(ttl_s))

    def _complete_sync(self, scope: str, key: str, response: str, ttl_s: float) -> None:
        with self._tx() as conn:
            self._complete_in(conn, scope, key, response, ttl_s)

    @staticmethod
    def _complete_in(conn: sqlite3.Connection, scope: str, key: str, response: str,
                     ttl_s: float) -> None:
        now = time.time()
        conn.execute(
            "UPDATE idempotency SET state = 'completed', response = ?, expires_at = ?"
            " WHERE scope = ? AND key = ? AND expires_at > ?",
            (response, now + ttl_s, scope, key, now),
        )

    async def release_idempotency(self, scope: str, key: str) -> None:
        await self._write(self._release_idem_sync, scope, key)

    def _release_idem_sync(self, scope: str, key: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM idempotency WHERE scope = ? AND key = ?", (scope, key))

    # leases --------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return await self._run(self._acquire_sync, name, owner, float(ttl_s))

    def _acquire_sync(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT owner, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row["owner"] != owner and row["expires_at"] > now:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO leases (name, owner, expires_at) VALUES (?, ?, ?)",
                (name, owner, now + ttl_s),
            )
            return True

    async def release_lease(self, name: str, owner: str) -> None:
        await self._run(self._release_lease_sync, name, owner)

    def _release_lease_sync(self, name: str, owner: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # provider webhooks -----------------------------------------------------------
    async def webhook_event_seen(self, provider: str, event_id: str) -> bool:
        return await self._run(self._webhook_seen_sync, provider, event_id)

    def _webhook_seen_sync(self, provider: str, event_id: str) -> bool:
        row = self._db().execute(
            "SELECT 1 FROM webhook_events WHERE provider = ? AND event_id = ? AND expires_at > ?",
            (provider, event_id, time.time()),
        ).fetchone()
        return row is not None

    async def record_webhook_event(self, provider: str, event_id: str, ttl_s: float) -> bool:
        return await self._run(self._record_webhook_sync, provider, event_id, float(ttl_s))

    def _record_webhook_sync(self, provider: str, event_id: str, ttl_s: float) -> bool:
        now = time.time()
        with self._tx() as conn:
            if now - getattr(self, "_last_webhook_purge", 0.0) >= _PURGE_EVERY_S:
                self._last_webhook_purge = now
                conn.execute("DELETE FROM webhook_events WHERE expires_at <= ?", (now,))
            row = conn.execute(
                "SELECT expires_at FROM webhook_events WHERE provider = ? AND event_id = ?",
                (provider, event_id),
            ).fetchone()
            if row is not None and row["expires_at"] > now:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO webhook_events (provider, event_id, expires_at)"
                " VALUES (?, ?, ?)",
                (provider, event_id, now + max(ttl_s, 0.001)),
            )
            return True

    async def forget_webhook_event(self, provider: str, event_id: str) -> None:
        await self._run(self._forget_webhook_sync, provider, event_id)

    def _forget_webhook_sync(self, provider: str, event_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM webhook_events WHERE provider = ? AND event_id = ?",
                (provider, event_id),
            )

    async def save_unmatched_webhook(self, provider: str, event: dict[str, Any]) -> None:
        await self._run(self._save_unmatched_sync, provider, dumps(event))

    def _save_unmatched_sync(self, provider: str, event: str) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO unmatched_webhooks (provider, received_at, event) VALUES (?, ?, ?)",
                (provider, time.time(), event),
            )
            last = int(cur.lastrowid or 0)
            conn.execute(
                "DELETE FROM unmatched_webhooks WHERE id <= ?", (last - UNMATCHED_WEBHOOKS_MAX,)
            )

    async def list_unmatched_webhooks(self, limit: int = 100) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        rows = await self._run(self._list_unmatched_sync, int(limit))
        out = []
        for provider, received_at, raw in rows:
            out.append({**json.loads(raw), "provider": provider, "received_at": received_at})
        return out

    def _list_unmatched_sync(self, limit: int) -> list[tuple[str, float, str]]:
        cur = self._db().execute(
            "SELECT provider, received_at, event FROM unmatched_webhooks ORDER BY id LIMIT ?",
            (limit,),
        )
        return [(str(r["provider"]), float(r["received_at"]), str(r["event"])) for r in cur]

    # merchant notification outbox ------------------------------------------------
    # ``doc`` holds the whole event (attempts included); state, schedule and lease are
    # also columns so the due index can find and lease events in one transaction.

    async def enqueue_notification(self, event: dict[str, Any]) -> bool:
        doc = new_notification(event)
        return await self._run(self._enqueue_ntf_sync, doc)

    def _enqueue_ntf_sync(self, doc: dict[str, Any]) -> bool:
        with self._tx() as conn:
            return self._insert_ntf(conn, doc)

    @staticmethod
    def _insert_ntf(conn: sqlite3.Connection, doc: dict[str, Any]) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO notifications (id, payment_id, merchant_id, type, state,"
            " next_attempt_at, lease_owner, lease_until, doc)"
            " VALUES (?, ?, ?, ?, 'pending', ?, NULL, NULL, ?)",
            (doc["id"], doc.get("payment_id"), doc.get("merchant_id"),
             doc.get("type") if isinstance(doc.get("type"), str) else None,
             doc["next_attempt_at"], dumps(doc)),
        )
        return cur.rowcount == 1

    async def claim_due_notifications(
        self, now: float, limit: int, lease_s: float, owner: str
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        return await self._run(
            self._claim_ntf_sync, float(now), int(limit), float(lease_s), owner
        )

    def _claim_ntf_sync(
        self, now: float, limit: int, lease_s: float, owner: str
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._tx() as conn:
            # Only a payment's earliest pending event (SPEC 3.2: in sequence order; one
            # in flight per payment): a later one waits until it is delivered or failed.
            rows = conn.execute(
                "SELECT id, doc FROM notifications AS n WHERE state = 'pending'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
                " AND NOT EXISTS (SELECT 1 FROM notifications AS e"
                "   WHERE e.payment_id = n.payment_id AND e.seq < n.seq"
                "   AND e.state = 'pending')"
                " ORDER BY next_attempt_at, seq LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                doc = json.loads(row["doc"])
                doc.update(lease_owner=owner, lease_until=now + lease_s)
                conn.execute(
                    "UPDATE notifications SET lease_owner = ?, lease_until = ?, doc = ?"
                    " WHERE id = ?",
                    (owner, doc["lease_until"], dumps(doc), row["id"]),
                )
                out.append(doc)
        return out

    async def record_notification_attempt(
        self, event_id: str, attempt: dict[str, Any], delivered: bool,
        next_attempt_at: float | None, owner: str | None = None,
    ) -> dict[str, Any] | None:
        return await self._write(
            self._record_ntf_sync, event_id, dict(attempt), bool(delivered), next_attempt_at,
            owner,
        )

    def _record_ntf_sync(
        self, event_id: str, attempt: dict[str, Any], delivered: bool,
        next_attempt_at: float | None, owner: str | None,
    ) -> dict[str, Any] | None:
        return self._edit_ntf_sync(event_id, lambda doc: bool(settle_notification(
            doc, attempt, delivered, next_attempt_at, owner)))

    def _edit_ntf_sync(self, event_id: str, change: Callable[[dict[str, Any]], bool]
                       ) -> dict[str, Any] | None:
        """Read one event, let ``change`` edit it (True: write it back), in one transaction;
        the stored event, or None if there is none."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT doc FROM notifications WHERE id = ?", (event_id,)
            ).fetchone()
            if row is None:
                return None
            doc: dict[str, Any] = json.loads(row["doc"])
            if change(doc):
                conn.execute(
                    "UPDATE notifications SET state = ?, next_attempt_at = ?, lease_owner = ?,"
                    " lease_until = ?, doc = ? WHERE id = ?",
                    (doc["state"], doc["next_attempt_at"], doc["lease_owner"],
                     doc["lease_until"], dumps(doc), event_id),
                )
            return doc

    async def search_notifications(self, query: EventSearch
                                   ) -> tuple[list[dict[str, Any]], bool]:
        rows = await self._run(self._search_ntf_sync, query)
        return [json.loads(r) for r in rows[:query.limit]], len(rows) > query.limit

    def _search_ntf_sync(self, q: EventSearch) -> list[str]:
        sql = "SELECT doc FROM notifications WHERE merchant_id = ?"
        args: list[Any] = [q.merchant_id]
        if q.state is not None:
            sql += " AND state = ?"
            args.append(q.state)
        if q.type is not None:
            sql += " AND type = ?"
            args.append(q.type)
        if q.starting_after is not None:
            sql += (" AND seq < COALESCE((SELECT seq FROM notifications WHERE id = ?"
                    " AND merchant_id = ?), -1)")
            args += [q.starting_after, q.merchant_id]
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(int(q.limit) + 1)
        return [str(r["doc"]) for r in self._db().execute(sql, args).fetchall()]

    async def requeue_notification(self, event_id: str, now: float) -> dict[str, Any] | None:
        return await self._run(self._requeue_ntf_sync, event_id, float(now))

    def _requeue_ntf_sync(self, event_id: str, now: float) -> dict[str, Any] | None:
        return self._edit_ntf_sync(event_id, lambda doc: requeue(doc, now))

    async def get_notification(self, event_id: str) -> dict[str, Any] | None:
        raw = await self._run(self._get_ntf_sync, event_id)
        return None if raw is None else json.loads(raw)

    def _get_ntf_sync(self, event_id: str) -> str | None:
        row = self._db().execute(
            "SELECT doc FROM notifications WHERE id = ?", (event_id,)
        ).fetchone()
        return None if row is None else str(row["doc"])

    async def list_notifications(self, payment_id: str) -> list[dict[str, Any]]:
        rows = await self._run(self._list_ntf_sync, payment_id)
        return [json.loads(r) for r in rows]

    def _list_ntf_sync(self, payment_id: str) -> list[str]:
        cur = self._db().execute(
            "SELECT doc FROM notifications WHERE payment_id = ? ORDER BY seq", (payment_id,)
        )
        return [str(r["doc"]) for r in cur.fetchall()]


__all__ = ["SQLiteStore"]
