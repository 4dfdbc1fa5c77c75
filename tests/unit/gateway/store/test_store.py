"""One contract suite for the store, run against SQLite and Redis (SPEC section 10).

Every test taking ``store`` / ``store_url`` runs once per backend. Timing tests use
small leases / ttls and poll the condition with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from gateway.store import (
    AlreadyExists,
    Claim,
    ClaimOutcome,
    PaymentQuery,
    RedisStore,
    SQLiteStore,
    Store,
    StoreError,
    make_store,
    sqlite_path,
)

T = TypeVar("T")

SCOPE = "acme"
DEADLINE_S = 5.0


def payment(pid: str, status: str = "pending", updated_at: float = 100.0, **extra: Any) -> dict:
    doc: dict[str, Any] = {
        "id": pid,
        "merchant_id": "acme",
        "status": status,
        "provider": "stripe_main",
        "provider_reference": None,
        "updated_at": updated_at,
        "amount": 1000,
        "currency": "USD",
        "metadata": {"order": "o-1"},
    }
    doc.update(extra)
    return doc


async def wait_until(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float = DEADLINE_S
) -> T:
    """Call ``probe`` until ``done(result)``; fail at the deadline with the last result."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {within}s; last result: {result!r}")
        await asyncio.sleep(0.02)


async def second_store(url: str) -> Store:
    """Another store on the same backing data (another connection / 'process')."""
    s = make_store(url)
    await s.open()
    return s


# ---------------------------------------------------------------------------
# lifecycle / URLs
# ---------------------------------------------------------------------------


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


def test_make_store_urls(tmp_path: Path) -> None:
    s = make_store(f"sqlite:///{tmp_path}/a/b.db")
    assert isinstance(s, SQLiteStore)
    assert s.path == tmp_path / "a" / "b.db"
    assert sqlite_path("sqlite:///data/gw.db") == Path("data/gw.db")
    assert sqlite_path("sqlite:////var/lib/gw.db") == Path("/var/lib/gw.db")
    assert isinstance(make_store("redis://127.0.0.1:6379/0"), RedisStore)
    for bad in ("postgres://x/y", "memory://", "sqlite://relative.db", "sqlite:///", "gw.db"):
        with pytest.raises(ValueError, match=r"sqlite|store URL"):
            make_store(bad)


# ---------------------------------------------------------------------------
# payments
# ---------------------------------------------------------------------------


async def test_insert_then_get(store: Store) -> None:
    doc = payment("pay_1")
    await store.insert_payment(doc, [{"type": "created"}])
    assert doc["version"] == 1
    got = await store.get_payment("pay_1")
    assert got == {**payment("pay_1"), "version": 1}
    assert await store.get_payment("pay_missing") is None


async def test_insert_existing_raises_and_changes_nothing(store: Store) -> None:
    await store.insert_payment(payment("pay_1", amount=1000), [{"type": "created"}])
    with pytest.raises(AlreadyExists):
        await store.insert_payment(payment("pay_1", amount=5), [{"type": "dup"}])
    got = await store.get_payment("pay_1")
    assert got is not None
    assert got["amount"] == 1000
    assert got["version"] == 1
    assert await store.list_events("pay_1") == [{"type": "created"}]


async def test_get_returns_fresh_copies(store: Store) -> None:
    doc = payment("pay_1")
    await store.insert_payment(doc, [])
    doc["amount"] = 1  # mutating the inserted dict does not reach the store
    doc["metadata"]["order"] = "changed"
    first = await store.get_payment("pay_1")
    assert first is not None
    first["status"] = "captured"
    first["metadata"]["order"] = "mutated"
    second = await store.get_payment("pay_1")
    assert second is not None
    assert second["status"] == "pending"
    assert second["amount"] == 1000
    assert second["metadata"] == {"order": "o-1"}
    assert second is not first


async def test_update_cas_success(store: Store) -> None:
    await store.insert_payment(payment("pay_1"), [])
    doc = await store.get_payment("pay_1")
    assert doc is not None
    doc["status"] = "authorized"
    doc["updated_at"] = 200.0
    assert await store.update_payment(doc, 1, [{"type": "authorized"}]) is True
    assert doc["version"] == 2
    stored = await store.get_payment("pay_1")
    assert stored == doc
    assert stored is not None and stored["version"] == 2
    doc["status"] = "captured"
    assert await store.update_payment(doc, 2, []) is True
    stored = await store.get_payment("pay_1")
    assert stored is not None
    assert (stored["status"], stored["version"]) == ("captured", 3)


async def test_update_version_mismatch_writes_nothing(store: Store) -> None:
    await store.insert_payment(payment("pay_1"), [{"type": "created"}])
    doc = await store.get_payment("pay_1")
    assert doc is not None
    doc["status"] = "authorized"
    assert await store.update_payment(doc, 1, [{"type": "first"}]) is True
    stale = payment("pay_1", status="declined")
    stale["version"] = 1
    assert await store.update_payment(stale, 1, [{"type": "stale"}]) is False
    assert stale["version"] == 1  # caller's doc untouched on failure
    assert await store.update_payment(payment("pay_1", status="failed"), 7, []) is False
    stored = await store.get_payment("pay_1")
    assert stored is not None
    assert (stored["status"], stored["version"]) == ("authorized", 2)
    assert await store.list_events("pay_1") == [{"type": "created"}, {"type": "first"}]


