"""SQLite group commit (gateway.store.sqlite, SQLiteStore._write): the hot path's writes
that arrive while the store thread is busy are committed together in one transaction (one
COMMIT, one fsync), each in its own savepoint; a write that fails is rolled back alone; a
group whose transaction SQLite rolls back fails as a whole and keeps nothing; no caller is
answered before the commit; a cancelled caller's write still stands.

The store thread is held busy by a job waiting on a threading.Event, so which writes share
a group is decided by the test, not by timing; every wait has a deadline."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store import ClaimOutcome, SQLiteStore, StoreError

HOLD_S = 10.0  # the longest the store thread is held (a deadline, not a sleep)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "g.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class Held:
    """Holds the store thread in a job until released."""

    def __init__(self, store: SQLiteStore) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

        def hold() -> None:
            self.started.set()
            assert self.release.wait(HOLD_S), "never released"

        self.task = asyncio.ensure_future(store._run(hold))

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, HOLD_S)

    async def let_go(self) -> None:
        self.release.set()
        await self.task


async def traced(store: SQLiteStore) -> list[str]:
    statements: list[str] = []
    await store._run(lambda: store._db().set_trace_callback(statements.append))
    return statements


def doc(pid: str) -> dict[str, Any]:
    now = time.time()
    return {"id": pid, "object": "payment", "merchant_id": "acme", "status": "pending",
            "amount": 100, "currency": "EUR", "created_at": now, "updated_at": now,
            "reference": f"ref-{pid}"}


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read with a connection of its own: only what is committed."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_writes_waiting_for_the_thread_share_one_commit(store: SQLiteStore,
                                                              tmp_path: Path) -> None:
    statements = await traced(store)
    held = Held(store)
    await held.wait_started()
    n = 20
    claims = [asyncio.ensure_future(store.claim_idempotency("acme", f"k{i}", "fp", 30, 3600))
              for i in range(n)]
    inserts = [asyncio.ensure_future(store.insert_payment(doc(f"pay_{i}"), []))
               for i in range(n)]
    await asyncio.sleep(0)  # every write is queued behind the held thread
    assert not any(t.done() for t in claims + inserts)
    statements.clear()
    await held.let_go()
    got = await asyncio.gather(*claims)
    await asyncio.gather(*inserts)
    assert all(c.outcome is ClaimOutcome.NEW for c in got)
    assert statements.count("COMMIT") == 1, statements  # one group, one commit
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert sum(s == "SAVEPOINT write" for s in statements) == 2 * n
    assert len(rows(tmp_path / "g.db", "SELECT id FROM payments")) == n
    assert len(rows(tmp_path / "g.db", "SELECT key FROM idempotency")) == n


async def test_a_write_at_an_idle_store_commits_alone(store: SQLiteStore) -> None:
    statements = await traced(store)
    await store.insert_payment(doc("pay_alone"), [])
    assert statements.count("COMMIT") == 1
    assert await store.get_payment("pay_alone") is not None


async def test_a_failing_write_is_rolled_back_alone(store: SQLiteStore,
                                                    tmp_path: Path) -> None:
    def bad() -> None:
        with store._tx() as conn:
            conn.execute("INSERT INTO health (k, at) VALUES (7, 1)")
            raise ValueError("this write fails after writing")

    held = Held(store)
    await held.wait_started()
    before = asyncio.ensure_future(store.insert_payment(doc("pay_before"), []))
    failing = asyncio.ensure_future(store._write(bad))
    after = asyncio.ensure_future(store.insert_payment(doc("pay_after"), []))
    await asyncio.sleep(0)
    await held.let_go()
    await before
    with pytest.raises(ValueError, match="fails after writing"):
        await failing
    await after
    ids = {r[0] for r in rows(tmp_path / "g.db", "SELECT id FROM payments")}
    assert ids == {"pay_before", "pay_after"}
    assert rows(tmp_path / "g.db", "SELECT k FROM health WHERE k = 7") == []


async def test_a_group_rolled_back_by_sqlite_fails_whole_and_keeps_nothing(
        store: SQLiteStore, tmp_path: Path) -> None:
    """RAISE(ROLLBACK) in a trigger makes SQLite roll back the whole transaction, as an
    I/O error or a full disk can: every write of the group must fail, none be kept, and
    none answered as done; the store goes on working."""
    def arm() -> None:
        store._db().execute(
            "CREATE TEMP TRIGGER boom BEFORE INSERT ON health WHEN NEW.k = 99"
            " BEGIN SELECT RAISE(ROLLBACK, 'rolled back by sqlite'); END")

    def poison() -> None:
        with store._tx() as conn:
            conn.execute("INSERT INTO health (k, at) VALUES (99, 1)")

    await store._run(arm)
    held = Held(store)
    await held.wait_started()
    first = asyncio.ensure_future(store.insert_payment(doc("pay_first"), []))
    claim = asyncio.ensure_future(store.claim_idempotency("acme", "k-lost", "fp", 30, 3600))
    bad = asyncio.ensure_future(store._write(poison))
    last = asyncio.ensure_future(store.insert_payment(doc("pay_last"), []))
    await asyncio.sleep(0)
    await held.let_go()
    for task in (first, claim, bad, last):
        with pytest.raises(StoreError):
            await task
    assert rows(tmp_path / "g.db", "SELECT id FROM payments") == []
    assert rows(tmp_path / "g.db", "SELECT key FROM idempotency") == []
    # the next write works (a new group, a new transaction)
    await store.insert_payment(doc("pay_next"), [])
    assert [r[0] for r in rows(tmp_path / "g.db", "SELECT id FROM payments")] == ["pay_next"]


async def test_no_caller_is_answered_before_its_commit(store: SQLiteStore,
                                                       tmp_path: Path) -> None:
    """Each write's answer comes after the group's COMMIT: by the time a caller has it, a
    connection of its own sees the row."""
    seen: list[bool] = []

    async def write(i: int) -> None:
        await store.insert_payment(doc(f"pay_c{i}"), [])
        seen.append(bool(rows(tmp_path / "g.db",
                              f"SELECT id FROM payments WHERE id = 'pay_c{i}'")))

    held = Held(store)
    await held.wait_started()
    writers = [asyncio.ensure_future(write(i)) for i in range(10)]
    await asyncio.sleep(0)
    await held.let_go()
    await asyncio.gather(*writers)
    assert seen == [True] * 10


async def test_a_cancelled_callers_write_still_stands(store: SQLiteStore) -> None:
    held = Held(store)
    await held.wait_started()
    task = asyncio.ensure_future(store.insert_payment(doc("pay_cancelled"), []))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await held.let_go()
    # the group ran anyway: the payment is there, as with any write already handed over
    deadline = time.monotonic() + HOLD_S
    while await store.get_payment("pay_cancelled") is None:
        assert time.monotonic() < deadline, "the cancelled caller's write never landed"
        await asyncio.sleep(0.01)


async def test_writes_racing_a_close_end_committed_or_refused_and_a_reopen_works(
        tmp_path: Path) -> None:
    """Writes in flight while the store closes: each is either committed or answered
    StoreError, none is left waiting; after a reopen the store takes writes again."""
    s = SQLiteStore(tmp_path / "r.db")
    await s.open()
    writes = [asyncio.ensure_future(s.insert_payment(doc(f"pay_r{i}"), [])) for i in range(30)]
    closing = asyncio.ensure_future(s.close())
    late = [asyncio.ensure_future(s.insert_payment(doc(f"pay_l{i}"), [])) for i in range(5)]
    done = await asyncio.wait_for(asyncio.gather(*writes, *late, return_exceptions=True),
                                  HOLD_S)
    await asyncio.wait_for(closing, HOLD_S)
    assert all(r is None or isinstance(r, StoreError) for r in done), done
    committed = {r[0] for r in rows(tmp_path / "r.db", "SELECT id FROM payments")}
    answered = {f"pay_r{i}" for i in range(30) if done[i] is None} | {
        f"pay_l{i}" for i in range(5) if done[30 + i] is None}
    assert answered <= committed  # an answer of success is never a lie
    await s.open()
    try:
        await s.insert_payment(doc("pay_after_reopen"), [])
        assert await s.get_payment("pay_after_reopen") is not None
    finally:
        await s.close()
