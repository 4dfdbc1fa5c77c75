"""Merchant notifications: a durable outbox in the store and a delivery worker.

What is notified
  Every payment change that did NOT come from the merchant's own request (provider
  webhooks ``webhook:<provider>``, status lookups, reconciliation), or every change when
  the merchant sets ``webhook.notify_all: true``. Merchants without ``webhook.url`` get
  nothing. Sources of the merchant's own request: :data:`MERCHANT_SOURCES`.

The event (the POSTed JSON body)
  ``{"id": "evt_...", "object": "event", "type": "payment.<status>", "created": <unix>,
  "sequence": <payment version after the change>, "previous_sequence": <sequence of the
  payment's previous event, null for its first>, "data": {"object": <payment object after
  the change>}, "previous_status": ..., "source": ...}``; ``type`` is ``payment.updated``
  when the status did not change (a refund settled, for instance), and
  ``dispute.created|updated|won|lost`` for a dispute change (SPEC 16), whose
  ``data.dispute`` is that dispute. The id is derived from
  (payment id, payment version), so a retried enqueue of the same change is
  deduplicated by the store, and merchants dedupe on it.

Delivery
  :class:`NotificationWorker` polls the outbox (``notifications.poll_interval_s``),
  leases due events (so replicas sharing a Redis store never send one event
  concurrently), POSTs them with ``Gateway-Signature: t=<unix>,v1=<hex>`` and
  ``Gateway-Event-Id``. A 2xx answer is a delivery; anything else (status, timeout,
  connection error) is retried with exponential backoff (``backoff_base_s`` doubling up
  to ``backoff_max_s``, +0-10 % jitter) until ``max_age_s`` (24 h) after the event was
  created; then it is marked ``failed``. Every attempt is kept with the event
  (``GET /v1/events/{id}``). Delivery is at least once: a worker killed mid-delivery
  leaves a lease that lapses, and the event is sent again.

Order (SPEC 3.2): per payment, events go out in ``sequence`` order. The store's claim
  hands out only a payment's earliest event still ``pending`` (one in flight per
  payment); a later one waits until it is delivered or given up (``failed``). A
  re-delivery asked by the merchant (``POST /v1/events/{id}/redeliver``) puts the event
  back in that queue at its place.

The notification a change owes is written in the same atomic store write as the change
(:class:`gateway.payment_writer.PaymentWriter`), so a crash never loses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from gateway.config import GatewayConfig, MerchantConfig, NotificationSettings
from gateway.disputes import merchant_event
from gateway.model import derived_id, iso, needs_reconcile
from gateway.notification_signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    sign,
    verify_signature,
)
from gateway.payment_types import Dispute, Payment
from gateway.store import Store, StoreError

log = logging.getLogger("gateway.notifications")

#: Audit sources that mean "the merchant's own request changed the payment".
MERCHANT_SOURCES: frozenset[str] = frozenset({"merchant", "provider_response", "gateway"})

#: Extra lease time beyond the POST timeout (recording the attempt, slow store). A
#: worker killed mid-delivery delays that event's next attempt by at most the lease.
LEASE_MARGIN_S = 5.0

def event_id(payment_id: str, version: int) -> str:
    """Deterministic: one event per stored version of a payment."""
    return derived_id("evt_", payment_id, str(int(version)))


def _merchant(config: GatewayConfig, merchant_id: Any) -> MerchantConfig | None:
    return config.merchants.get(str(merchant_id)) if merchant_id is not None else None


def wants_notification(config: GatewayConfig, merchant_id: Any, source: str) -> bool:
    merchant = _merchant(config, merchant_id)
    if merchant is None or not merchant.webhook_url:
        return False
    return merchant.notify_all or source not in MERCHANT_SOURCES


def build_event(
    doc_after: dict[str, Any], from_status: str | None, source: str, created: float,
    events: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The merchant-facing event body for a change that produced ``doc_after``; a dispute
    change that leaves the payment's status alone is a ``dispute.*`` event whose
    ``data.dispute`` is that dispute (``events``: the write's audit events)."""
    status = str(doc_after["status"])
    kind = f"payment.{status}" if status != from_status else "payment.updated"
    data: dict[str, Any] = {"object": Payment.public_of(doc_after)}
    dispute = merchant_event(list(events)) if status == from_status else None
    if dispute is not None:
        kind, changed_id = dispute
        data["dispute"] = next((Dispute.public_of(d) for d in doc_after.get("disputes") or []
                                if d.get("id") == changed_id), None)
    sequence = int(doc_after.get("version") or 0)
    previous = doc_after.get("_notified_sequence")
    return {
        "id": event_id(str(doc_after["id"]), sequence),
        "object": "event",
        "type": kind,
        "created": int(created),
        "sequence": sequence,
        "previous_sequence": int(previous) if isinstance(previous, int) else None,
        "data": data,
        "previous_status": from_status,
        "source": source,
    }


