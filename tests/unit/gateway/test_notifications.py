"""Merchant notifications: signing helper, enqueue rules, the delivery worker against a
real local HTTP receiver, webhook wiring and the events API (both stores)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import notifications
from gateway.api.auth import hash_key
from gateway.app import create_app
from gateway.appkeys import CONFIG, ORCHESTRATOR, STORE
from gateway.config import GatewayConfig, NotificationSettings, load_config
from gateway.model import audit, new_payment
from gateway.notification_signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    compute_signature,
    sign,
    verify_signature,
)
from gateway.notifications import (
    NotificationWorker,
    backoff_delay,
    enqueue_status_change,
    event_id,
    next_attempt_at,
)
from gateway.state_machine import PaymentStatus
from gateway.store import Store, make_store
from gateway.webhook_apply import apply_webhook_event
from providers.webhook_event import WebhookEvent
from tests.gateway_harness import (
    ACME_KEY,
    GLOBEX_KEY,
    headers,
    payment_body,
    wait_for,
    write_config,
)

ACME_SECRET = "whsec_merchant_acme_0123456789"
GLOBEX_SECRET = "whsec_merchant_globex_9876543210"
WAIT_S = 15.0


# --------------------------------------------------------------------------- helpers


class Receiver:
    """A merchant endpoint on a real local port; fails the first ``fail_first``
    deliveries of EACH event id with ``fail_status``, then answers 200."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.counts: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((body, dict(request.headers)))
        eid = request.headers.get(EVENT_ID_HEADER, "")
        self.counts[eid] += 1
        if self.counts[eid] <= self.fail_first:
            return web.Response(status=self.fail_status, text="not now")
        self.accepted[eid] += 1
        return web.json_response({"received": True})

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(fail_first=3)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def merchants(acme_url: str | None, globex_url: str | None = None, *,
              acme_notify_all: bool = False) -> list[dict[str, Any]]:
    acme: dict[str, Any] = {"id": "acme", "api_key_sha256": [hash_key(ACME_KEY)]}
    if acme_url:
        acme["webhook"] = {"url": acme_url, "secret": ACME_SECRET,
                           "notify_all": acme_notify_all}
    globex: dict[str, Any] = {"id": "globex", "api_key_sha256": [hash_key(GLOBEX_KEY)]}
    if globex_url:
        globex["webhook"] = {"url": globex_url, "secret": GLOBEX_SECRET, "notify_all": True}
    return [acme, globex]


FAST = {"poll_interval_s": 0.05, "timeout_s": 2, "backoff_base_s": 0.1,
        "backoff_max_s": 0.4, "max_age_s": 3600}


def make_config(tmp_path: Path, store_url: str, acme_url: str | None,
                globex_url: str | None = None, **kw: Any) -> GatewayConfig:
    settings = {**FAST, **kw.pop("notifications", {})}
    path = write_config(tmp_path / "cfg", store_url,
                        merchants=merchants(acme_url, globex_url, **kw),
                        notifications=settings)
    return load_config(path)


def pay_doc(pid: str, merchant: str = "acme", status: str = "authorized") -> dict[str, Any]:
    doc = new_payment(pid, merchant, payment_body(), "fp")
    doc.update(status=status, provider="stripe_main", provider_reference=f"pi_{pid}",
               amount_authorized=1000)
    return doc


def outbox_event(eid: str, merchant: str = "acme", pid: str = "pay_1",
                 created: float | None = None) -> dict[str, Any]:
    ts = time.time() if created is None else created
    payload = {"id": eid, "object": "event", "type": "payment.captured", "created": int(ts),
               "data": {"object": {"id": pid, "object": "payment", "status": "captured"}},
               "previous_status": "authorized", "source": "reconciliation"}
    return {"id": eid, "merchant_id": merchant, "payment_id": pid,
            "type": "payment.captured", "created_at": ts, "next_attempt_at": ts,
            "payload": payload}


async def delivered(store: Store, *ids: str) -> list[dict[str, Any]] | None:
    docs = [await store.get_notification(i) for i in ids]
    if all(d is not None and d["state"] == "delivered" for d in docs):
        return [d for d in docs if d is not None]
    return None


