"""Bounded store pools that wait, never raise (issue #15 item 4, gateway.store.pool).

A request takes a store place at its first store operation and keeps it to its end;
``store_options.pool_size`` requests may hold one. The next waits up to
``store_options.pool_timeout_s`` -- and goes through when a place frees -- or is answered
503 ``store_unavailable`` with Retry-After before anything is claimed, stored or sent.

The gateway is real (create_app on the in-process simulators, both stores, a real
redis-server); the requests holding the places are held at the Stripe simulator by its
latency fault; every wait is on a condition with a deadline (tests.gateway_harness.wait_for).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway import config as gateway_config
from gateway import metrics
from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS, STORE
from gateway.config import ConfigError, load_config
from gateway.store import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT_S, RedisStore, StoreError
from gateway.store import pool as store_pool
from gateway.store.pool import BudgetedPool, RequestBudget, request_scope
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config

SIZE = 2


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _gateway(tmp_path: Path, store_url: str, aiohttp_client: Any,
                   session: aiohttp.ClientSession, timeout_s: float
                   ) -> tuple[TestClient, SimControl, RequestBudget]:
    options: dict[str, Any] = {"pool_size": SIZE, "pool_timeout_s": timeout_s}
    if store_url.startswith("redis"):
        options["allow_volatile"] = True  # the tests' private redis-server keeps nothing
    config = write_config(tmp_path, store_url, store_options=options)
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    sim = SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)
    budget = app[STORE].budget  # type: ignore[attr-defined]
    assert isinstance(budget, RequestBudget) and budget.size == SIZE
    assert budget.wait_s == timeout_s
    return client, sim, budget


async def _post(client: TestClient, body: dict[str, Any], idem: str
                ) -> tuple[int, dict[str, Any], dict[str, str], float]:
    started = time.monotonic()
    r = await client.post("/v1/payments", data=json.dumps(body), headers=headers(idem=idem))
    payload = await r.json()
    return r.status, payload, dict(r.headers), time.monotonic() - started


async def _hold(client: TestClient, sim: SimControl, budget: RequestBudget, hold_ms: int,
                tag: str) -> list[asyncio.Task[Any]]:
    """SIZE payments in progress at the simulator, each holding a store place."""
    await sim.faults("stripe", latency_ms=hold_ms)
    before = (await sim.requests("stripe"))["total"]
    held = [asyncio.create_task(_post(client, payment_body(reference=f"{tag}-{i}"),
                                      f"{tag}-{i}")) for i in range(SIZE)]

    async def full() -> bool:
        sent = (await sim.requests("stripe"))["total"] - before
        return budget.in_use == SIZE and sent == SIZE

    await wait_for(full, timeout=hold_ms / 1000 - 0.3, interval=0.01)
    return held


async def test_a_request_waits_for_a_store_place_and_goes_through_when_one_frees(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    client, sim, budget = await _gateway(tmp_path, store_url, aiohttp_client, session,
                                         timeout_s=10.0)
    hold_ms = 1500
    held = await _hold(client, sim, budget, hold_ms, "pool-held")
    sent_before = (await sim.requests("stripe"))["total"]
    waiting = asyncio.create_task(_post(client, payment_body(reference="pool-next"),
                                        "pool-next"))

    async def queued() -> bool:
        return budget.waiting == 1

    await wait_for(queued, timeout=hold_ms / 1000 - 0.3, interval=0.01)
    assert not waiting.done()
    assert budget.in_use == SIZE  # the waiting one holds no place, claimed nothing yet
    assert (await sim.requests("stripe"))["total"] == sent_before  # nothing sent for it

    for task in held:
        status, pay, _, _ = await task
        assert status == 201 and pay["status"] == "authorized", pay
    await sim.faults("stripe", latency_ms=0)
    status, pay, _, _ = await asyncio.wait_for(waiting, timeout=10)
    assert status == 201 and pay["status"] == "authorized", pay
    assert len(await sim.charges("stripe", "pool-next")) == 1

    async def idle() -> bool:
        return budget.in_use == 0 and budget.waiting == 0

    await wait_for(idle, timeout=5)  # every place was given back


def _pool_timeouts(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("gateway_store_pool_timeouts_total",
                                             {"kind": kind}) or 0.0


async def test_past_the_wait_503_store_unavailable_nothing_claimed_and_the_key_retries(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    timeout_s = 0.3
    client, sim, budget = await _gateway(tmp_path, store_url, aiohttp_client, session,
                                         timeout_s=timeout_s)
    hold_ms = 2500
    held = await _hold(client, sim, budget, hold_ms, "pool-full")
    sent_before = (await sim.requests("stripe"))["total"]
    timeouts_before = _pool_timeouts("request")

    status, body, hdrs, took = await _post(client, payment_body(reference="pool-refused"),
                                           "pool-refused")
    assert status == 503, body
    assert _pool_timeouts("request") == timeouts_before + 1  # told apart from an outage
    assert body["error"]["code"] == "store_unavailable"
    assert int(hdrs["Retry-After"]) >= 1
    assert timeout_s <= took < hold_ms / 1000  # it waited, then gave up before a place freed
    assert (await sim.requests("stripe"))["total"] == sent_before  # never sent
    assert budget.in_use == SIZE

    for task in held:
        status, pay, _, _ = await task
        assert status == 201 and pay["status"] == "authorized", pay
    await sim.faults("stripe", latency_ms=0)

    # nothing was stored for the refused request
    r = await client.get("/v1/payments", params={"reference": "pool-refused"},
                         headers=headers())
    assert r.status == 200 and (await r.json())["data"] == []
    # nor claimed: the same key is a new request now (a kept claim would answer 409),
    # and it is charged once
    status, pay, hdrs, _ = await _post(client, payment_body(reference="pool-refused"),
                                       "pool-refused")
    assert status == 201 and pay["status"] == "authorized", pay
    assert "Idempotent-Replayed" not in hdrs
    assert len(await sim.charges("stripe", "pool-refused")) == 1


async def test_health_and_metrics_do_not_take_store_places(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    client, sim, budget = await _gateway(tmp_path, store_url, aiohttp_client, session,
                                         timeout_s=0.3)
    held = await _hold(client, sim, budget, 2000, "pool-ready")
    r = await client.get("/readyz")  # pings the store from the background reserve
    assert r.status == 200, await r.text()
    for task in held:
        status, _, _, _ = await task
        assert status == 201


# the budget and the Redis pool themselves -------------------------------------------

async def test_a_request_waits_once_at_its_first_operation_never_later(
        store_url: str, tmp_path: Path) -> None:
    from gateway.store import make_store

    store = make_store(store_url, pool_size=1, pool_timeout_s=0.2)
    await store.open()
    try:
        budget: RequestBudget = store.budget  # type: ignore[attr-defined]
        first_done = asyncio.Event()
        finish = asyncio.Event()

        async def request_holding_the_place() -> None:
            with request_scope():
                assert await store.get_payment("pay_absent") is None
                first_done.set()
                await finish.wait()
                # later operations of the same request do not wait, the budget is "full"
                assert budget.in_use == 1
                assert await store.get_payment("pay_absent") is None

        holder = asyncio.create_task(request_holding_the_place())
        await asyncio.wait_for(first_done.wait(), timeout=5)
        assert budget.in_use == 1
        with request_scope(), pytest.raises(StoreError, match="pool_size"):
            await store.get_payment("pay_absent")  # another request: no place in 0.2 s
        assert budget.in_use == 1 and budget.waiting == 0
        assert await store.get_payment("pay_absent") is None  # outside a request: no place
        finish.set()
        await asyncio.wait_for(holder, timeout=5)
        assert budget.in_use == 0
        with request_scope():
            assert await store.get_payment("pay_absent") is None
        assert budget.in_use == 0
    finally:
        await store.close()


async def test_redis_pool_blocks_for_a_connection_instead_of_raising(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = 2
    monkeypatch.setattr(store_pool, "BACKGROUND_RESERVE", reserve)
    store = RedisStore(redis_url, pool_size=SIZE, pool_timeout_s=1.0)
    await store.open()
    try:
        assert store._client is not None
        pool = store._client.connection_pool
        assert isinstance(pool, BudgetedPool)
        assert pool.max_connections == SIZE + reserve
        # the background reserve in use: a background call waits, then goes through
        held = [await pool.get_connection() for _ in range(reserve)]
        waiting = asyncio.create_task(store.get_payment("pay_absent"))

        async def blocked() -> bool:
            return pool._background.locked() and not waiting.done()

        await wait_for(blocked, timeout=5, interval=0.01)
        await asyncio.sleep(0)  # still waiting, no "Too many connections"
        assert not waiting.done()
        await pool.release(held.pop())
        assert await asyncio.wait_for(waiting, timeout=5) is None
        await pool.release(held.pop())
        # requests holding every place still get connections: their own pool share
        async def request() -> None:
            with request_scope():
                assert await store.get_payment("pay_absent") is None
                await asyncio.sleep(0.05)
                assert await store.get_payment("pay_absent") is None

        background = [await pool.get_connection() for _ in range(reserve)]
        await asyncio.wait_for(asyncio.gather(*(request() for _ in range(SIZE))), timeout=5)
        for c in background:
            await pool.release(c)
        assert not pool._background.locked()
    finally:
        await store.close()


# configuration --------------------------------------------------------------------

def test_defaults_match_the_stores() -> None:
    d = gateway_config.GatewayConfig.__dataclass_fields__
    assert d["store_pool_size"].default == DEFAULT_POOL_SIZE == 128
    assert d["store_pool_timeout_s"].default == DEFAULT_POOL_TIMEOUT_S == 1.0


@pytest.mark.parametrize(("options", "message"), [
    ({"pool_size": 0}, r"store_options.pool_size: must be between 1 and 10000 \(got 0\)"),
    ({"pool_size": 10_001}, r"store_options.pool_size: must be between 1 and 10000"),
    ({"pool_size": "many"}, r"store_options.pool_size"),
    ({"pool_timeout_s": 0}, r"store_options.pool_timeout_s: must be > 0"),
    ({"pool_timeout_s": 20}, r"store_options.pool_timeout_s: must be below request_deadline_s"),
    ({"pool_sise": 3}, r"store_options: unknown key 'pool_sise'"),
])
def test_pool_options_are_validated(tmp_path: Path, options: dict[str, Any],
                                    message: str) -> None:
    path = write_config(tmp_path, "sqlite:///gw.db", store_options=options)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_pool_options_load(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sqlite:///gw.db",
                        store_options={"pool_size": 40, "pool_timeout_s": 0.5})
    cfg = load_config(path)
    assert (cfg.store_pool_size, cfg.store_pool_timeout_s) == (40, 0.5)
    cfg = load_config(write_config(tmp_path / "d", "sqlite:///gw.db"))
    assert (cfg.store_pool_size, cfg.store_pool_timeout_s) == (128, 1.0)
