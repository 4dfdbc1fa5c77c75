"""The one write path of a payment (issue #12 item 2).

:class:`PaymentWriter` is built by the app factory with the store and the config and
handed to everything that changes a payment (orchestrator, reconciliation, webhook
application). :meth:`PaymentWriter.mutate` reads the payment, lets a function change it
and name the audit events, and writes, in ONE atomic store change: the document
(compare-and-swap on its version), its audit events, the merchant notification the change
owes (SPEC 3.2), the ledger entries of the money it moved (SPEC 16, :mod:`gateway.ledger`)
and the reconcile flag. It returns what it wrote.

A caller that holds the payment as its last write returned it passes it as ``current``:
the write then compare-and-swaps against it without reading the store first (a lost CAS
reads and retries). :meth:`PaymentWriter.new_payment` prepares a new payment for the
idempotency claim that writes it, and a request's last write may carry its idempotency
completion, so that a new payment costs two store writes: one before the provider call
(claim + payment + first attempt) and one after (result + audit + outbox + ledger +
stored answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import metrics
from gateway.config import GatewayConfig
from gateway.ledger import entries_for_change, money_state
from gateway.model import needs_reconcile, now
from gateway.notifications import change_source, flush_outbox, outbox_record, visible_state
from gateway.store import Store
from gateway.store.base import Completion, PaymentInsert

Events = list[dict[str, Any]]


class PaymentMissing(Exception):
    """No payment with this id."""


class PaymentWriter:
    def __init__(self, store: Store, config: GatewayConfig | None) -> None:
        self.store = store
        #: None: nobody is notified (tools that write without the app's merchants).
        self.config = config

    @staticmethod
    def new_payment(doc: dict[str, Any], events: Events) -> PaymentInsert:
        """A new payment (and its first attempt, when it has one) as the idempotency claim
        of its request writes it (:meth:`Store.claim_idempotency`): the fields every
        write sets are set here too. Nothing is owed to the merchant (it asked) and no
        money moved yet."""
        doc["updated_at"] = now()
        doc["needs_reconcile"] = needs_reconcile(doc)
        return PaymentInsert(doc, events)

    async def mutate(self, payment_id: str, fn: Callable[[dict[str, Any]], Events], *,
                     current: dict[str, Any] | None = None,
                     completion: Completion | None = None) -> dict[str, Any]:
        """Read-modify-CAS-write loop. ``fn`` edits the doc and returns audit events, or
        raises to abort without writing. Returns the document as stored.

        ``current``: the payment as the caller's last write stored it (what that write
        returned); the first try edits it in place and compare-and-swaps on its version
        without reading the store, and a lost CAS reads and tries again as usual. It is
        handed over: use what this returns, never ``current`` itself afterwards.
        ``completion``: this write is the request's last; its idempotency record is
        completed in the same atomic write (``completion.written`` tells it was)."""
        doc = current
        while True:
            if doc is None:
                doc = await self.store.get_payment(payment_id)
                if doc is None:
                    raise PaymentMissing(payment_id)
            version = doc["version"]
            before = visible_state(doc)
            money_before = money_state(doc)
            events = fn(doc)
            doc["updated_at"] = now()
            # A change the merchant did not ask for (webhook, lookup, reconciliation) owes
            # a notification: it joins the outbox in the same atomic write as the change.
            record = outbox_record(self.config, before, doc, events, version + 1)
            if record is not None:  # the next event names this one as its predecessor
                doc["_notified_sequence"] = version + 1
            doc["needs_reconcile"] = needs_reconcile(doc)
            # the money this change moved, as balanced entries in the same write (SPEC 16)
            entries = entries_for_change(money_before, doc, version + 1,
                                         change_source(events))
            if await self.store.update_payment(doc, version, events,
                                               [record] if record else (), entries,
                                               completion):
                _count_corrections(doc, events)
                # records carried in the document by an earlier version of the gateway
                return await flush_outbox(self.store, doc) if doc.get("_outbox") else doc
            doc = None  # lost the compare-and-swap: read the payment again


def _count_corrections(doc: dict[str, Any], events: Events) -> None:
    """A "no money moved" overturned by a provider's answer or webhook is an alert-worthy
    correction (reconciliation counts its own changes itself)."""
    for ev in events:
        if ev.get("correction") and ev.get("source") != "reconciliation":
            metrics.RECONCILIATION_CORRECTIONS.labels(
                doc.get("provider") or "none", ev["from_status"], ev["to_status"]).inc()


__all__ = ["Events", "PaymentMissing", "PaymentWriter"]