# --------------------------------------------------------------------------- signing


def test_sign_and_verify_roundtrip() -> None:
    body = b'{"id":"evt_1","object":"event"}'
    header = sign(body, ACME_SECRET, timestamp=1_700_000_000)
    assert header == f"t=1700000000,v1={compute_signature(body, ACME_SECRET, 1_700_000_000)}"
    assert verify_signature(body, header, ACME_SECRET, now=1_700_000_100)
    assert verify_signature(body, sign(body, ACME_SECRET), ACME_SECRET)  # now = host clock


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"evt_kat"}'
    expected = hmac.new(b"k3y", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert compute_signature(body, "k3y", 1_700_000_000) == expected
    assert sign(body, "k3y", timestamp=1_700_000_000) == f"t=1700000000,v1={expected}"


def test_verify_rejects_tampered_body_wrong_secret_and_old_timestamp() -> None:
    body = b'{"id":"evt_1","amount":100}'
    header = sign(body, ACME_SECRET, timestamp=1_700_000_000)
    now = 1_700_000_010
    assert not verify_signature(b'{"id":"evt_1","amount":999}', header, ACME_SECRET, now=now)
    assert not verify_signature(body, header, "whsec_wrong", now=now)
    assert not verify_signature(body, header, ACME_SECRET, now=1_700_000_000 + 301)
    assert not verify_signature(body, header, ACME_SECRET, now=1_700_000_000 - 301)  # future
    assert verify_signature(body, header, ACME_SECRET, tolerance_s=600, now=1_700_000_500)
    # a replayed signature with a new timestamp does not verify
    forged = header.replace("t=1700000000", "t=1700000005")
    assert not verify_signature(body, forged, ACME_SECRET, now=now)


def test_verify_accepts_any_matching_v1_and_rejects_malformed() -> None:
    body = b"{}"
    t = 1_700_000_000
    good = compute_signature(body, ACME_SECRET, t)
    rotated = f"t={t},v1={compute_signature(body, 'old-secret', t)},v1={good}"
    assert verify_signature(body, rotated, ACME_SECRET, now=t)
    assert verify_signature(body, rotated, "old-secret", now=t)
    for bad in ["", "garbage", f"v1={good}", f"t={t}", f"t=abc,v1={good}",
                f"t={t},v0={good}", f"t={t},v1="]:
        assert not verify_signature(body, bad, ACME_SECRET, now=t), bad
    assert not verify_signature(body, None, ACME_SECRET, now=t)
    assert not verify_signature(body, f"t={t},v1={good}", "", now=t)


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays = [backoff_delay(n, 10.0, 3600.0) for n in range(1, 12)]
    assert delays[:4] == [10.0, 20.0, 40.0, 80.0]
    assert all(b >= a for a, b in pairwise(delays))
    assert delays[-1] == 3600.0
    assert backoff_delay(1000, 10.0, 3600.0) == 3600.0


def test_next_attempt_gives_up_after_max_age() -> None:
    s = NotificationSettings(backoff_base_s=10.0, backoff_max_s=3600.0, max_age_s=86400.0)
    created = 1_000_000.0
    assert next_attempt_at(created, 1, created + 1, s, jitter=0) == created + 11
    assert next_attempt_at(created, 3, created + 100, s, jitter=0) == created + 140
    # never scheduled past the max age; at the max age: give up
    assert next_attempt_at(created, 30, created + 86000, s, jitter=0) == created + 86400
    assert next_attempt_at(created, 30, created + 86400, s, jitter=0) is None
    jittered = next_attempt_at(created, 1, created, s, jitter=0.1)
    assert jittered is not None and created + 10 <= jittered <= created + 11
    # ~24 h of retries with the defaults: a few dozen attempts, not thousands
    t, n = created, 0
    while (nxt := next_attempt_at(created, n + 1, t, s, jitter=0)) is not None:
        t, n = nxt, n + 1
    assert 20 <= n <= 40 and t == created + 86400


# --------------------------------------------------------------------------- enqueue rules


async def test_enqueue_rules_and_payload(store: Store, tmp_path: Path, store_url: str) -> None:
    config = make_config(tmp_path, store_url, "http://127.0.0.1:9/hooks",
                         "http://127.0.0.1:9/globex")
    doc = pay_doc("pay_rules")
    doc["_token"] = "tok_secret_internal"
    await store.insert_payment(doc, [])
    # the merchant's own request: not notified (acme has no notify_all)
    for source in ("merchant", "provider_response", "gateway"):
        assert await enqueue_status_change(store, config, doc, "pending", source) is None
    eid = await enqueue_status_change(store, config, doc, "pending", "webhook:stripe_main")
    assert eid == event_id("pay_rules", 1)
    again = await enqueue_status_change(store, config, doc, "pending", "webhook:stripe_main")
    assert again == eid
    stored = await store.list_notifications("pay_rules")
    assert len(stored) == 1  # deduplicated by the deterministic id
    ev = stored[0]
    assert ev["merchant_id"] == "acme" and ev["state"] == "pending"
    payload = ev["payload"]
    assert payload["id"] == eid and payload["object"] == "event"
    assert payload["type"] == "payment.authorized"
    assert payload["previous_status"] == "pending" and payload["source"] == "webhook:stripe_main"
    obj = payload["data"]["object"]
    assert obj["id"] == "pay_rules" and obj["status"] == "authorized"
    assert "_token" not in obj and "merchant_id" not in obj and "version" not in obj
    assert "tok_secret_internal" not in json.dumps(payload)
    # no status change (e.g. a refund settled): payment.updated
    doc["version"] = 2
    eid2 = await enqueue_status_change(store, config, doc, "authorized", "reconciliation")
    got = await store.get_notification(str(eid2))
    assert got is not None and got["type"] == "payment.updated"
    # globex has notify_all: its own requests are notified too
    gdoc = pay_doc("pay_globex", merchant="globex")
    await store.insert_payment(gdoc, [])
    assert await enqueue_status_change(store, config, gdoc, "pending", "merchant") is not None
    # a merchant without a webhook url: nothing
    no_url = make_config(tmp_path / "b", store_url, None)
    assert await enqueue_status_change(store, no_url, doc, "pending", "webhook:x") is None


async def test_outbox_record_takes_source_from_audit_events(
    store: Store, tmp_path: Path, store_url: str
) -> None:
    config = make_config(tmp_path, store_url, "http://127.0.0.1:9/hooks")
    before = pay_doc("pay_mut", status="unknown")
    after = {**before, "status": "authorized"}
    recon = [audit("status_changed", "reconciliation", from_status="unknown",
                   to_status="authorized")]
    own = [audit("attempt_finished", "provider_response"),
           audit("status_changed", "provider_response", from_status="unknown",
                 to_status="authorized")]
    assert notifications.change_source(own) == "provider_response"
    # the merchant's own request (no notify_all): nothing; unchanged doc: nothing
    seen = notifications.visible_state(before)
    assert notifications.outbox_record(config, seen, after, own, 2) is None
    assert notifications.outbox_record(config, seen, dict(before), recon, 2) is None
    record = notifications.outbox_record(config, seen, after, recon, 2)
    assert record is not None and record["id"] == event_id("pay_mut", 2)
    assert record["payload"]["source"] == "reconciliation"
    assert record["payload"]["previous_status"] == "unknown"


async def test_a_write_carries_its_notification_until_it_is_in_the_outbox(
    store: Store, tmp_path: Path, store_url: str
) -> None:
    """The notification is stored in the same write as the change; a crash before it is
    moved to the outbox leaves it on the payment, and the next reconciliation pass (or
    the next write) moves it. Either way exactly one event."""
    from gateway.payment_writer import PaymentWriter
    from gateway.store import PaymentQuery

    config = make_config(tmp_path, store_url, "http://127.0.0.1:9/hooks")
    doc = pay_doc("pay_carry", status="unknown")
    await store.insert_payment(doc, [])

    def resolve(d: dict[str, Any]) -> list[dict[str, Any]]:
        d["status"] = "authorized"
        return [audit("status_changed", "reconciliation", from_status="unknown",
                      to_status="authorized")]

    # the crash: the change and its record are written, the move never happens
    stored = await store.get_payment("pay_carry")
    assert stored is not None
    before = notifications.visible_state(stored)
    events = resolve(stored)
    record = notifications.outbox_record(config, before, stored, events, stored["version"] + 1)
    assert record is not None
    stored["_outbox"] = [record]
    stored["needs_reconcile"] = True
    assert await store.update_payment(stored, stored["version"], events)
    assert await store.list_notifications("pay_carry") == []
    visible = await store.query_payments(PaymentQuery(statuses=["authorized"],
                                                      updated_before=time.time() + 10))
    assert [d["id"] for d in visible] == ["pay_carry"]  # reconciliation will see it

    moved = await notifications.flush_outbox(store, stored)
    assert moved["_outbox"] == [] and moved["needs_reconcile"] is False
    [event] = await store.list_notifications("pay_carry")
    assert event["id"] == record["id"] and event["payload"]["source"] == "reconciliation"
    again = await notifications.flush_outbox(store, {**moved, "_outbox": [record]})
    assert again["_outbox"] == []
    assert len(await store.list_notifications("pay_carry")) == 1  # idempotent by event id

    # the normal path: the writer stores the change and its notification in one write
    def void(d: dict[str, Any]) -> list[dict[str, Any]]:
        d["status"] = "voided"
        return [audit("status_changed", "webhook:stripe_main", from_status="authorized",
                      to_status="voided")]

    done = await PaymentWriter(store, config).mutate("pay_carry", void)
    assert done["_outbox"] == []
    assert len(await store.list_notifications("pay_carry")) == 2


# --------------------------------------------------------------------------- worker


async def test_worker_retries_until_endpoint_accepts(
    store: Store, tmp_path: Path, store_url: str, receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(tmp_path, store_url, receiver.url)
    ids = ["evt_w1", "evt_w2", "evt_w3"]
    for i, eid in enumerate(ids):
        await store.enqueue_notification(outbox_event(eid, pid=f"pay_{i}"))
    worker = NotificationWorker(store, config, jitter=0)
    await worker.start()
    try:
        docs = await wait_for(lambda: delivered(store, *ids), WAIT_S)
    finally:
        await worker.stop()
    for doc in docs:
        statuses = [a.get("status") for a in doc["attempts"]]
        assert statuses == [500, 500, 500, 200], doc["attempts"]
        assert all(isinstance(a["duration_ms"], int) for a in doc["attempts"])
        assert doc["delivered_at"] == doc["attempts"][-1]["at"]
        gaps = [b["at"] - a["at"] for a, b in pairwise(doc["attempts"])]
        # Each wait is at least its backoff (0.1, 0.2, 0.4 s). Only these lower bounds
        # hold on a loaded machine: a late poll can stretch any gap (CI once saw 0.70 s
        # before 0.22 s); the schedule's growth itself is checked exactly on
        # next_attempt_at above.
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4, gaps
    assert receiver.accepted == Counter(dict.fromkeys(ids, 1))
    assert receiver.counts == Counter(dict.fromkeys(ids, 4))
    for body, hdrs in receiver.requests:
        assert verify_signature(body, hdrs[SIGNATURE_HEADER], ACME_SECRET)
        assert not verify_signature(body, hdrs[SIGNATURE_HEADER], GLOBEX_SECRET)
        event = json.loads(body)
        assert event["id"] == hdrs[EVENT_ID_HEADER]
        assert event["data"]["object"]["status"] == "captured"
        assert hdrs["Content-Type"] == "application/json"
    for record in caplog.records:
        assert ACME_SECRET not in str(record.__dict__)


async def test_worker_gives_up_after_max_age(store: Store, tmp_path: Path,
                                             store_url: str) -> None:
    down = Receiver()
    await down.start()
    url = down.url
    await down.stop()  # nothing listens there any more: connection refused
    config = make_config(tmp_path, store_url, url,
                         notifications={"max_age_s": 0.5, "backoff_base_s": 0.05})
    await store.enqueue_notification(outbox_event("evt_gone"))
    worker = NotificationWorker(store, config)
    await worker.start()

    async def failed() -> dict[str, Any] | None:
        doc = await store.get_notification("evt_gone")
        return doc if doc is not None and doc["state"] == "failed" else None

    try:
        doc = await wait_for(failed, WAIT_S)
    finally:
        await worker.stop()
    assert len(doc["attempts"]) >= 2
    assert all(a["error"].startswith("connection error") for a in doc["attempts"])
    assert doc["attempts"][-1]["at"] <= doc["created_at"] + 0.5 + 1.0
    assert await store.claim_due_notifications(time.time() + 10**6, 10, 5, "x") == []


async def test_two_replicas_deliver_each_event_once(store: Store, tmp_path: Path,
                                                    store_url: str) -> None:
    ok = Receiver(fail_first=0)
    await ok.start()
    other = make_store(store_url)
    await other.open()
    config = make_config(tmp_path, store_url, ok.url)
    ids = [f"evt_r{i:02d}" for i in range(25)]
    for eid in ids:
        await store.enqueue_notification(outbox_event(eid))
    workers = [NotificationWorker(store, config, owner="replica-a"),
               NotificationWorker(other, config, owner="replica-b")]
    try:
        for w in workers:
            await w.start()
        await wait_for(lambda: delivered(store, *ids), WAIT_S)
    finally:
        for w in workers:
            await w.stop()
        await other.close()
        await ok.stop()
    assert ok.counts == Counter(dict.fromkeys(ids, 1))


# --------------------------------------------------------------------------- in the app


@pytest.fixture
async def gw_app(store_url: str, tmp_path: Path, receiver: Receiver, aiohttp_client):
    config = make_config(tmp_path, store_url, receiver.url, receiver.url + "?m=globex")
    app = create_app(config)
    client = await aiohttp_client(app)
    return client, app


async def test_webhook_change_is_notified_and_visible(gw_app, receiver: Receiver) -> None:
    client, app = gw_app
    store: Store = app[STORE]
    r = await client.post("/v1/payments", data=json.dumps(payment_body()),
                          headers=headers(idem="ntf-1"))
    pay = await r.json()
    assert r.status == 201 and pay["status"] == "authorized", pay
    assert await store.list_notifications(pay["id"]) == []  # acme's own request
    doc = await store.get_payment(pay["id"])
    assert doc is not None
    hook = WebhookEvent(provider_type="stripe", event_id="evt_stripe_ntf_1",
                        kind="payment_intent.succeeded", occurred_at=None,
                        payment_reference=doc["provider_reference"],
                        merchant_reference=pay["id"], target="payment",
                        status=PaymentStatus.CAPTURED, amount=1000)
    writer = app[ORCHESTRATOR].writer  # the app's store and config
    result, _ = await apply_webhook_event(writer, "stripe_main", hook)
    assert result == "applied"
    events = await store.list_notifications(pay["id"])
    assert len(events) == 1
    eid = events[0]["id"]
    assert events[0]["payload"]["type"] == "payment.captured"
    assert events[0]["payload"]["source"] == "webhook:stripe_main"
    # a duplicate / stale webhook changes nothing and notifies nothing
    stale = WebhookEvent(provider_type="stripe", event_id="evt_stripe_ntf_0",
                         kind="payment_intent.amount_capturable_updated", occurred_at=None,
                         payment_reference=doc["provider_reference"],
                         merchant_reference=pay["id"], target="payment",
                         status=PaymentStatus.AUTHORIZED, amount=1000)
    assert (await apply_webhook_event(writer, "stripe_main", stale))[0] == "stale"
    assert len(await store.list_notifications(pay["id"])) == 1

    async def api_delivered() -> dict[str, Any] | None:
        resp = await client.get(f"/v1/events/{eid}", headers=headers())
        assert resp.status == 200
        body = await resp.json()
        return body if body["delivery"]["state"] == "delivered" else None

    ev = await wait_for(api_delivered, WAIT_S)
    assert ev["id"] == eid and ev["object"] == "event" and ev["type"] == "payment.captured"
    assert ev["data"]["object"]["status"] == "captured"
    assert ev["data"]["object"]["amount_captured"] == 1000
    assert [a.get("status") for a in ev["delivery"]["attempts"]] == [500, 500, 500, 200]
    assert all(a["at"].endswith("Z") for a in ev["delivery"]["attempts"])
    assert ev["delivery"]["delivered_at"] is not None
    assert ev["delivery"]["next_attempt_at"] is None
    assert "lease_owner" not in json.dumps(ev)
    # the merchant received it, signed
    bodies = [b for b, h in receiver.requests if h[EVENT_ID_HEADER] == eid]
    assert len(bodies) == 4
    assert all(verify_signature(b, h[SIGNATURE_HEADER], ACME_SECRET)
               for b, h in receiver.requests if h[EVENT_ID_HEADER] == eid)
    # listing by payment
    resp = await client.get("/v1/events", params={"payment_id": pay["id"]}, headers=headers())
    listing = await resp.json()
    assert resp.status == 200 and [e["id"] for e in listing["data"]] == [eid]


async def test_notify_all_merchant_gets_its_own_changes(gw_app, receiver: Receiver) -> None:
    client, app = gw_app
    store: Store = app[STORE]
    r = await client.post("/v1/payments", data=json.dumps(payment_body()),
                          headers=headers(GLOBEX_KEY, idem="ntf-g"))
    pay = await r.json()
    assert r.status == 201, pay
    # the orchestrator call site is the lead's; simulate it as documented
    doc = await store.get_payment(pay["id"])
    assert doc is not None
    eid = await notifications.enqueue_status_change(store, app[CONFIG], doc, "pending",
                                                    "provider_response")
    assert eid is not None
    await wait_for(lambda: delivered(store, str(eid)), WAIT_S)
    got = [b for b, h in receiver.requests if h[EVENT_ID_HEADER] == eid]
    assert got and all(json.loads(b)["type"] == "payment.authorized" for b in got)


async def test_events_api_auth_and_isolation(gw_app) -> None:
    client, app = gw_app
    store: Store = app[STORE]
    await store.insert_payment(pay_doc("pay_iso"), [audit("payment_created", "merchant")])
    far = time.time() + 3600  # not due: the worker leaves it alone
    ev = outbox_event("evt_iso", pid="pay_iso")
    ev["next_attempt_at"] = far
    await store.enqueue_notification(ev)
    r = await client.get("/v1/events/evt_iso", headers=headers())
    body = await r.json()
    assert r.status == 200, body
    assert body["delivery"]["state"] == "pending" and body["delivery"]["attempts"] == []
    assert body["delivery"]["next_attempt_at"].endswith("Z")
    for path in ("/v1/events/evt_iso", "/v1/events/evt_missing"):
        r = await client.get(path, headers=headers(GLOBEX_KEY) if "iso" in path else headers())
        err = await r.json()
        assert r.status == 404 and err["error"]["type"] == "not_found", err
    r = await client.get("/v1/events/evt_iso")
    assert r.status == 401
    r = await client.get("/v1/events", params={"payment_id": "pay_iso"},
                         headers=headers(GLOBEX_KEY))
    assert r.status == 404
    # without payment_id: the merchant's events (SPEC 3.2), never another merchant's
    r = await client.get("/v1/events", headers=headers())
    assert r.status == 200 and [e["id"] for e in (await r.json())["data"]] == ["evt_iso"]
    r = await client.get("/v1/events", headers=headers(GLOBEX_KEY))
    assert r.status == 200 and (await r.json())["data"] == []
    r = await client.get("/v1/events", params={"payment_id": "pay_iso"}, headers=headers())
    assert r.status == 200 and [e["id"] for e in (await r.json())["data"]] == ["evt_iso"]


async def test_app_shutdown_stops_worker(store_url: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, store_url, "http://127.0.0.1:9/hooks")
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    tasks_before = {t.get_name() for t in asyncio.all_tasks()}
    assert "notification-worker" in tasks_before
    await runner.cleanup()
    assert "notification-worker" not in {t.get_name() for t in asyncio.all_tasks()}
