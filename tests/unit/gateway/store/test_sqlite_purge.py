"""SQLite: expired idempotency records are purged a bounded batch at a time inside a
claim's own transaction (no extra transaction, no long stall on a backlog), until the
backlog is gone; then again once per purge period."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.store import ClaimOutcome, SQLiteStore
from gateway.store.sqlite import PURGE_BATCH


async def test_purge_rides_in_claims_a_batch_at_a_time(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    await store.open()
    try:
        expired = time.time() - 10
        backlog = 2 * PURGE_BATCH + 50

        def fill() -> None:
            with store._tx() as conn:
                conn.executemany(
                    "INSERT INTO idempotency (scope, key, fingerprint, state, lease_until,"
                    " created_at, expires_at, response) VALUES"
                    " ('old', ?, 'fp', 'completed', 0, 0, ?, NULL)",
                    [(f"k{i}", expired) for i in range(backlog)])

        def left() -> int:
            return int(store._db().execute(
                "SELECT COUNT(*) FROM idempotency WHERE scope = 'old'").fetchone()[0])

        statements: list[str] = []
        await store._run(fill)
        await store._run(lambda: store._db().set_trace_callback(statements.append))
        store._last_purge = 0.0  # a purge is due
        seen = []
        for i in range(4):
            statements.clear()
            claim = await store.claim_idempotency("acme", f"new{i}", "fp", 30, 3600)
            assert claim.outcome is ClaimOutcome.NEW
            assert sum(s.startswith("BEGIN") for s in statements) == 1  # one transaction
            seen.append(await store._run(left))
        assert seen == [backlog - PURGE_BATCH, backlog - 2 * PURGE_BATCH, 0, 0]
        assert not any("DELETE FROM idempotency WHERE rowid" in s for s in statements)
    finally:
        await store.close()