def _record(config: GatewayConfig | None, doc_after: dict[str, Any], from_status: str | None,
            source: str, ts: float, events: Sequence[dict[str, Any]] = ()
            ) -> dict[str, Any] | None:
    """The outbox record for a change (None: this merchant is not to be notified)."""
    if config is None or not wants_notification(config, doc_after.get("merchant_id"), source):
        return None
    payload = build_event(doc_after, from_status, source, ts, events)
    return {"id": payload["id"], "merchant_id": str(doc_after["merchant_id"]),
            "payment_id": str(doc_after["id"]), "type": payload["type"], "created_at": ts,
            "sequence": payload["sequence"], "next_attempt_at": ts, "payload": payload}


async def enqueue_status_change(
    store: Store, config: GatewayConfig | None, doc_after: dict[str, Any],
    from_status: str | None, source: str, *, now: float | None = None,
) -> str | None:
    """Put a notification for this change in the outbox; returns its id, or None when
    the merchant is not to be notified (no webhook URL; its own request without
    ``notify_all``). ``doc_after`` is the payment as stored (with its new ``version``).
    ``config`` None: nobody is notified."""
    record = _record(config, doc_after, from_status, source,
                     time.time() if now is None else now)
    if record is None:
        return None
    await store.enqueue_notification(record)
    return str(record["id"])


