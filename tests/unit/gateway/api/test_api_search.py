"""GET /v1/payments, search and list (SPEC 3.1): real gateway app, real store (SQLite and
Redis), payments made through the API and the in-process Stripe simulator, or written
straight to the store where many are needed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import STORE
from gateway.config import load_config
from gateway.model import iso, new_payment
from gateway.store import Store
from gateway.store.redis import doc_key
from tests.gateway_harness import GLOBEX_KEY, headers, payment_body, write_config

BASE = 1_800_000_000.0  # created_at of the payments written straight to the store


@dataclass
class Gateway:
    client: TestClient

    @property
    def store(self) -> Store:
        return self.client.server.app[STORE]

    async def create(self, idem: str, key: str | None = None, **body: Any) -> dict[str, Any]:
        kw = {"key": key} if key else {}
        r = await self.client.post("/v1/payments", data=json.dumps(payment_body(**body)),
                                   headers=headers(idem=idem, **kw))
        assert r.status == 201, await r.text()
        return dict(await r.json())

    async def list(self, params: Any = None, key: str | None = None,
                   status: int = 200) -> dict[str, Any]:
        kw = {"key": key} if key else {}
        r = await self.client.get("/v1/payments", params=params, headers=headers(**kw))
        body = await r.json()
        assert r.status == status, body
        return dict(body)

    async def ids(self, params: Any = None, key: str | None = None) -> tuple[list[str], bool]:
        page = await self.list(params, key)
        return [p["id"] for p in page["data"]], page["has_more"]

    async def bad(self, params: Any, param: str | None, code: str | None = None) -> None:
        err = (await self.list(params, status=400))["error"]
        assert err["type"] == "invalid_request", err
        assert err.get("param") == param, err
        if code:
            assert err["code"] == code, err

    async def put(self, pid: str, created_at: float, merchant: str = "acme",
                  **fields: Any) -> None:
        """A payment written straight to the store (the way the gateway stores one)."""
        doc = new_payment(pid, merchant, payment_body(), "fp")
        doc.update({"created_at": created_at, "updated_at": created_at,
                    "status": "authorized", "provider": "stripe_main", **fields})
        await self.store.insert_payment(doc, [])


@pytest.fixture
async def gw(store_url: str, tmp_path: Path, aiohttp_client) -> AsyncIterator[Gateway]:
    app = create_app(load_config(write_config(tmp_path, store_url)))
    yield Gateway(await aiohttp_client(app))


async def test_list_is_newest_first_and_each_item_is_the_payment_object(gw: Gateway) -> None:
    made = [await gw.create(f"list-{i}", reference=f"order-{i}") for i in range(3)]
    page = await gw.list()
    assert set(page) == {"object", "data", "has_more"}
    assert page["object"] == "list" and page["has_more"] is False
    assert [p["id"] for p in page["data"]] == [p["id"] for p in reversed(made)]
    for item in page["data"]:
        r = await gw.client.get(f"/v1/payments/{item['id']}", headers=headers())
        assert item == await r.json()  # the same projection as GET /v1/payments/{id}
        assert not any(k.startswith("_") for k in item)


async def test_another_merchants_payments_are_invisible(gw: Gateway) -> None:
    mine = await gw.create("mine", reference="shared-ref")
    theirs = await gw.create("theirs", key=GLOBEX_KEY, reference="shared-ref")
    assert await gw.ids() == ([mine["id"]], False)
    assert await gw.ids({"reference": "shared-ref"}) == ([mine["id"]], False)
    assert await gw.ids(key=GLOBEX_KEY) == ([theirs["id"]], False)
    assert await gw.ids({"status": "authorized"}, key=GLOBEX_KEY) == ([theirs["id"]], False)
    # another merchant's id as a cursor answers exactly like an unknown one
    await gw.bad({"starting_after": theirs["id"]}, "starting_after", "resource_missing")
    await gw.bad({"starting_after": "pay_nosuchpayment"}, "starting_after", "resource_missing")


async def test_status_filter_follows_a_capture(gw: Gateway) -> None:
    a = await gw.create("cap-a")
    b = await gw.create("cap-b")
    assert await gw.ids({"status": "authorized"}) == ([b["id"], a["id"]], False)
    r = await gw.client.post(f"/v1/payments/{a['id']}/capture", data="{}",
                             headers=headers(idem="cap-a-1"))
    assert r.status == 200 and (await r.json())["status"] == "captured"
    assert await gw.ids({"status": "captured"}) == ([a["id"]], False)
    assert await gw.ids({"status": "authorized"}) == ([b["id"]], False)
    page = await gw.list({"status": "captured"})
    assert page["data"][0]["amount_captured"] == 1000  # the current state


async def test_every_filter_and_combinations(gw: Gateway) -> None:
    rows = [("pay_1", "authorized", "stripe_main", "o-1"), ("pay_2", "captured", "stripe_main",
            "o-2"), ("pay_3", "authorized", "adyen_eu", "o-1"), ("pay_4", "declined", None, "o-3"),
            ("pay_5", "captured", "adyen_eu", "o-1")]
    for i, (pid, status, provider, ref) in enumerate(rows):
        await gw.put(pid, BASE + i, status=status, provider=provider, reference=ref)
    await gw.put("pay_g", BASE + 10, merchant="globex", reference="o-1")
    assert await gw.ids({"reference": "o-1"}) == (["pay_5", "pay_3", "pay_1"], False)
    assert await gw.ids({"status": "captured"}) == (["pay_5", "pay_2"], False)
    assert await gw.ids({"provider": "adyen_eu"}) == (["pay_5", "pay_3"], False)
    assert await gw.ids({"provider": "nobody"}) == ([], False)
    assert await gw.ids({"created[gte]": iso(BASE + 2)}) == (["pay_5", "pay_4", "pay_3"], False)
    assert await gw.ids({"created[lt]": iso(BASE + 2)}) == (["pay_2", "pay_1"], False)
    assert await gw.ids({"created[gte]": "2027-01-15T08:00:01+00:00",  # BASE + 1
                         "created[lt]": "2027-01-15T10:00:04+02:00"}) == (
        ["pay_4", "pay_3", "pay_2"], False)
    assert await gw.ids({"created[gte]": "2027-01-15"}) == (
        ["pay_5", "pay_4", "pay_3", "pay_2", "pay_1"], False)
    assert await gw.ids({"created[lt]": "2027-01-15"}) == ([], False)
    assert await gw.ids({"reference": "o-1", "status": "authorized"}) == (
        ["pay_3", "pay_1"], False)
    assert await gw.ids({"reference": "o-1", "provider": "adyen_eu", "status": "captured",
                         "created[gte]": iso(BASE + 4)}) == (["pay_5"], False)
    assert await gw.ids({"status": "captured", "provider": "stripe_main", "limit": "1"}) == (
        ["pay_2"], False)
    assert await gw.ids({"reference": "o-1", "limit": "2"}) == (["pay_5", "pay_3"], True)
    assert await gw.ids({"reference": "o-1", "limit": "2", "starting_after": "pay_3"}) == (
        ["pay_1"], False)


async def test_limit_bounds_and_default(gw: Gateway) -> None:
    for i in range(101):
        await gw.put(f"pay_{i:03d}", BASE + i)
    assert len((await gw.list())["data"]) == 20
    assert (await gw.list())["has_more"] is True
    assert await gw.ids({"limit": "1"}) == (["pay_100"], True)
    page = await gw.list({"limit": "100"})
    assert len(page["data"]) == 100 and page["has_more"] is True
    page = await gw.list({"limit": "100", "starting_after": "pay_001"})
    assert [p["id"] for p in page["data"]] == ["pay_000"] and page["has_more"] is False
    for bad in ("0", "101", "1000", "-1", "+5", "1.5", "abc", "", " 5", "1e2", "0x10"):
        await gw.bad({"limit": bad}, "limit", "parameter_invalid")


@pytest.mark.parametrize(("params", "param", "code"), [
    ({"sort": "asc"}, "sort", "parameter_unknown"),
    ({"created": "2027-01-15"}, "created", "parameter_unknown"),
    ({"created[gt]": "2027-01-15"}, "created[gt]", "parameter_unknown"),
    ({"ending_before": "pay_1"}, "ending_before", "parameter_unknown"),
    ([("status", "captured"), ("status", "authorized")], "status", "parameter_repeated"),
    ([("limit", "5"), ("limit", "5")], "limit", "parameter_repeated"),
    ({"status": "settled"}, "status", "parameter_invalid"),
    ({"status": ""}, "status", "parameter_invalid"),
    ({"provider": ""}, "provider", "parameter_invalid"),
    ({"reference": "x" * 256}, "reference", "parameter_invalid"),
    ({"starting_after": ""}, "starting_after", "parameter_invalid"),
    ({"created[gte]": "yesterday"}, "created[gte]", "parameter_invalid"),
    ({"created[gte]": "2027-13-01"}, "created[gte]", "parameter_invalid"),
    ({"created[gte]": "2027-01-15T08:00:00"}, "created[gte]", "parameter_invalid"),  # no zone
    ({"created[gte]": "1800000000"}, "created[gte]", "parameter_invalid"),
    ({"created[lt]": "2027-01-15T25:00:00Z"}, "created[lt]", "parameter_invalid"),
    ({"created[lt]": ""}, "created[lt]", "parameter_invalid"),
    ({"starting_after": "pay_unknown"}, "starting_after", "resource_missing"),
])
async def test_bad_queries_are_400_naming_the_param(gw: Gateway, params: Any, param: str,
                                                    code: str) -> None:
    await gw.bad(params, param, code)


async def test_card_number_in_the_query_is_refused_and_not_echoed(gw: Gateway) -> None:
    for params in ({"reference": "4242424242424242"}, {"4242424242424242": "x"}):
        r = await gw.client.get("/v1/payments", params=params, headers=headers())
        text = await r.text()
        assert r.status == 400 and "4242424242424242" not in text
        assert json.loads(text)["error"]["code"] == "raw_card_data_rejected"


async def test_authentication_is_required(gw: Gateway) -> None:
    r = await gw.client.get("/v1/payments")
    assert r.status == 401
    r = await gw.client.get("/v1/payments", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_failed"


async def _walk(gw: Gateway, limit: int, pause: float = 0.0) -> list[list[str]]:
    pages: list[list[str]] = []
    params: dict[str, str] = {"limit": str(limit)}
    while True:
        page = await gw.list(params)
        pages.append([p["id"] for p in page["data"]])
        if not page["has_more"]:
            return pages
        params["starting_after"] = page["data"][-1]["id"]
        await asyncio.sleep(pause)


async def test_55_payments_in_pages_of_20_each_exactly_once_in_order(gw: Gateway) -> None:
    for i in range(55):  # two share each created_at: the id orders them
        await gw.put(f"pay_{i:03d}", BASE + i // 2)
    pages = await _walk(gw, 20)
    assert [len(p) for p in pages] == [20, 20, 15]
    assert [pid for page in pages for pid in page] == [f"pay_{i:03d}" for i in range(54, -1, -1)]


async def test_pages_stay_stable_while_payments_are_created(gw: Gateway) -> None:
    """Payments created through the API concurrently with the walk: every payment that
    existed before the walk shows exactly once, in order; the new ones (newer) can only
    come before them, on the first pages, never in between."""
    now = time.time()
    for i in range(45):
        await gw.put(f"pay_{i:03d}", now - 1000 + i)  # created before the walk
    stop = asyncio.Event()

    async def create_more() -> int:
        n = 0
        while not stop.is_set():
            await gw.create(f"during-{n}", reference="during")
            n += 1
        return n

    task = asyncio.create_task(create_more())
    try:
        await asyncio.sleep(0.05)
        pages = await _walk(gw, 10, pause=0.02)
    finally:
        stop.set()
        created = await task
    assert created > 0
    seen = [pid for page in pages for pid in page]
    assert len(seen) == len(set(seen))
    old = [pid for pid in seen if pid.startswith("pay_0")]
    assert old == [f"pay_{i:03d}" for i in range(44, -1, -1)]
    # the new payments are newer than every old one: they come first, never in between
    first_old = seen.index("pay_044")
    assert all(pid.startswith("pay_0") for pid in seen[first_old:])


async def test_openapi_describes_the_list(gw: Gateway) -> None:
    spec = await (await gw.client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/payments"]["get"]
    assert {p["name"] for p in op["parameters"]} == {
        "reference", "status", "provider", "created[gte]", "created[lt]", "limit",
        "starting_after"}
    schema = spec["components"]["schemas"]["PaymentList"]
    assert schema["properties"]["data"]["items"] == {"$ref": "#/components/schemas/Payment"}
    assert "post" in spec["paths"]["/v1/payments"]


async def test_store_outage_is_a_503_not_a_500(gw: Gateway, monkeypatch) -> None:
    from gateway.store import StoreError

    async def down(*_a: Any, **_k: Any) -> Any:
        raise StoreError("down")

    monkeypatch.setattr(gw.store, "search_payments", down)
    r = await gw.client.get("/v1/payments", headers=headers())
    assert r.status == 503 and "Retry-After" in r.headers



async def test_redis_payments_stored_before_the_index_are_listed_after_start(
        redis_url: str, tmp_path: Path, aiohttp_client) -> None:
    """A gateway starting on a Redis written by a version without search indexes
    indexes those payments before it serves."""
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(3):
            doc = new_payment(f"pay_old{i}", "acme", payment_body(), "fp")
            doc.update(created_at=BASE + i, updated_at=BASE + i, status="authorized",
                       version=1)
            client.hset(doc_key(doc["id"]), mapping={"v": "1", "doc": json.dumps(doc)})
    finally:
        client.close()
    app = create_app(load_config(write_config(tmp_path, redis_url)))
    gw = Gateway(await aiohttp_client(app))
    assert await gw.ids() == (["pay_old2", "pay_old1", "pay_old0"], False)
    assert await gw.ids({"status": "authorized", "limit": "1"}) == (["pay_old2"], True)
