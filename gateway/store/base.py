"""The store interface shared by the SQLite and Redis backends (SPEC section 10).

The store knows nothing about payments beyond a few indexed fields: a payment is a
JSON document (``dict``) with at least ``id``, ``merchant_id``, ``status``,
``provider``, ``provider_reference`` and ``updated_at`` (unix seconds, float), plus a
``version`` integer owned by the store.

Atomicity (where money is concerned):

* :meth:`Store.update_payment` is a compare-and-swap on ``version``: the new document
  and its audit events are written together, or nothing is. Amount reservations
  (capture / refund) are made by reading, checking and CAS-writing the document; a
  concurrent writer makes the CAS fail and the caller re-reads.
* :meth:`Store.claim_idempotency` atomically decides new / in progress / mismatch /
  completed / lease taken over.
* :meth:`Store.acquire_lease` is an atomic named lock with expiry (reconciliation).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.state_machine import UNRESOLVED

#: Requests that may use the store at once, per process (``store_options.pool_size``),
#: and how long a request's first store operation waits for a place
#: (``store_options.pool_timeout_s``); see gateway.store.pool.
DEFAULT_POOL_SIZE = 128
DEFAULT_POOL_TIMEOUT_S = 1.0


class StoreError(Exception):
    """The store could not be reached or answered unexpectedly."""


class AlreadyExists(StoreError):
    """insert_payment for an id that already exists."""


class ClaimOutcome(StrEnum):
    NEW = "new"  # no record: the caller now holds the lease
    TAKEN_OVER = "taken_over"  # a previous holder's lease lapsed: the caller holds it now
    IN_PROGRESS = "in_progress"  # another holder's lease is live
    MISMATCH = "mismatch"  # same key, different fingerprint
    COMPLETED = "completed"  # finished earlier: replay ``record.response``


@dataclass
class IdempotencyRecord:
    fingerprint: str
    state: str  # "in_progress" | "completed"
    lease_until: float  # unix seconds; meaningful while in_progress
    created_at: float
    response: dict[str, Any] | None = None  # set by complete_idempotency


@dataclass
class Claim:
    outcome: ClaimOutcome
    record: IdempotencyRecord | None = None
    retry_after: float = 0.0  # seconds, for IN_PROGRESS
    #: the claim's :class:`PaymentInsert` was written with it (see claim_idempotency)
    created: bool = False
    #: COMPLETED with an insert given: the payment its response names, read in the same
    #: step (a replay needs no second read); None when the response names another
    payment: dict[str, Any] | None = None


@dataclass
class PaymentInsert:
    """A new payment to write in the same atomic step as the idempotency claim that
    starts its request (:meth:`Store.claim_idempotency`): the write-ahead record (the
    payment and its first attempt) costs no write of its own."""

    doc: dict[str, Any]
    events: list[dict[str, Any]]


@dataclass
class Completion:
    """An idempotency completion (:meth:`Store.complete_idempotency`) to write in the same
    atomic step as a payment write (:meth:`Store.update_payment`): the request's last
    write also stores its answer. ``written`` turns True once it is stored."""

    scope: str
    key: str
    response: dict[str, Any]
    ttl_s: float
    written: bool = False


@dataclass
class PaymentQuery:
    statuses: list[str]
    updated_before: float
    limit: int = 100
    provider: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # doc[k] == v for every item


@dataclass
class EventSearch:
    """One page of a merchant's notification events (SPEC 3.2 ``GET /v1/events``), newest
    first (the order they were queued). ``type`` and ``state`` (pending / delivered /
    failed) filter; ``starting_after`` is the id of the last event of the previous page
    (an unknown or another merchant's id matches nothing)."""

    merchant_id: str
    limit: int = 20
    type: str | None = None
    state: str | None = None
    starting_after: str | None = None


@dataclass
class PaymentSearch:
    """One page of a merchant's payments (SPEC 3.1), newest first.

    Order is ``(created_at desc, id desc)``: a total order, so pages neither repeat nor
    skip. ``starting_after`` is the ``(created_at, id)`` of the last payment of the previous
    page; the page continues strictly after it in that order (payments inserted meanwhile
    are newer, so they only ever show on the first page). ``created_gte`` / ``created_lt``
    bound ``created_at`` (unix seconds). Only payments with a string ``merchant_id`` and a
    numeric ``created_at`` are searchable.
    """

    merchant_id: str
    limit: int = 20
    reference: str | None = None
    status: str | None = None
    provider: str | None = None
    created_gte: float | None = None
    created_lt: float | None = None
    starting_after: tuple[float, str] | None = None


def search_fields(doc: dict[str, Any]) -> tuple[str, float] | None:
    """``(merchant_id, created_at)`` of a searchable doc, None when it is not searchable."""
    merchant, created = doc.get("merchant_id"), doc.get("created_at")
    if not isinstance(merchant, str) or isinstance(created, bool):
        return None
    if not isinstance(created, int | float):
        return None
    return merchant, float(created)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    """The stores' JSON: compact, UTF-8 kept (one encoder, not one built per call)."""
    return _COMPACT.encode(obj)


def search_reference(doc: dict[str, Any]) -> str | None:
    ref = doc.get("reference")
    return ref if isinstance(ref, str) else None


#: Statuses covered by the reconciliation index that :meth:`Store.query_payments` searches.
RECONCILE_STATUSES: frozenset[str] = frozenset(s.value for s in UNRESOLVED)


def in_reconcile_index(doc: dict[str, Any]) -> bool:
    """True if ``query_payments`` can see ``doc``: its status is in
    :data:`RECONCILE_STATUSES` or the doc carries ``"needs_reconcile": true``."""
    return doc.get("status") in RECONCILE_STATUSES or doc.get("needs_reconcile") is True


class Store(abc.ABC):
    # lifecycle ---------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers."""

    # payments ----------------------------------------------------------------
    @abc.abstractmethod
    async def insert_payment(self, doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """Create a payment (``version`` becomes 1) and its first audit events.

        Raises :class:`AlreadyExists` if ``doc["id"]`` exists.
        """

    @abc.abstractmethod
    async def get_payment(self, payment_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def update_payment(
        self, doc: dict[str, Any], expected_version: int, events: list[dict[str, Any]],
        notifications: Sequence[dict[str, Any]] = (),
        ledger: Sequence[dict[str, Any]] = (),
        completion: Completion | None = None,
    ) -> bool:
        """Replace the payment if its stored version is ``expected_version``.

        On success the stored document has ``version = expected_version + 1`` (also set
        on ``doc``), ``events`` are appended to its audit trail, ``notifications``
        (records as :meth:`enqueue_notification` takes them; one already queued is kept)
        join the notification outbox and ``ledger`` entries (:mod:`gateway.ledger`; one
        already recorded is kept) join the ledger and ``completion`` (if given) completes
        its idempotency record as :meth:`complete_idempotency` would (then
        ``completion.written`` is set), all in one atomic change. Returns False (and
        writes nothing) on a version mismatch or a missing payment.
        """

    # ledger ------------------------------------------------------------------
    @abc.abstractmethod
    async def append_ledger(self, entries: Sequence[dict[str, Any]]) -> int:
        """Record entries not tied to a payment write (settlement fees, payouts), in one
        atomic change; an id already recorded is skipped. Returns how many were new."""

    @abc.abstractmethod
    async def ledger_entries_between(self, provider: str, start: float, end: float
                                     ) -> list[dict[str, Any]]:
        """Every entry at ``provider`` recorded in ``[start, end)`` (unix s), oldest first
        (settlement reconciliation of a day)."""

    # settlement reports (SPEC 16) ------------------------------------------------
    @abc.abstractmethod
    async def save_settlement_lines(self, provider: str, lines: Sequence[dict[str, Any]]
                                    ) -> int:
        """Keep imported settlement lines (each a ``dataclasses.asdict`` of a
        :class:`providers.settlement.SettlementLine`) of provider entry ``provider``; a
        line id already kept is skipped (importing a report twice changes nothing).
        Returns how many were new."""

    @abc.abstractmethod
    async def list_settlement_lines(self, provider: str, settled_on: str
                                    ) -> list[dict[str, Any]]:
        """The kept lines of ``provider`` settled on ``settled_on`` (YYYY-MM-DD)."""

    @abc.abstractmethod
    async def list_ledger(self, payment_id: str) -> list[dict[str, Any]]:
        """The payment's ledger entries, in the order they were recorded."""

    @abc.abstractmethod
    async def ledger_balances(self, merchant_id: str, currency: str) -> dict[str, int]:
        """Per account, debits minus credits of the merchant's entries in ``currency``
        (kept up to date by every entry write; accounts never written are absent)."""

    @abc.abstractmethod
    async def list_events(self, payment_id: str) -> list[dict[str, Any]]:
        """The payment's audit events in the order they were appended."""

    @abc.abstractmethod
    async def find_by_provider_reference(self, provider: str, reference: str) -> str | None:
        """Payment id whose (provider, provider_reference) matches, else None."""

    @abc.abstractmethod
    async def query_payments(self, query: PaymentQuery) -> list[dict[str, Any]]:
        """Payments in ``statuses`` last updated before ``updated_before``, oldest first.

        Only payments in the reconciliation index are searched (see
        :func:`in_reconcile_index`), on every backend. ``provider`` and ``extra`` narrow
        the result further; at most ``limit`` docs are returned.
        """

    @abc.abstractmethod
    async def search_payments(self, query: PaymentSearch) -> tuple[list[dict[str, Any]], bool]:
        """One page of ``query.merchant_id``'s payments matching every given filter, in
        ``(created_at desc, id desc)`` order, strictly after ``starting_after`` if given;
        at most ``query.limit`` (>= 1) docs, and whether more match after the last one.

        Served from indexes kept in the same atomic write as the payment (insert and
        update), so a status or provider change moves the payment between filters at once.
        """

    # idempotency -------------------------------------------------------------
    @abc.abstractmethod
    async def claim_idempotency(
        self, scope: str, key: str, fingerprint: str, lease_s: float, ttl_s: float,
        insert: PaymentInsert | None = None,
    ) -> Claim:
        """Atomically claim (scope, key); see :class:`ClaimOutcome`.

        ``insert``: when the caller gets the claim (``NEW`` or ``TAKEN_OVER``) and no
        payment with ``insert.doc["id"]`` exists, the payment and its events are written
        in the same atomic step, as :meth:`insert_payment` would (``version`` 1, also set
        on the doc), and ``claim.created`` is True. Otherwise nothing but the claim is
        written (an existing payment is left as it is: the caller resumes it). A
        ``COMPLETED`` claim with ``insert`` given also returns the payment with that id
        as ``claim.payment`` when the stored response names it (``payment_id``), read
        in the same step, so that a replay costs one store operation."""

    @abc.abstractmethod
    async def complete_idempotency(
        self, scope: str, key: str, response: dict[str, Any], ttl_s: float
    ) -> None:
        """Mark the claim completed with ``response`` (kept at least ``ttl_s``)."""

    @abc.abstractmethod
    async def release_idempotency(self, scope: str, key: str) -> None:
        """Forget an in-progress claim (safe failure: the client may retry)."""

    # leases ------------------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew, if ``owner`` holds it) the named lease."""

    @abc.abstractmethod
    async def release_lease(self, name: str, owner: str) -> None:
        """Release the lease if ``owner`` holds it."""

    # provider webhooks -------------------------------------------------------
    @abc.abstractmethod
    async def webhook_event_seen(self, provider: str, event_id: str) -> bool:
        """Whether ``(provider, event_id)`` is remembered (see :meth:`record_webhook_event`).
        A read: it works on a store that cannot take a write."""

    @abc.abstractmethod
    async def record_webhook_event(self, provider: str, event_id: str, ttl_s: float) -> bool:
        """Atomically remember ``(provider, event_id)`` for ``ttl_s`` seconds.

        True the first time, False while it is remembered. Shared by every replica of the
        backend. The webhook endpoint records an event once it has been APPLIED (while
        holding a lease on it), so a failure to apply never leaves it marked as done.
        """

    @abc.abstractmethod
    async def forget_webhook_event(self, provider: str, event_id: str) -> None:
        """Drop the record (applying failed: the provider's redelivery must be applied)."""

    @abc.abstractmethod
    async def save_unmatched_webhook(self, provider: str, event: dict[str, Any]) -> None:
        """Keep a verified event that matched no payment, for reconciliation."""

    @abc.abstractmethod
    async def list_unmatched_webhooks(self, limit: int = 100) -> list[dict[str, Any]]:
        """Unmatched events, oldest first, at most ``limit``; each is the saved dict plus
        ``provider`` and ``received_at`` (unix seconds)."""

    # merchant notification outbox ---------------------------------------------
    # An outbox event is a dict: ``id`` ("evt_..."), ``merchant_id``, ``payment_id``,
    # ``type``, ``created_at`` (unix s), ``payload`` (what is POSTed), ``next_attempt_at``
    # (unix s). The store adds ``state`` ("pending" | "delivered" | "failed"),
    # ``attempts`` (list, append order), ``delivered_at`` and the delivery lease
    # (``lease_owner``, ``lease_until``). Times are the caller's clock (``now``).

    @abc.abstractmethod
    async def enqueue_notification(self, event: dict[str, Any]) -> bool:
        """Add ``event`` to the outbox as ``pending`` with no attempts. Atomic insert-if-
        absent: True if it was added, False if an event with that id exists (a retried
        enqueue; the stored one is kept unchanged)."""

    @abc.abstractmethod
    async def claim_due_notifications(
        self, now: float, limit: int, lease_s: float, owner: str
    ) -> list[dict[str, Any]]:
        """Atomically lease up to ``limit`` pending events with ``next_attempt_at <= now``
        whose lease is free or lapsed (``lease_until <= now``), oldest due first: each
        gets ``lease_owner = owner``, ``lease_until = now + lease_s``. Concurrent callers
        (other replicas) never get the same event while its lease is live."""

    @abc.abstractmethod
    async def record_notification_attempt(
        self, event_id: str, attempt: dict[str, Any], delivered: bool,
        next_attempt_at: float | None, owner: str | None = None,
    ) -> dict[str, Any] | None:
        """Append ``attempt`` and settle the event, atomically; returns it (None if unknown).

        ``delivered`` -> state ``delivered`` (``delivered_at`` = ``attempt["at"]`` if
        numeric); else ``next_attempt_at`` given -> stays ``pending``, rescheduled; else
        -> ``failed`` (given up). ``delivered`` is final: a later (stale) attempt is
        appended but changes nothing else. The lease is released unless ``owner`` is
        given and someone else holds it now (then only the attempt is appended, plus
        ``delivered`` if so)."""

    @abc.abstractmethod
    async def search_notifications(self, query: EventSearch
                                   ) -> tuple[list[dict[str, Any]], bool]:
        """One page of ``query.merchant_id``'s events, newest first, matching ``type`` and
        ``state``, strictly after ``starting_after``; at most ``query.limit`` (>= 1), and
        whether more may follow. Served from an index kept with each enqueue; a backend
        may return a shorter page (with ``has_more``) rather than scan without bound."""

    @abc.abstractmethod
    async def requeue_notification(self, event_id: str, now: float) -> dict[str, Any] | None:
        """Queue an event for delivery again (the merchant's redelivery, SPEC 3.2); returns
        the stored event, or None if there is none. A delivered or failed event becomes
        ``pending``, due at ``now``, with ``requeued_at = now`` (its attempts are kept); a
        pending event not in flight becomes due at ``now`` at the latest; an event in
        flight (leased) is left as it is. It keeps its place in its payment's order."""

    @abc.abstractmethod
    async def get_notification(self, event_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def list_notifications(self, payment_id: str) -> list[dict[str, Any]]:
        """The payment's outbox events in enqueue order."""


NOTIFICATION_STATES: frozenset[str] = frozenset({"pending", "delivered", "failed"})


def new_notification(event: dict[str, Any]) -> dict[str, Any]:
    """The stored form of a newly enqueued outbox event (shared by the backends)."""
    eid = event.get("id")
    if not isinstance(eid, str) or not eid:
        raise ValueError("notification needs a non-empty string 'id'")
    if not isinstance(event.get("merchant_id"), str):
        raise ValueError("notification needs a string 'merchant_id'")
    created = event.get("created_at")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise ValueError("notification needs a numeric 'created_at' (unix seconds)")
    due = event.get("next_attempt_at", created)
    if isinstance(due, bool) or not isinstance(due, int | float):
        raise ValueError("notification 'next_attempt_at' must be numeric (unix seconds)")
    return {**event, "next_attempt_at": float(due), "state": "pending", "attempts": [],
            "delivered_at": None, "lease_owner": None, "lease_until": None}


def check_ledger_entry(entry: dict[str, Any]) -> None:
    """What every backend refuses to record: an entry that is not one positive integer
    amount moved from one account to another, in a currency, for a merchant."""
    amount = entry.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"ledger entry amount must be a positive integer: {amount!r}")
    for key in ("id", "merchant_id", "currency", "debit", "credit", "entry_type"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"ledger entry needs a non-empty string {key!r}")
    if entry["debit"] == entry["credit"]:
        raise ValueError("ledger entry debits and credits the same account")


def requeue(doc: dict[str, Any], now: float) -> bool:
    """Apply :meth:`Store.requeue_notification` to a stored event in place; True if it
    changed (shared by the backends)."""
    leased = doc.get("lease_until") is not None and float(doc["lease_until"]) > now
    if doc.get("state") == "pending":
        if leased or float(doc.get("next_attempt_at") or 0) <= now:
            return False
        doc["next_attempt_at"] = now
        return True
    doc.update(state="pending", next_attempt_at=now, requeued_at=now, lease_owner=None,
               lease_until=None)
    return True


def settle_notification(
    doc: dict[str, Any], attempt: dict[str, Any], delivered: bool,
    next_attempt_at: float | None, owner: str | None,
) -> dict[str, Any]:
    """Apply one delivery attempt to a stored event in place (see
    :meth:`Store.record_notification_attempt`); returns ``doc``."""
    doc.setdefault("attempts", []).append(attempt)
    state = doc.get("state")
    if state == "delivered":
        return doc
    holds = owner is None or doc.get("lease_owner") == owner
    if delivered:
        at = attempt.get("at")
        doc.update(state="delivered", next_attempt_at=None,
                   delivered_at=float(at) if isinstance(at, int | float) else None)
        if holds:
            doc.update(lease_owner=None, lease_until=None)
        return doc
    if state != "pending" or not holds:
        return doc
    if next_attempt_at is None:
        doc.update(state="failed", next_attempt_at=None)
    else:
        doc["next_attempt_at"] = float(next_attempt_at)
    doc.update(lease_owner=None, lease_until=None)
    return doc
