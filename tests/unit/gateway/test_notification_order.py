"""Ordered, re-deliverable merchant notifications (#13 item 2, SPEC 3.2), on both stores:
the claim hands out a payment's events in sequence order (one in flight per payment),
``sequence`` / ``previous_sequence`` chain a payment's events, ``POST
/v1/events/{id}/redeliver`` queues one again, ``GET /v1/events`` filters by payment, type
and delivery state and pages through a merchant's events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import STORE
from gateway.notification_signing import EVENT_ID_HEADER
from gateway.notifications import NotificationWorker
from gateway.store import EventSearch, Store
from tests.gateway_harness import GLOBEX_KEY, headers, payment_body, wait_for
from tests.unit.gateway.test_notifications import (
    WAIT_S,
    Receiver,
    delivered,
    make_config,
    outbox_event,
)

OWNER = "worker-a"


async def claim_ids(store: Store, now: float | None = None) -> list[str]:
    got = await store.claim_due_notifications(time.time() if now is None else now, 50, 30,
                                              OWNER)
    return [str(e["id"]) for e in got]


async def settle(store: Store, eid: str, ok: bool, retry_in: float | None = 0.0) -> None:
    nxt = None if ok or retry_in is None else time.time() + retry_in
    await store.record_notification_attempt(eid, {"at": time.time(), "status": 200 if ok
                                                   else 500}, ok, nxt, owner=OWNER)


# --------------------------------------------------------------------------- the claim


async def test_a_payments_events_are_claimed_one_at_a_time_in_order(store: Store) -> None:
    for eid in ("evt_o1", "evt_o2", "evt_o3"):
        await store.enqueue_notification(outbox_event(eid, pid="pay_o"))
    await store.enqueue_notification(outbox_event("evt_x1", pid="pay_x"))
    assert sorted(await claim_ids(store)) == ["evt_o1", "evt_x1"]  # heads of each payment
    assert await claim_ids(store) == []  # both in flight; the later ones wait
    await settle(store, "evt_o1", ok=True)
    assert await claim_ids(store) == ["evt_o2"]
    await settle(store, "evt_o2", ok=False, retry_in=None)  # given up: failed
    assert (await store.get_notification("evt_o2") or {})["state"] == "failed"
    assert await claim_ids(store) == ["evt_o3"]


async def test_a_head_in_backoff_holds_the_later_events_until_it_is_delivered(
        store: Store) -> None:
    for eid in ("evt_b1", "evt_b2"):
        await store.enqueue_notification(outbox_event(eid, pid="pay_b"))
    assert await claim_ids(store) == ["evt_b1"]
    await settle(store, "evt_b1", ok=False, retry_in=3600)  # next try in an hour
    far = time.time() + 60
    assert await claim_ids(store, now=far) == []  # evt_b2 is due but waits behind it
    # the merchant asks for it now: it goes, then the next one is due at once
    requeued = await store.requeue_notification("evt_b1", time.time())
    assert requeued is not None and requeued["state"] == "pending"
    assert await claim_ids(store) == ["evt_b1"]
    await settle(store, "evt_b1", ok=True)
    assert await claim_ids(store) == ["evt_b2"]


# --------------------------------------------------------------------------- requeue


async def test_requeue_puts_a_delivered_or_failed_event_back_and_leaves_a_leased_one(
        store: Store) -> None:
    assert await store.requeue_notification("evt_none", time.time()) is None
    await store.enqueue_notification(outbox_event("evt_r1", pid="pay_r"))
    await store.enqueue_notification(outbox_event("evt_r2", pid="pay_r2"))
    assert sorted(await claim_ids(store)) == ["evt_r1", "evt_r2"]
    leased = await store.requeue_notification("evt_r2", time.time())
    assert leased is not None and leased["lease_owner"] == OWNER  # in flight: untouched
    await settle(store, "evt_r1", ok=True)
    now = time.time()
    doc = await store.requeue_notification("evt_r1", now)
    assert doc is not None
    assert (doc["state"], doc["requeued_at"], doc["next_attempt_at"]) == ("pending", now, now)
    assert [a["status"] for a in doc["attempts"]] == [200]  # history kept
    assert await claim_ids(store) == ["evt_r1"]
    stored = await store.get_notification("evt_r1")
    assert stored is not None and stored["state"] == "pending"


# --------------------------------------------------------------------------- listing


async def test_a_merchants_events_page_newest_first_with_filters(store: Store) -> None:
    base = time.time()
    for i in range(25):
        ev = outbox_event(f"evt_l{i:02d}", pid=f"pay_l{i % 5}", created=base + i)
        if i % 3 == 0:
            ev["type"] = ev["payload"]["type"] = "payment.refunded"
        await store.enqueue_notification(ev)
    await store.enqueue_notification(outbox_event("evt_g1", merchant="globex", pid="pay_g"))
    seen: list[str] = []
    after: str | None = None
    while True:
        page, more = await store.search_notifications(EventSearch(
            "acme", limit=10, starting_after=after))
        seen += [str(e["id"]) for e in page]
        if not more:
            break
        after = seen[-1]
    assert seen == [f"evt_l{i:02d}" for i in reversed(range(25))]
    refunded, more = await store.search_notifications(EventSearch(
        "acme", limit=100, type="payment.refunded"))
    assert [e["id"] for e in refunded] == [f"evt_l{i:02d}" for i in (24, 21, 18, 15, 12, 9,
                                                                        6, 3, 0)]
    assert not more
    # delivery state moves an event between filters
    assert "evt_l00" in await claim_ids(store)
    await settle(store, "evt_l00", ok=True)
    done, _ = await store.search_notifications(EventSearch("acme", state="delivered"))
    assert [e["id"] for e in done] == ["evt_l00"]
    pending, _ = await store.search_notifications(EventSearch("acme", limit=100,
                                                              state="pending"))
    assert "evt_l00" not in [e["id"] for e in pending] and len(pending) == 24
    both, _ = await store.search_notifications(EventSearch(
        "acme", state="delivered", type="payment.refunded"))
    assert [e["id"] for e in both] == ["evt_l00"]
    await store.requeue_notification("evt_l00", time.time())
    done, _ = await store.search_notifications(EventSearch("acme", state="delivered"))
    assert done == []
    # another merchant's event is never a cursor, nor listed
    assert await store.search_notifications(EventSearch(
        "acme", starting_after="evt_g1")) == ([], False)
    globex, _ = await store.search_notifications(EventSearch("globex"))
    assert [e["id"] for e in globex] == ["evt_g1"]


# --------------------------------------------------------------------------- end to end


@pytest.fixture
async def flaky() -> AsyncIterator[Receiver]:
    r = Receiver(fail_first=2)  # every event fails twice before it is accepted
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def gw(store_url: str, tmp_path: Path, flaky: Receiver, aiohttp_client
             ) -> tuple[TestClient, web.Application]:
    config = make_config(tmp_path, store_url, flaky.url, flaky.url + "?m=globex",
                         acme_notify_all=True)
    app = create_app(config)
    return await aiohttp_client(app), app


async def _four_changes(client: TestClient, app: web.Application) -> tuple[str, list[str]]:
    """A payment changed four times (acme has notify_all): authorized, captured, then two
    partial refunds. Returns its id and its event ids in queue order."""
    r = await client.post("/v1/payments", data=json.dumps(payment_body()),
                          headers=headers(idem="ord-1"))
    pay = await r.json()
    assert r.status == 201 and pay["status"] == "authorized", pay
    r = await client.post(f"/v1/payments/{pay['id']}/capture", data=json.dumps({}),
                          headers=headers(idem="ord-cap"))
    assert r.status == 200, await r.text()
    for n, amount in ((1, 400), (2, 600)):
        r = await client.post(f"/v1/payments/{pay['id']}/refunds",
                              data=json.dumps({"amount": amount}),
                              headers=headers(idem=f"ord-ref-{n}"))
        assert r.status == 201, await r.text()
    events = await app[STORE].list_notifications(pay["id"])
    assert len(events) >= 4, [e["type"] for e in events]
    return pay["id"], [str(e["id"]) for e in events]


async def test_a_flaky_endpoint_gets_a_payments_events_in_sequence_order(
        gw: tuple[TestClient, web.Application], flaky: Receiver) -> None:
    client, app = gw
    pid, ids = await _four_changes(client, app)
    store: Store = app[STORE]
    await wait_for(lambda: delivered(store, *ids), WAIT_S)
    # each event's first delivery attempt came after the previous event was accepted
    order = [(json.loads(b)["id"], json.loads(b)) for b, _ in flaky.requests
             if json.loads(b)["data"]["object"]["id"] == pid]
    firsts = [next(i for i, (eid, _) in enumerate(order) if eid == x) for x in ids]
    accepted = []
    for x in ids:
        tries = [i for i, (eid, _) in enumerate(order) if eid == x]
        assert len(tries) == 3, (x, tries)  # two refusals, then accepted
        accepted.append(tries[-1])
    for earlier_done, later_first in zip(accepted, firsts[1:], strict=False):
        assert later_first > earlier_done, (accepted, firsts)
    bodies = [next(body for eid, body in order if eid == x) for x in ids]
    sequences = [b["sequence"] for b in bodies]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert bodies[0]["previous_sequence"] is None
    for prev, cur in pairwise(bodies):
        assert cur["previous_sequence"] == prev["sequence"]
    final = await store.get_payment(pid)
    assert final is not None and sequences[-1] <= final["version"]


async def test_redeliver_and_the_event_list_through_the_api(
        gw: tuple[TestClient, web.Application], flaky: Receiver) -> None:
    client, app = gw
    pid, ids = await _four_changes(client, app)
    store: Store = app[STORE]
    await wait_for(lambda: delivered(store, *ids), WAIT_S)
    first = ids[0]
    before = flaky.counts[first]

    r = await client.post(f"/v1/events/{first}/redeliver", headers=headers(idem="rd-1"))
    body = await r.json()
    assert r.status == 200 and body["id"] == first, body
    assert body["delivery"]["state"] == "pending"

    async def sent_again() -> dict[str, Any] | None:
        got = await store.get_notification(first)
        return got if got is not None and got["state"] == "delivered" else None

    again = await wait_for(sent_again, WAIT_S)
    assert flaky.counts[first] == before + 1  # the endpoint accepts it now
    assert again["requeued_at"] <= again["delivered_at"]
    # the same key is a replay: the event's current state, not queued again
    r = await client.post(f"/v1/events/{first}/redeliver", headers=headers(idem="rd-1"))
    replay = await r.json()
    assert r.status == 200 and r.headers.get("Idempotent-Replayed") == "true"
    assert replay["delivery"]["state"] == "delivered"
    await asyncio.sleep(0)  # nothing new was queued
    assert (await store.get_notification(first) or {})["state"] == "delivered"
    # refusals
    r = await client.post(f"/v1/events/{first}/redeliver", headers=headers())
    assert r.status == 400 and (await r.json())["error"]["code"] == "idempotency_key_missing"
    r = await client.post(f"/v1/events/{first}/redeliver",
                          headers=headers(GLOBEX_KEY, idem="rd-g"))
    assert r.status == 404
    r = await client.post("/v1/events/evt_nope/redeliver", headers=headers(idem="rd-2"))
    assert r.status == 404
    r = await client.post(f"/v1/events/{first}/redeliver", data=b'{"x": 1}',
                          headers=headers(idem="rd-3"))
    assert r.status == 400

    # listing: by payment (oldest first), by type and delivery, and merchant-wide pages
    r = await client.get("/v1/events", params={"payment_id": pid}, headers=headers())
    assert [e["id"] for e in (await r.json())["data"]] == ids
    r = await client.get("/v1/events", params={"payment_id": pid, "type": "payment.captured"},
                         headers=headers())
    assert [e["type"] for e in (await r.json())["data"]] == ["payment.captured"]
    r = await client.get("/v1/events", params={"delivery": "delivered", "limit": "2"},
                         headers=headers())
    page = await r.json()
    assert r.status == 200 and [e["id"] for e in page["data"]] == list(reversed(ids))[:2]
    assert page["has_more"] is (len(ids) > 2)
    if page["has_more"]:
        r = await client.get("/v1/events", params={"delivery": "delivered",
                                                   "starting_after": page["data"][-1]["id"]},
                             headers=headers())
        assert [e["id"] for e in (await r.json())["data"]] == list(reversed(ids))[2:]
    r = await client.get("/v1/events", params={"delivery": "failed"}, headers=headers())
    assert (await r.json())["data"] == []
    r = await client.get("/v1/events", headers=headers(GLOBEX_KEY))
    assert [e["id"] for e in (await r.json())["data"]] == []
    for params, param in [({"delivery": "lost"}, "delivery"), ({"limit": "0"}, "limit"),
                          ({"limit": "101"}, "limit"), ({"limit": "x"}, "limit"),
                          ({"colour": "red"}, "colour"), ({"type": ""}, "type"),
                          ({"starting_after": "evt_nope"}, "starting_after"),
                          ({"payment_id": pid, "limit": "5"}, "limit")]:
        r = await client.get("/v1/events", params=params, headers=headers())
        err = (await r.json())["error"]
        assert (r.status, err["param"]) == (400, param), (params, err)
    r = await client.get("/v1/events", params={"payment_id": pid}, headers=headers(GLOBEX_KEY))
    assert r.status == 404


async def test_the_worker_delivers_heads_of_many_payments_concurrently(
        store: Store, tmp_path: Path, store_url: str) -> None:
    """Ordering is per payment: one payment's slow queue never holds another's."""
    ok = Receiver()
    await ok.start()
    try:
        config = make_config(tmp_path, store_url, ok.url)
        for p in range(5):
            for n in range(3):
                await store.enqueue_notification(outbox_event(f"evt_c{p}{n}", pid=f"pay_c{p}"))
        worker = NotificationWorker(store, config, jitter=0)
        await worker.start()
        try:
            ids = [f"evt_c{p}{n}" for p in range(5) for n in range(3)]
            await wait_for(lambda: delivered(store, *ids), WAIT_S)
        finally:
            await worker.stop()
        sent = [h[EVENT_ID_HEADER] for _, h in ok.requests]
        for p in range(5):
            mine = [e for e in sent if e.startswith(f"evt_c{p}")]
            assert mine == [f"evt_c{p}{n}" for n in range(3)], sent
    finally:
        await ok.stop()


async def test_an_sqlite_outbox_without_listing_columns_is_upgraded_on_open(
        tmp_path: Path) -> None:
    """A database of schema version 1 (notifications without merchant_id / type)."""
    import sqlite3

    from gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore

    path = tmp_path / "v1.db"
    store = SQLiteStore(path)
    await store.open()
    await store.enqueue_notification(outbox_event("evt_old", pid="pay_old"))
    await store.close()
    conn = sqlite3.connect(path)
    for index in ("notifications_merchant", "notifications_merchant_state",
                  "notifications_merchant_type"):
        conn.execute(f"DROP INDEX {index}")
    conn.execute("ALTER TABLE notifications DROP COLUMN merchant_id")
    conn.execute("ALTER TABLE notifications DROP COLUMN type")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        found, more = await store.search_notifications(EventSearch("acme"))
        assert [e["id"] for e in found] == ["evt_old"] and not more
        found, _ = await store.search_notifications(EventSearch("acme",
                                                                type="payment.captured"))
        assert [e["id"] for e in found] == ["evt_old"]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        plan = " ".join(str(r[-1]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM notifications WHERE merchant_id = 'acme'"
            " AND state = 'failed' ORDER BY seq DESC LIMIT 21"))
        assert "notifications_merchant_state" in plan, plan
    finally:
        conn.close()


async def test_openapi_describes_the_events_as_they_are_sent_and_listed(
        gw: tuple[TestClient, web.Application], flaky: Receiver) -> None:
    """/openapi.json's Event (the POSTed body, with sequence / previous_sequence),
    EventWithDelivery (GET /v1/events/{id}, redeliver) and EventList (GET /v1/events)
    validate what the gateway really sends and answers."""
    from jsonschema import Draft202012Validator

    from tests.fixtures.provider_specs.schemas import to_json_schema

    client, app = gw
    pid, ids = await _four_changes(client, app)
    await wait_for(lambda: delivered(app[STORE], *ids), WAIT_S)
    spec = await (await client.get("/openapi.json")).json()
    components = to_json_schema(spec["components"])

    def errors(name: str, value: Any) -> list[str]:
        schema = {"components": components, "$ref": f"#/components/schemas/{name}"}
        return [e.message for e in Draft202012Validator(schema).iter_errors(value)]

    sent = [json.loads(b) for b, _ in flaky.requests]
    assert {b["id"] for b in sent} >= set(ids)
    for body in sent:
        assert errors("Event", body) == [], body
    assert errors("Event", {**sent[0], "sequence": None}) != []  # the schema can fail
    assert errors("Event", {k: v for k, v in sent[0].items() if k != "sequence"}) != []
    one = await (await client.get(f"/v1/events/{ids[0]}", headers=headers())).json()
    assert errors("EventWithDelivery", one) == [] and one["delivery"]["state"] == "delivered"
    assert errors("EventWithDelivery", {**one, "delivery": {"state": "lost"}}) != []
    for params in ({"payment_id": pid}, {"limit": "2"}):
        page = await (await client.get("/v1/events", params=params, headers=headers())).json()
        assert errors("EventList", page) == [] and page["data"], page
    r = await client.post(f"/v1/events/{ids[0]}/redeliver", headers=headers(idem="oa-rd"))
    assert r.status == 200 and errors("EventWithDelivery", await r.json()) == []
    paths = spec["paths"]
    for path, method, name in (("/v1/events/{event_id}", "get", "EventWithDelivery"),
                               ("/v1/events/{event_id}/redeliver", "post", "EventWithDelivery"),
                               ("/v1/events", "get", "EventList")):
        content = paths[path][method]["responses"]["200"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{name}"}