def visible_state(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What a merchant notification reports on, status first: a cheap, immutable
    snapshot to compare a payment before and after a write."""
    refunds = tuple((r.get("id"), r.get("status")) for r in doc.get("refunds") or [])
    disputes = tuple((d.get("id"), d.get("status"), d.get("amount"), d.get("reason"),
                      d.get("evidence_due_by")) for d in doc.get("disputes") or [])
    return (doc.get("status"), doc.get("amount_authorized"), doc.get("amount_captured"),
            doc.get("amount_refunded"), refunds, disputes)


_CHANGE_EVENTS = ("status_changed", "refund_updated", "dispute_created", "dispute_updated")


def change_source(events: list[dict[str, Any]]) -> str:
    """The source of a write's audit events: that of its first status / refund change."""
    for ev in events:
        if ev.get("type") in _CHANGE_EVENTS and ev.get("source"):
            return str(ev["source"])
    for ev in reversed(events):
        if ev.get("source"):
            return str(ev["source"])
    return "gateway"


def outbox_record(config: GatewayConfig | None, before: tuple[Any, ...], after: dict[str, Any],
                  events: list[dict[str, Any]], new_version: int) -> dict[str, Any] | None:
    """The notification a payment write owes, built BEFORE the write so that it is stored
    in the same atomic write as the change (see :class:`gateway.payment_writer.PaymentWriter`).
    ``before`` is :func:`visible_state` of the payment as read. None when nothing visible
    changed or the merchant is not to be notified (its own request without
    ``notify_all``; no webhook URL). The source comes from the audit events; the id from
    (payment id, new version), so a re-flush dedupes."""
    if before == visible_state(after):
        return None
    return _record(config, {**after, "version": new_version},
                   before[0], change_source(events), time.time(), events)


async def flush_outbox(store: Store, doc: dict[str, Any]) -> dict[str, Any]:
    """Move the records a payment write carried in ``doc["_outbox"]`` to the store's
    outbox (idempotent by event id), then drop them from the payment. Never raises: a
    record left behind (crash, store error) is flushed by the next reconciliation pass."""
    records = list(doc.get("_outbox") or [])
    if not records:
        return doc
    try:
        for record in records:
            await store.enqueue_notification(record)
        done = {r["id"] for r in records}
        while True:
            version = doc["version"]
            doc["_outbox"] = [r for r in doc.get("_outbox") or [] if r["id"] not in done]
            doc["needs_reconcile"] = needs_reconcile(doc)
            if await store.update_payment(doc, version, []):
                return doc
            fresh = await store.get_payment(doc["id"])
            if fresh is None:
                return doc
            doc = fresh
    except (StoreError, ValueError):
        log.exception("notification not moved to the outbox yet; reconciliation retries",
                      extra={"payment_id": doc.get("id")})
        return doc


# --------------------------------------------------------------------------- delivery


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """Delay after the ``failures``-th failed attempt (1, 2, ...): base * 2^(n-1), capped."""
    exponent = min(max(failures, 1) - 1, 62)
    return float(min(max_s, base_s * (2.0**exponent)))


def next_attempt_at(
    created_at: float, failures: int, now: float, settings: NotificationSettings,
    jitter: float = 0.1,
) -> float | None:
    """When to try again after ``failures`` failed attempts; None = give up (too old)."""
    give_up_at = created_at + settings.max_age_s
    if now >= give_up_at:
        return None
    delay = backoff_delay(failures, settings.backoff_base_s, settings.backoff_max_s)
    delay *= 1.0 + random.uniform(0.0, max(jitter, 0.0))
    return min(now + delay, give_up_at)


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode("utf-8")


class NotificationWorker:
    """Delivers due outbox events in the background (one per process; many may share
    a store: leases keep them from sending the same event at once)."""

    def __init__(
        self, store: Store, config: GatewayConfig, *, owner: str | None = None,
        jitter: float = 0.1,
    ) -> None:
        self.store = store
        self.config = config
        self.settings = config.notifications
        self.owner = owner or f"ntf-{uuid.uuid4().hex[:12]}"
        self.jitter = jitter
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def lease_s(self) -> float:
        return 2 * self.settings.timeout_s + LEASE_MARGIN_S

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping.clear()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))
        self._task = asyncio.create_task(self._loop(), name="notification-worker")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop polling; give in-flight deliveries ``grace_s`` to finish, then cancel
        (a cancelled delivery is retried after its lease lapses)."""
        task, self._task = self._task, None
        self._stopping.set()
        self._wake.set()
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            handled = 0
            try:
                handled = await self.run_once()
            except Exception:  # the store is down, etc.: try again at the next poll
                log.exception("notification delivery pass failed")
            if handled >= self.settings.batch_size:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim the due events and deliver them; returns how many were claimed."""
        events = await self.store.claim_due_notifications(
            time.time(), self.settings.batch_size, self.lease_s, self.owner)
        if events:
            await asyncio.gather(*(self.deliver(e) for e in events))
        return len(events)

    async def deliver(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """One attempt for one (leased) event; records it and returns the stored event."""
        merchant = _merchant(self.config, event.get("merchant_id"))
        started = time.time()
        t0 = time.monotonic()
        status: int | None = None
        error: str | None = None
        if merchant is None or not merchant.webhook_url or not merchant.webhook_secret:
            error = "merchant has no webhook url/secret configured"
        else:
            body = encode_body(event["payload"])
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "payment-gateway-notifications/1",
                SIGNATURE_HEADER: sign(body, merchant.webhook_secret),
                EVENT_ID_HEADER: str(event["id"]),
            }
            try:
                status = await self._post(merchant.webhook_url, body, headers)
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientError as exc:
                error = f"connection error: {type(exc).__name__}"
        delivered = status is not None and 200 <= status < 300
        attempt: dict[str, Any] = {"at": started, "duration_ms":
                                   int((time.monotonic() - t0) * 1000)}
        if status is not None:
            attempt["status"] = status
        if error is not None:
            attempt["error"] = error
        # A redelivery the merchant asked for starts a fresh schedule (age and backoff).
        since = float(event.get("requeued_at") or event["created_at"])
        failures = 1 + sum(1 for a in event.get("attempts") or []
                           if not _ok(a) and float(a.get("at") or 0) >= since)
        nxt = None if delivered else next_attempt_at(
            since, failures, time.time(), self.settings, self.jitter)
        try:
            stored = await self.store.record_notification_attempt(
                str(event["id"]), attempt, delivered, nxt, owner=self.owner)
        except StoreError:
            log.exception("notification attempt not recorded", extra={"event_id": event["id"]})
            return None
        extra = {"event_id": event["id"], "merchant_id": event.get("merchant_id"),
                 "payment_id": event.get("payment_id"), "http_status": status,
                 "error": error, "attempt": len(event.get("attempts") or []) + 1}
        if delivered:
            log.info("notification delivered", extra=extra)
        elif nxt is None:
            log.warning("notification given up", extra=extra)
        else:
            log.info("notification attempt failed", extra={**extra, "retry_at": iso(nxt)})
        return stored

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        if self._session is None:
            raise RuntimeError("NotificationWorker is not started")
        async with self._session.post(url, data=body, headers=headers,
                                      allow_redirects=False) as resp:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await resp.content.read(4096)  # drain a little; the body is ignored
            return resp.status


def _ok(attempt: dict[str, Any]) -> bool:
    status = attempt.get("status")
    return isinstance(status, int) and 200 <= status < 300


async def worker_ctx(app: Any) -> AsyncIterator[None]:
    """aiohttp ``cleanup_ctx``: run the worker."""
    from gateway.appkeys import CONFIG, NOTIFIER, STORE

    store, config = app[STORE], app[CONFIG]
    worker = NotificationWorker(store, config)
    app[NOTIFIER] = worker
    await worker.start()
    try:
        yield
    finally:
        await worker.stop()


__all__ = [
    "EVENT_ID_HEADER",
    "MERCHANT_SOURCES",
    "SIGNATURE_HEADER",
    "NotificationWorker",
    "backoff_delay",
    "build_event",
    "change_source",
    "encode_body",
    "enqueue_status_change",
    "event_id",
    "flush_outbox",
    "next_attempt_at",
    "outbox_record",
    "sign",
    "verify_signature",
    "visible_state",
    "worker_ctx",
]