async def test_update_missing_payment_returns_false(store: Store) -> None:
    assert await store.update_payment(payment("pay_ghost"), 1, [{"type": "x"}]) is False
    assert await store.update_payment(payment("pay_ghost"), 0, [{"type": "x"}]) is False
    assert await store.get_payment("pay_ghost") is None
    assert await store.list_events("pay_ghost") == []


async def test_events_in_append_order(store: Store) -> None:
    await store.insert_payment(payment("pay_1"), [{"n": 1}, {"n": 2}])
    await store.insert_payment(payment("pay_2"), [{"other": True}])
    version = 1
    for n in range(3, 8):
        doc = payment("pay_1", updated_at=100.0 + n)
        assert await store.update_payment(doc, version, [{"n": n}, {"n": n, "detail": "x"}])
        version = doc["version"]
    events = await store.list_events("pay_1")
    assert events[:2] == [{"n": 1}, {"n": 2}]
    assert [e["n"] for e in events] == [1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert await store.list_events("pay_2") == [{"other": True}]
    assert await store.list_events("pay_unknown") == []


async def test_provider_reference_index(store: Store) -> None:
    await store.insert_payment(payment("pay_1", provider_reference="pi_1"), [])
    await store.insert_payment(payment("pay_2", provider="adyen_eu", provider_reference="pi_1"), [])
    await store.insert_payment(payment("pay_3"), [])  # no reference yet
    assert await store.find_by_provider_reference("stripe_main", "pi_1") == "pay_1"
    assert await store.find_by_provider_reference("adyen_eu", "pi_1") == "pay_2"
    assert await store.find_by_provider_reference("stripe_main", "pi_nope") is None
    assert await store.find_by_provider_reference("braintree_us", "pi_1") is None

    # a reference learnt on update is found; a changed reference no longer resolves
    assert await store.update_payment(payment("pay_3", provider_reference="pi_3"), 1, [])
    assert await store.find_by_provider_reference("stripe_main", "pi_3") == "pay_3"
    assert await store.update_payment(payment("pay_1", provider_reference="pi_1b"), 1, [])
    assert await store.find_by_provider_reference("stripe_main", "pi_1b") == "pay_1"
    assert await store.find_by_provider_reference("stripe_main", "pi_1") is None
    # a failed CAS does not make its reference resolve
    assert not await store.update_payment(payment("pay_3", provider_reference="pi_x"), 1, [])
    assert await store.find_by_provider_reference("stripe_main", "pi_x") is None


async def _ids(store: Store, **kw: Any) -> list[str]:
    kw.setdefault("updated_before", 500.0)
    return [d["id"] for d in await store.query_payments(PaymentQuery(**kw))]


async def test_query_payments(store: Store) -> None:
    await store.insert_payment(payment("p_new", "pending", 1000.0), [])  # too recent
    await store.insert_payment(payment("p3", "pending", 300.0), [])
    await store.insert_payment(payment("p1", "pending", 100.0), [])
    await store.insert_payment(payment("p2", "unknown", 200.0, provider="adyen_eu"), [])
    await store.insert_payment(payment("p_auth", "authorized", 50.0), [])
    await store.insert_payment(payment("p_cap", "captured", 60.0), [])
    await store.insert_payment(payment("p_flag", "captured", 70.0, needs_reconcile=True), [])
    await store.insert_payment(payment("p_cp", "capture_pending", 80.0, merchant_id="globex"), [])

    assert await _ids(store, statuses=["pending", "unknown"]) == ["p1", "p2", "p3"]
    assert await _ids(store, statuses=["pending", "unknown"], limit=2) == ["p1", "p2"]
    assert await _ids(store, statuses=["pending"]) == ["p1", "p3"]
    assert await _ids(store, statuses=["pending"], updated_before=300.0) == ["p1"]
    assert await _ids(store, statuses=["pending"], updated_before=2000.0) == ["p1", "p3", "p_new"]
    assert await _ids(store, statuses=["unknown", "pending"], provider="adyen_eu") == ["p2"]
    assert await _ids(
        store, statuses=["capture_pending", "pending"], extra={"merchant_id": "globex"}
    ) == ["p_cp"]
    # captured is only visible when flagged; authorized is outside the index
    assert await _ids(store, statuses=["captured"]) == ["p_flag"]
    assert await _ids(store, statuses=["authorized"]) == []
    assert await _ids(store, statuses=[]) == []
    assert await _ids(store, statuses=["pending"], limit=0) == []

    docs = await store.query_payments(PaymentQuery(statuses=["unknown"], updated_before=500.0))
    assert docs == [{**payment("p2", "unknown", 200.0, provider="adyen_eu"), "version": 1}]

    # a status change takes a payment out; a newer updated_at moves it past the cutoff
    assert await store.update_payment(payment("p1", "authorized", 400.0), 1, [])
    assert await _ids(store, statuses=["pending", "unknown"]) == ["p2", "p3"]
    assert await store.update_payment(payment("p3", "pending", 600.0), 1, [])
    assert await _ids(store, statuses=["pending", "unknown"]) == ["p2"]
    # clearing the flag removes it; setting it on an authorized payment adds it
    assert await store.update_payment(payment("p_flag", "captured", 90.0), 1, [])
    assert await store.update_payment(
        payment("p_auth", "authorized", 55.0, needs_reconcile=True), 1, []
    )
    assert await _ids(store, statuses=["captured", "authorized"]) == ["p_auth"]
    # back to an indexed status: visible again, at its new time
    assert await store.update_payment(payment("p1", "unknown", 250.0), 2, [])
    assert await _ids(store, statuses=["pending", "unknown"]) == ["p2", "p1"]
    # a failed CAS does not make a payment visible
    assert not await store.update_payment(payment("p_cap", "unknown", 65.0), 9, [])
    assert await _ids(store, statuses=["unknown"]) == ["p2", "p1"]


async def test_query_payments_limit_with_many_candidates(store: Store) -> None:
    # many index members that do not match the statuses asked for come first
    for i in range(150):
        await store.insert_payment(payment(f"u{i:03d}", "unknown", 10.0 + i), [])
    for i in range(5):
        await store.insert_payment(payment(f"p{i}", "pending", 200.0 + i), [])
    assert await _ids(store, statuses=["pending"], limit=3) == ["p0", "p1", "p2"]
    got = await _ids(store, statuses=["unknown"], limit=120)
    assert got == [f"u{i:03d}" for i in range(120)]


# ---------------------------------------------------------------------------
# idempotency
# ---------------------------------------------------------------------------


async def test_claim_new_then_in_progress(store: Store) -> None:
    before = time.time()
    first = await store.claim_idempotency(SCOPE, "k1", "fp-a", 30.0, 3600.0)
    assert first.outcome is ClaimOutcome.NEW
    assert first.record is not None
    assert first.record.state == "in_progress"
    assert first.record.fingerprint == "fp-a"
    assert abs(first.record.created_at - before) < 2.0
    assert abs(first.record.lease_until - (before + 30.0)) < 2.0

    again = await store.claim_idempotency(SCOPE, "k1", "fp-a", 30.0, 3600.0)
    assert again.outcome is ClaimOutcome.IN_PROGRESS
    assert 28.0 <= again.retry_after <= 30.0
    assert again.record is not None
    assert again.record.created_at == pytest.approx(first.record.created_at, abs=0.002)

    # another scope, same key: independent
    other = await store.claim_idempotency("globex", "k1", "fp-a", 30.0, 3600.0)
    assert other.outcome is ClaimOutcome.NEW


async def test_claim_in_progress_retry_after_at_least_one(store: Store) -> None:
    assert (await store.claim_idempotency(SCOPE, "k", "fp", 0.5, 60)).outcome is ClaimOutcome.NEW
    claim = await store.claim_idempotency(SCOPE, "k", "fp", 0.5, 60)
    assert claim.outcome is ClaimOutcome.IN_PROGRESS
    assert claim.retry_after == 1.0


async def test_claim_mismatch(store: Store) -> None:
    await store.claim_idempotency(SCOPE, "k1", "fp-a", 30.0, 3600.0)
    claim = await store.claim_idempotency(SCOPE, "k1", "fp-b", 30.0, 3600.0)
    assert claim.outcome is ClaimOutcome.MISMATCH
    assert claim.record is not None and claim.record.fingerprint == "fp-a"
    # a mismatch changes nothing: the owner still holds it
    assert (await store.claim_idempotency(SCOPE, "k1", "fp-a", 30, 3600)).outcome is (
        ClaimOutcome.IN_PROGRESS
    )


async def test_claim_completed_replays_response(store: Store) -> None:
    await store.claim_idempotency(SCOPE, "k1", "fp-a", 30.0, 3600.0)
    response = {"status": 201, "body": {"id": "pay_1", "status": "authorized"}}
    await store.complete_idempotency(SCOPE, "k1", response, 3600.0)
    claim = await store.claim_idempotency(SCOPE, "k1", "fp-a", 30.0, 3600.0)
    assert claim.outcome is ClaimOutcome.COMPLETED
    assert claim.record is not None
    assert claim.record.state == "completed"
    assert claim.record.response == response
    # a different body with the same key is still a mismatch after completion
    mismatch = await store.claim_idempotency(SCOPE, "k1", "fp-other", 30.0, 3600.0)
    assert mismatch.outcome is ClaimOutcome.MISMATCH


async def test_release_forgets_claim(store: Store) -> None:
    await store.claim_idempotency(SCOPE, "k1", "fp-a", 30.0, 3600.0)
    await store.release_idempotency(SCOPE, "k1")
    claim = await store.claim_idempotency(SCOPE, "k1", "fp-b", 30.0, 3600.0)
    assert claim.outcome is ClaimOutcome.NEW
    assert claim.record is not None and claim.record.fingerprint == "fp-b"
    await store.release_idempotency(SCOPE, "never-claimed")  # no error


async def test_complete_without_claim_is_noop(store: Store) -> None:
    await store.complete_idempotency(SCOPE, "ghost", {"status": 200}, 3600.0)
    claim = await store.claim_idempotency(SCOPE, "ghost", "fp", 30.0, 3600.0)
    assert claim.outcome is ClaimOutcome.NEW


async def test_claim_lease_lapse_is_taken_over(store: Store) -> None:
    first = await store.claim_idempotency(SCOPE, "k1", "fp-a", 0.2, 3600.0)
    assert first.outcome is ClaimOutcome.NEW
    assert first.record is not None
    early = await store.claim_idempotency(SCOPE, "k1", "fp-a", 5.0, 3600.0)
    assert early.outcome is ClaimOutcome.IN_PROGRESS

    took = await wait_until(
        lambda: store.claim_idempotency(SCOPE, "k1", "fp-a", 5.0, 3600.0),
        lambda c: c.outcome is not ClaimOutcome.IN_PROGRESS,
    )
    assert took.outcome is ClaimOutcome.TAKEN_OVER
    assert took.record is not None
    assert took.record.state == "in_progress"
    assert took.record.created_at == pytest.approx(first.record.created_at, abs=0.002)
    assert took.record.lease_until > first.record.lease_until + 4.0
    # the new holder's lease is live
    after = await store.claim_idempotency(SCOPE, "k1", "fp-a", 5.0, 3600.0)
    assert after.outcome is ClaimOutcome.IN_PROGRESS
    assert after.retry_after >= 4.0
    # a mismatching body never takes over
    assert (await store.claim_idempotency(SCOPE, "k1", "fp-b", 5, 3600)).outcome is (
        ClaimOutcome.MISMATCH
    )


async def test_claim_ttl_expiry_makes_record_absent(store: Store) -> None:
    first = await store.claim_idempotency(SCOPE, "k1", "fp-a", 0.1, 0.4)
    assert first.outcome is ClaimOutcome.NEW
    assert first.record is not None
    await store.complete_idempotency(SCOPE, "k1", {"status": 200}, 0.4)
    assert (await store.claim_idempotency(SCOPE, "k1", "fp-a", 5, 0.4)).outcome is (
        ClaimOutcome.COMPLETED
    )
    fresh = await wait_until(
        lambda: store.claim_idempotency(SCOPE, "k1", "fp-b", 5.0, 60.0),
        lambda c: c.outcome is not ClaimOutcome.MISMATCH,
    )
    assert fresh.outcome is ClaimOutcome.NEW
    assert fresh.record is not None
    assert fresh.record.fingerprint == "fp-b"
    assert fresh.record.created_at > first.record.created_at


async def test_concurrent_claims_exactly_one_new(store: Store, store_url: str) -> None:
    other = await second_store(store_url)
    try:
        stores = [store, other]
        claims: list[Claim] = await asyncio.gather(
            *(stores[i % 2].claim_idempotency(SCOPE, "race", "fp", 30.0, 3600.0) for i in range(50))
        )
    finally:
        await other.close()
    outcomes = [c.outcome for c in claims]
    assert outcomes.count(ClaimOutcome.NEW) == 1
    assert outcomes.count(ClaimOutcome.IN_PROGRESS) == 49
    created = {round(c.record.created_at, 3) for c in claims if c.record is not None}
    assert len(created) == 1


# ---------------------------------------------------------------------------
# amount reservation: read, check, CAS write, retry on conflict
# ---------------------------------------------------------------------------


async def test_concurrent_reservations_never_overdraw(store: Store, store_url: str) -> None:
    await store.insert_payment(payment("pay_bal", "authorized", balance=10), [{"type": "created"}])
    other = await second_store(store_url)
    seen: list[int] = []
    conflicts = 0

    async def withdraw(s: Store, worker: int) -> bool:
        nonlocal conflicts
        while True:
            doc = await s.get_payment("pay_bal")
            assert doc is not None
            seen.append(doc["balance"])
            if doc["balance"] < 1:
                return False
            version = doc["version"]
            doc["balance"] -= 1
            if await s.update_payment(doc, version, [{"type": "withdraw", "worker": worker}]):
                return True
            conflicts += 1

    try:
        stores = [store, other]
        results = await asyncio.gather(*(withdraw(stores[i % 2], i) for i in range(20)))
    finally:
        await other.close()

    assert results.count(True) == 10
    assert results.count(False) == 10
    assert min(seen) >= 0
    assert conflicts > 0  # the race really happened
    final = await store.get_payment("pay_bal")
    assert final is not None
    assert final["balance"] == 0
    assert final["version"] == 11
    events = await store.list_events("pay_bal")
    assert events[0] == {"type": "created"}
    withdrawals = [e["worker"] for e in events[1:]]
    assert len(withdrawals) == 10
    assert sorted(withdrawals) == sorted(i for i, ok in enumerate(results) if ok)


# ---------------------------------------------------------------------------
# leases
# ---------------------------------------------------------------------------


async def test_lease_acquire_contend_renew_release(store: Store) -> None:
    assert await store.acquire_lease("reconcile", "node-a", 30.0) is True
    assert await store.acquire_lease("reconcile", "node-b", 30.0) is False
    assert await store.acquire_lease("reconcile", "node-a", 30.0) is True  # renew
    assert await store.acquire_lease("other", "node-b", 30.0) is True  # independent name
    await store.release_lease("reconcile", "node-b")  # not the owner: no-op
    assert await store.acquire_lease("reconcile", "node-b", 30.0) is False
    await store.release_lease("reconcile", "node-a")
    assert await store.acquire_lease("reconcile", "node-b", 30.0) is True
    assert await store.acquire_lease("reconcile", "node-a", 30.0) is False
    await store.release_lease("never-held", "node-a")  # no error


async def test_lease_expires(store: Store) -> None:
    assert await store.acquire_lease("reconcile", "node-a", 0.2) is True
    assert await store.acquire_lease("reconcile", "node-b", 5.0) is False
    await wait_until(lambda: store.acquire_lease("reconcile", "node-b", 5.0), bool)
    assert await store.acquire_lease("reconcile", "node-a", 5.0) is False


async def test_lease_renewal_extends_expiry(store: Store) -> None:
    assert await store.acquire_lease("reconcile", "node-a", 0.2) is True
    assert await store.acquire_lease("reconcile", "node-a", 30.0) is True
    await asyncio.sleep(0.5)  # past the first ttl: asserting that nothing lapsed
    assert await store.acquire_lease("reconcile", "node-b", 5.0) is False


async def test_concurrent_lease_acquire_one_winner(store: Store, store_url: str) -> None:
    other = await second_store(store_url)
    try:
        stores = [store, other]
        won = await asyncio.gather(
            *(stores[i % 2].acquire_lease("reconcile", f"node-{i}", 30.0) for i in range(20))
        )
    finally:
        await other.close()
    assert won.count(True) == 1


# ---------------------------------------------------------------------------
# provider webhooks: dedupe records and unmatched events
# ---------------------------------------------------------------------------


async def test_webhook_event_recorded_once(store: Store) -> None:
    assert await store.record_webhook_event("stripe_main", "evt_1", 60.0) is True
    assert await store.record_webhook_event("stripe_main", "evt_1", 60.0) is False
    assert await store.record_webhook_event("stripe_main", "evt_1", 60.0) is False
    # the identity is (provider, event id)
    assert await store.record_webhook_event("stripe_other", "evt_1", 60.0) is True
    assert await store.record_webhook_event("stripe_main", "evt_2", 60.0) is True


async def test_webhook_event_seen_is_a_read(store: Store) -> None:
    assert await store.webhook_event_seen("stripe_main", "evt_seen") is False
    assert await store.webhook_event_seen("stripe_main", "evt_seen") is False  # no record
    assert await store.record_webhook_event("stripe_main", "evt_seen", 0.3) is True
    assert await store.webhook_event_seen("stripe_main", "evt_seen") is True
    assert await store.webhook_event_seen("stripe_other", "evt_seen") is False
    await wait_until(lambda: store.webhook_event_seen("stripe_main", "evt_seen"),
                     lambda seen: seen is False)  # expired with its ttl


async def test_webhook_event_concurrent_records_one_winner(store_url: str, store: Store) -> None:
    other = await second_store(store_url)
    try:
        results = await asyncio.gather(*(
            (store if i % 2 else other).record_webhook_event("adyen_main", "PSP1:CAPTURE:true",
                                                             60.0)
            for i in range(20)
        ))
        assert sorted(results) == [False] * 19 + [True]
        # shared: another store on the same backing data sees the record
        assert await other.record_webhook_event("adyen_main", "PSP1:CAPTURE:true", 60.0) is False
    finally:
        await other.close()


async def test_webhook_event_forget_allows_redelivery(store: Store) -> None:
    assert await store.record_webhook_event("bt", "k:t1:ts", 60.0) is True
    await store.forget_webhook_event("bt", "k:t1:ts")
    assert await store.record_webhook_event("bt", "k:t1:ts", 60.0) is True
    assert await store.record_webhook_event("bt", "k:t1:ts", 60.0) is False
    await store.forget_webhook_event("bt", "never-seen")  # no-op


async def test_webhook_event_expires_after_ttl(store: Store) -> None:
    assert await store.record_webhook_event("stripe_main", "evt_ttl", 0.2) is True
    assert await store.record_webhook_event("stripe_main", "evt_ttl", 0.2) is False
    await wait_until(lambda: store.record_webhook_event("stripe_main", "evt_ttl", 60.0),
                     lambda recorded: recorded is True)
    assert await store.record_webhook_event("stripe_main", "evt_ttl", 60.0) is False


async def test_webhook_event_record_is_durable(store_url: str, store: Store) -> None:
    assert await store.record_webhook_event("stripe_main", "evt_dur", 60.0) is True
    await store.close()
    reopened = make_store(store_url)
    await reopened.open()
    try:
        assert await reopened.record_webhook_event("stripe_main", "evt_dur", 60.0) is False
    finally:
        await reopened.close()
    await store.open()


async def test_unmatched_webhooks_kept_in_order(store_url: str, store: Store) -> None:
    assert await store.list_unmatched_webhooks(10) == []
    before = time.time()
    for i in range(3):
        await store.save_unmatched_webhook(
            "stripe_main", {"event_id": f"evt_{i}", "payment_reference": f"pi_{i}", "n": i})
    await store.save_unmatched_webhook("adyen_main", {"event_id": "PSP9:AUTHORISATION:true"})
    items = await store.list_unmatched_webhooks(10)
    assert [i["event_id"] for i in items] == ["evt_0", "evt_1", "evt_2", "PSP9:AUTHORISATION:true"]
    assert [i["provider"] for i in items] == ["stripe_main"] * 3 + ["adyen_main"]
    assert items[1]["payment_reference"] == "pi_1" and items[1]["n"] == 1
    assert all(before - 1 <= i["received_at"] <= time.time() + 1 for i in items)
    assert [i["event_id"] for i in await store.list_unmatched_webhooks(2)] == ["evt_0", "evt_1"]
    assert await store.list_unmatched_webhooks(0) == []
    other = await second_store(store_url)
    try:
        assert len(await other.list_unmatched_webhooks(100)) == 4
    finally:
        await other.close()


# ---------------------------------------------------------------------------
# SQLite specifics
# ---------------------------------------------------------------------------


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "gateway.db"
    s = SQLiteStore(path)
    await s.open()
    await s.insert_payment(payment("pay_1", provider_reference="pi_1"), [{"type": "created"}])
    assert await s.update_payment(
        payment("pay_1", "unknown", 150.0, provider_reference="pi_1"), 1, [{"type": "x"}]
    )
    await s.claim_idempotency(SCOPE, "done", "fp", 30.0, 3600.0)
    await s.complete_idempotency(SCOPE, "done", {"status": 201}, 3600.0)
    await s.claim_idempotency(SCOPE, "running", "fp", 300.0, 3600.0)
    assert await s.acquire_lease("reconcile", "node-a", 300.0)
    await s.close()
    assert path.exists()

    s2 = make_store(f"sqlite:///{path}")
    await s2.open()
    try:
        doc = await s2.get_payment("pay_1")
        assert doc is not None
        assert (doc["status"], doc["version"]) == ("unknown", 2)
        assert await s2.list_events("pay_1") == [{"type": "created"}, {"type": "x"}]
        assert await s2.find_by_provider_reference("stripe_main", "pi_1") == "pay_1"
        q = PaymentQuery(statuses=["unknown"], updated_before=1000.0)
        assert [d["id"] for d in await s2.query_payments(q)] == ["pay_1"]
        done = await s2.claim_idempotency(SCOPE, "done", "fp", 30.0, 3600.0)
        assert done.outcome is ClaimOutcome.COMPLETED
        assert done.record is not None and done.record.response == {"status": 201}
        running = await s2.claim_idempotency(SCOPE, "running", "fp", 30.0, 3600.0)
        assert running.outcome is ClaimOutcome.IN_PROGRESS
        assert await s2.acquire_lease("reconcile", "node-b", 30.0) is False
    finally:
        await s2.close()


async def test_sqlite_wal_and_synchronous_full(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    s = SQLiteStore(path)
    await s.open()
    try:
        await s.insert_payment(payment("pay_1"), [])
        # synchronous is per connection: ask the store's own connection
        sync = await s._run(lambda: s._db().execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()
        assert await asyncio.to_thread(Path(f"{path}-wal").exists)
    finally:
        await s.close()


async def test_sqlite_closed_store(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "gateway.db")
    assert await s.ping() is False
    with pytest.raises(StoreError):
        await s.get_payment("pay_1")
    await s.open()
    assert await s.ping() is True
    await s.close()
    assert await s.ping() is False


# ---------------------------------------------------------------------------
# Redis specifics
# ---------------------------------------------------------------------------


async def test_redis_key_layout(redis_url: str) -> None:
    s = RedisStore(redis_url)
    await s.open()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await s.insert_payment(payment("pay_1", provider_reference="pi_1"), [{"type": "created"}])
        assert raw.hget("gw:{pay_1}:doc", "v") == "1"
        assert raw.type("gw:{pay_1}:events") == "list"
        assert raw.get("gw:pref:{stripe_main}:pi_1") == "pay_1"
        assert raw.zscore("gw:unresolved", "pay_1") == 100.0
        await s.claim_idempotency(SCOPE, "k1", "fp", 30.0, 60.0)
        digest = hashlib.sha256(b"acme\0k1").hexdigest()
        key = f"gw:idem:{{{digest}}}"
        assert raw.hget(key, "state") == "in_progress"
        assert 0 < raw.pttl(key) <= 60_000
        assert await s.update_payment(payment("pay_1", "authorized", 200.0), 1, [])
        assert raw.zscore("gw:unresolved", "pay_1") is None
    finally:
        raw.close()
        await s.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_down_ping_false_and_store_error() -> None:
    s = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0", connect_timeout_s=0.5)
    await s.open()
    try:
        assert await s.ping() is False
        with pytest.raises(StoreError):
            await s.get_payment("pay_1")
        with pytest.raises(StoreError):
            await s.claim_idempotency(SCOPE, "k", "fp", 1.0, 1.0)
        with pytest.raises(StoreError):
            await s.insert_payment(payment("pay_1"), [])
    finally:
        await s.close()


# ---------------------------------------------------------------------------
# merchant notification outbox (times are passed explicitly: no sleeping)
# ---------------------------------------------------------------------------


def notification(eid: str, pid: str = "pay_n", due: float = 1000.0, **extra: Any) -> dict:
    event: dict[str, Any] = {
        "id": eid, "merchant_id": "acme", "payment_id": pid, "type": "payment.captured",
        "created_at": due, "next_attempt_at": due,
        "payload": {"id": eid, "object": "event", "data": {"object": {"id": pid}}},
    }
    event.update(extra)
    return event


async def test_notification_enqueue_get_list_and_dedupe(store: Store) -> None:
    assert await store.enqueue_notification(notification("evt_1")) is True
    assert await store.enqueue_notification(notification("evt_2", due=1001.0)) is True
    assert await store.enqueue_notification(notification("evt_other", pid="pay_x")) is True
    # a retried enqueue (same id) changes nothing
    assert await store.enqueue_notification(
        notification("evt_1", type="payment.voided", due=5.0)) is False
    got = await store.get_notification("evt_1")
    assert got is not None
    assert got["state"] == "pending" and got["attempts"] == []
    assert got["type"] == "payment.captured" and got["next_attempt_at"] == 1000.0
    assert got["payload"]["data"]["object"]["id"] == "pay_n"
    assert got["lease_owner"] is None and got["delivered_at"] is None
    assert [e["id"] for e in await store.list_notifications("pay_n")] == ["evt_1", "evt_2"]
    assert await store.get_notification("evt_missing") is None
    assert await store.list_notifications("pay_missing") == []
    with pytest.raises(ValueError):
        await store.enqueue_notification({"id": "", "merchant_id": "acme", "created_at": 1.0})


async def test_notification_claim_due_lease_and_lapse(store: Store) -> None:
    # one payment each: a payment's own events go one at a time (test_notification_order)
    for i, due in enumerate([1003.0, 1001.0, 1002.0, 2000.0]):
        await store.enqueue_notification(notification(f"evt_{i}", pid=f"pay_{i}", due=due))
    assert await store.claim_due_notifications(1000.5, 10, 30.0, "a") == []
    first = await store.claim_due_notifications(1002.5, 10, 30.0, "a")
    assert [e["id"] for e in first] == ["evt_1", "evt_2"]  # due ones, oldest due first
    assert all(e["lease_owner"] == "a" and e["lease_until"] == 1032.5 for e in first)
    # leased: nobody else gets them while the lease is live
    again = await store.claim_due_notifications(1010.0, 10, 30.0, "b")
    assert [e["id"] for e in again] == ["evt_0"]
    assert await store.claim_due_notifications(1020.0, 10, 30.0, "b") == []
    # the lease lapsed (owner crashed): another worker takes them over; limit applies
    taken = await store.claim_due_notifications(1033.0, 1, 30.0, "b")
    assert len(taken) == 1 and taken[0]["lease_owner"] == "b"
    stored = await store.get_notification(taken[0]["id"])
    assert stored is not None and stored["lease_owner"] == "b"


async def test_notification_attempts_reschedule_deliver_fail(store: Store) -> None:
    await store.enqueue_notification(notification("evt_r", pid="pay_r"))
    await store.enqueue_notification(notification("evt_f", pid="pay_f"))
    await store.claim_due_notifications(1000.0, 10, 30.0, "w")
    att = {"at": 1000.1, "status": 500, "duration_ms": 3}
    doc = await store.record_notification_attempt("evt_r", att, False, 1010.0, owner="w")
    assert doc is not None
    assert doc["state"] == "pending" and doc["next_attempt_at"] == 1010.0
    assert doc["lease_owner"] is None and doc["attempts"] == [att]
    # rescheduled: not due before next_attempt_at, due after (lease released)
    assert [e["id"] for e in await store.claim_due_notifications(1009.0, 10, 30.0, "w")] == []
    assert [e["id"] for e in await store.claim_due_notifications(1010.0, 10, 30.0, "w")] == [
        "evt_r"]
    ok = {"at": 1010.2, "status": 200, "duration_ms": 4}
    doc = await store.record_notification_attempt("evt_r", ok, True, None, owner="w")
    assert doc is not None and doc["state"] == "delivered" and doc["delivered_at"] == 1010.2
    assert doc["attempts"] == [att, ok]
    # given up
    gone = await store.record_notification_attempt("evt_f", att, False, None, owner="w")
    assert gone is not None and gone["state"] == "failed"
    assert await store.claim_due_notifications(10**9, 10, 30.0, "w") == []
    # delivered is final: a late failed attempt is kept but changes nothing else
    late = {"at": 1011.0, "error": "timeout"}
    doc = await store.record_notification_attempt("evt_r", late, False, 1100.0, owner="x")
    assert doc is not None and doc["state"] == "delivered" and doc["attempts"][-1] == late
    fetched = await store.get_notification("evt_r")
    assert fetched == doc
    assert await store.record_notification_attempt("evt_none", att, True, None) is None


async def test_notification_stale_owner_does_not_reschedule(store: Store) -> None:
    await store.enqueue_notification(notification("evt_s"))
    await store.claim_due_notifications(1000.0, 10, 5.0, "slow")
    # the slow worker's lease lapsed; "fast" takes over
    assert len(await store.claim_due_notifications(1006.0, 10, 30.0, "fast")) == 1
    doc = await store.record_notification_attempt(
        "evt_s", {"at": 1007.0, "error": "timeout"}, False, 1100.0, owner="slow")
    assert doc is not None
    assert doc["lease_owner"] == "fast" and doc["next_attempt_at"] == 1000.0
    assert await store.claim_due_notifications(1010.0, 10, 30.0, "other") == []
    doc = await store.record_notification_attempt(
        "evt_s", {"at": 1008.0, "status": 204}, True, None, owner="fast")
    assert doc is not None and doc["state"] == "delivered" and len(doc["attempts"]) == 2


async def test_notification_concurrent_claims_each_event_once(store: Store,
                                                             store_url: str) -> None:
    for i in range(40):
        await store.enqueue_notification(notification(f"evt_c{i:02d}", pid=f"pay_c{i:02d}",
                                                      due=1000.0 + i / 100))
    other = await second_store(store_url)
    try:
        batches = await asyncio.gather(*(
            (store if i % 2 else other).claim_due_notifications(1001.0, 3, 60.0, f"w{i}")
            for i in range(30)
        ))
    finally:
        await other.close()
    claimed = [e["id"] for b in batches for e in b]
    assert sorted(claimed) == [f"evt_c{i:02d}" for i in range(40)]  # each exactly once


async def test_notification_outbox_is_durable(store_url: str, store: Store) -> None:
    await store.enqueue_notification(notification("evt_d"))
    await store.record_notification_attempt("evt_d", {"at": 1.0, "status": 503}, False, 1000.0)
    await store.close()
    reopened = make_store(store_url)
    await reopened.open()
    try:
        due = await reopened.claim_due_notifications(1000.0, 10, 30.0, "after-restart")
        assert [e["id"] for e in due] == ["evt_d"]
        assert due[0]["attempts"] == [{"at": 1.0, "status": 503}]
    finally:
        await reopened.close()
    await store.open()


async def test_update_writes_its_notifications_in_the_same_change(store: Store) -> None:
    """A change and the notification it owes are one atomic write (#12 item 2): a lost
    CAS writes neither; an id already queued is kept once; the payment list, due queue
    and get all see it."""
    await store.insert_payment(payment("pay_n"), [])
    doc = await store.get_payment("pay_n")
    assert doc is not None
    stale = dict(doc)
    doc["status"] = "authorized"
    assert await store.update_payment(doc, 1, [{"type": "a"}], [notification("evt_a")]) is True
    [queued] = await store.list_notifications("pay_n")
    assert queued["id"] == "evt_a" and queued["state"] == "pending"
    assert (await store.get_notification("evt_a") or {}).get("payment_id") == "pay_n"
    claimed = await store.claim_due_notifications(2000.0, 10, 30.0, "w1")
    assert [c["id"] for c in claimed] == ["evt_a"]

    # the CAS loses: nothing of the write exists, neither the event nor the notification
    stale["status"] = "voided"
    assert await store.update_payment(stale, 1, [{"type": "b"}], [notification("evt_b")]) \
        is False
    assert await store.get_notification("evt_b") is None
    assert [e["type"] for e in await store.list_events("pay_n")] == ["a"]

    # a notification already in the outbox (a replayed write) is not queued twice
    assert await store.update_payment(doc, 2, [], [notification("evt_a"), notification("evt_c")])
    assert [n["id"] for n in await store.list_notifications("pay_n")] == ["evt_a", "evt_c"]
    assert (await store.get_notification("evt_a") or {}).get("state") == "pending"
