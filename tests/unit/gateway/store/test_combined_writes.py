"""The hot path's combined writes (issue #15 item 1), on SQLite and Redis: the idempotency
claim that also inserts the request's payment (``claim_idempotency(..., insert=)``) and
the payment update that also completes the idempotency record
(``update_payment(..., completion=)``). Each is one atomic step: all of it or nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.store import ClaimOutcome, PaymentQuery, Store
from gateway.store.base import Completion, PaymentInsert

SCOPE = "acme"


def payment(pid: str, status: str = "pending", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": pid, "merchant_id": "acme", "status": status,
                           "provider": "stripe_main", "provider_reference": None,
                           "updated_at": 100.0, "created_at": 100.0, "amount": 1000,
                           "currency": "EUR"}
    doc.update(extra)
    return doc


def insert_of(pid: str, **extra: Any) -> PaymentInsert:
    return PaymentInsert(payment(pid, **extra), [{"type": "payment_created"},
                                                 {"type": "attempt_started"}])


async def test_new_claim_inserts_the_payment_with_its_events(store: Store) -> None:
    ins = insert_of("pay_c1")
    claim = await store.claim_idempotency(SCOPE, "k1", "fp", 30, 3600, ins)
    assert claim.outcome is ClaimOutcome.NEW and claim.created
    assert ins.doc["version"] == 1
    stored = await store.get_payment("pay_c1")
    assert stored is not None and stored["version"] == 1 and stored["amount"] == 1000
    assert [e["type"] for e in await store.list_events("pay_c1")] == [
        "payment_created", "attempt_started"]
    # the record is claimed as without an insert: a second request is in progress
    again = await store.claim_idempotency(SCOPE, "k1", "fp", 30, 3600, insert_of("pay_c1"))
    assert again.outcome is ClaimOutcome.IN_PROGRESS and not again.created
    # a pending payment is in the reconciliation index from its first write
    found = await store.query_payments(PaymentQuery(["pending"], time.time() + 10))
    assert [d["id"] for d in found] == ["pay_c1"]


async def test_claims_not_granted_insert_nothing(store: Store) -> None:
    await store.claim_idempotency(SCOPE, "k2", "fp", 30, 3600)
    await store.complete_idempotency(SCOPE, "k2", {"status": 201, "payment_id": "x"}, 3600)
    done = await store.claim_idempotency(SCOPE, "k2", "fp", 30, 3600, insert_of("pay_c2"))
    assert done.outcome is ClaimOutcome.COMPLETED and not done.created
    other = await store.claim_idempotency(SCOPE, "k2", "other", 30, 3600, insert_of("pay_c3"))
    assert other.outcome is ClaimOutcome.MISMATCH and not other.created
    assert await store.get_payment("pay_c2") is None
    assert await store.get_payment("pay_c3") is None
    assert await store.list_events("pay_c2") == []


async def test_claim_of_an_existing_payment_leaves_it_alone(store: Store) -> None:
    await store.insert_payment(payment("pay_c4", status="authorized", amount=7), [{"n": 1}])
    claim = await store.claim_idempotency(SCOPE, "k4", "fp", 30, 3600, insert_of("pay_c4"))
    assert claim.outcome is ClaimOutcome.NEW and not claim.created
    stored = await store.get_payment("pay_c4")
    assert stored is not None and stored["status"] == "authorized" and stored["amount"] == 7
    assert await store.list_events("pay_c4") == [{"n": 1}]


async def test_taken_over_claim_inserts_a_missing_payment(store: Store) -> None:
    await store.claim_idempotency(SCOPE, "k5", "fp", 0.05, 3600)  # its owner crashed

    async def lapsed() -> bool:
        claim = await store.claim_idempotency(SCOPE, "k5", "fp", 30, 3600,
                                              insert_of("pay_c5"))
        assert claim.outcome in (ClaimOutcome.IN_PROGRESS, ClaimOutcome.TAKEN_OVER)
        return claim.outcome is ClaimOutcome.TAKEN_OVER and claim.created

    deadline = time.monotonic() + 5
    while not await lapsed():
        assert time.monotonic() < deadline, "the lease never lapsed"
        await asyncio.sleep(0.02)
    assert (await store.get_payment("pay_c5") or {}).get("version") == 1


async def test_concurrent_claims_with_inserts_create_once(store: Store) -> None:
    claims = await asyncio.gather(*[
        store.claim_idempotency(SCOPE, "k6", "fp", 30, 3600, insert_of("pay_c6", n=i))
        for i in range(10)])
    made = [c for c in claims if c.created]
    assert len(made) == 1 and made[0].outcome is ClaimOutcome.NEW
    assert len(await store.list_events("pay_c6")) == 2


async def test_update_with_completion_completes_in_the_same_change(store: Store) -> None:
    ins = insert_of("pay_c7")
    await store.claim_idempotency(SCOPE, "k7", "fp", 30, 3600, ins)
    doc = dict(ins.doc, status="authorized", updated_at=101.0, provider_reference="pi_7")
    response = {"status": 201, "payment_id": "pay_c7"}
    lost = Completion(SCOPE, "k7", response, 3600)
    assert not await store.update_payment(dict(doc), 5, [{"type": "x"}], completion=lost)
    assert not lost.written
    assert (await store.claim_idempotency(SCOPE, "k7", "fp", 30, 3600)).outcome is \
        ClaimOutcome.IN_PROGRESS  # a lost CAS completes nothing
    won = Completion(SCOPE, "k7", response, 3600)
    assert await store.update_payment(doc, 1, [{"type": "attempt_finished"}], completion=won)
    assert won.written and doc["version"] == 2
    replay = await store.claim_idempotency(SCOPE, "k7", "fp", 30, 3600, insert_of("pay_c7"))
    assert replay.outcome is ClaimOutcome.COMPLETED and not replay.created
    assert replay.record is not None and replay.record.response == response
    # the derived indexes moved with the write: out of the reconciliation index, and the
    # provider reference points at it
    assert await store.query_payments(PaymentQuery(["pending"], time.time() + 10)) == []
    assert await store.find_by_provider_reference("stripe_main", "pi_7") == "pay_c7"
    stored = await store.get_payment("pay_c7")
    assert stored is not None and stored["version"] == 2 and stored["status"] == "authorized"


async def test_completed_claim_with_insert_returns_the_payment_it_names(store: Store) -> None:
    ins = insert_of("pay_c8")
    await store.claim_idempotency(SCOPE, "k8", "fp", 30, 3600, ins)
    doc = dict(ins.doc, status="authorized", updated_at=102.0)
    assert await store.update_payment(doc, 1, [], completion=Completion(
        SCOPE, "k8", {"status": 201, "payment_id": "pay_c8"}, 3600))
    replay = await store.claim_idempotency(SCOPE, "k8", "fp", 30, 3600, insert_of("pay_c8"))
    assert replay.outcome is ClaimOutcome.COMPLETED
    assert replay.payment is not None and replay.payment["status"] == "authorized"
    assert replay.payment["version"] == 2
    # without an insert, or when the answer names another resource: no payment read
    plain = await store.claim_idempotency(SCOPE, "k8", "fp", 30, 3600)
    assert plain.outcome is ClaimOutcome.COMPLETED and plain.payment is None
    await store.claim_idempotency(SCOPE, "k9", "fp", 30, 3600)
    await store.complete_idempotency(SCOPE, "k9", {"status": 200, "payment_id": "evt_1"}, 60)
    other = await store.claim_idempotency(SCOPE, "k9", "fp", 30, 3600, insert_of("pay_c8"))
    assert other.outcome is ClaimOutcome.COMPLETED and other.payment is None
