"""PaymentWriter.mutate against the doc the caller's last write returned (``current``, no
read before the write) and with the request's idempotency completion, on SQLite and
Redis: a concurrent writer in between makes the CAS miss, the writer reads and applies
the change again on the fresh doc (nothing lost, nothing doubled), and the completion is
written exactly with the write that succeeds."""

from __future__ import annotations

from typing import Any

from gateway.model import audit, new_payment
from gateway.payment_writer import PaymentWriter
from gateway.store import ClaimOutcome, Store
from gateway.store.base import Completion

BODY = {"amount": 1000, "currency": "EUR", "capture": "manual",
        "payment_method": {"type": "card", "token": "tok_visa"}}


async def _created(store: Store, writer: PaymentWriter, pid: str, key: str
                   ) -> dict[str, Any]:
    doc = new_payment(pid, "acme", BODY, "fp")
    insert = writer.new_payment(doc, [audit("payment_created", "merchant")])
    claim = await store.claim_idempotency("acme", key, "fp", 30, 3600, insert)
    assert claim.outcome is ClaimOutcome.NEW and claim.created
    return insert.doc


async def test_mutate_on_current_writes_without_reading(store: Store) -> None:
    writer = PaymentWriter(store, None)
    doc = await _created(store, writer, "pay_w1", "k1")
    reads = 0
    original = store.get_payment

    async def counted(pid: str) -> dict[str, Any] | None:
        nonlocal reads
        reads += 1
        return await original(pid)

    store.get_payment = counted  # type: ignore[method-assign]

    def tag(d: dict[str, Any]) -> list[dict[str, Any]]:
        d["metadata"] = {"step": "one"}
        return [audit("tagged", "gateway")]

    done = await writer.mutate("pay_w1", tag, current=doc)
    assert reads == 0 and done["version"] == 2
    store.get_payment = original  # type: ignore[method-assign]
    stored = await store.get_payment("pay_w1")
    assert stored is not None and stored["metadata"] == {"step": "one"}
    assert stored["version"] == 2


async def test_stale_current_loses_the_cas_then_reads_and_retries(store: Store) -> None:
    writer = PaymentWriter(store, None)
    doc = await _created(store, writer, "pay_w2", "k2")
    stale = dict(doc)
    # another writer (a webhook, reconciliation) changes the payment meanwhile
    await writer.mutate("pay_w2", lambda d: (d.update(reference="theirs"),
                                             [audit("theirs", "webhook")])[1])
    calls = 0

    def ours(d: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        d["metadata"] = {"ours": "yes"}
        return [audit("ours", "gateway")]

    completion = Completion("acme", "k2", {"status": 201, "payment_id": "pay_w2"}, 3600)
    done = await writer.mutate("pay_w2", ours, current=stale, completion=completion)
    assert calls == 2  # once on the stale doc (CAS lost), once on the fresh one
    assert done["version"] == 3 and done["reference"] == "theirs"
    assert done["metadata"] == {"ours": "yes"} and completion.written
    stored = await store.get_payment("pay_w2")
    assert stored is not None and stored["reference"] == "theirs"
    assert stored["metadata"] == {"ours": "yes"}
    assert [e["type"] for e in await store.list_events("pay_w2")] == [
        "payment_created", "theirs", "ours"]
    replay = await store.claim_idempotency("acme", "k2", "fp", 30, 3600)
    assert replay.outcome is ClaimOutcome.COMPLETED and replay.record is not None
    assert replay.record.response == {"status": 201, "payment_id": "pay_w2"}
