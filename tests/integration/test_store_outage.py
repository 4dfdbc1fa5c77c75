"""A store that cannot be reached answers 503 with Retry-After on every endpoint (and
/readyz turns 503), never 500; after it comes back, the same requests with the same keys
complete and nothing is lost (SPEC 12.1; issue #11). A real redis-server is killed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import load_config
from tests.gateway_harness import headers, payment_body, wait_for, write_config
from tests.processes import RedisProcess, redis_answers


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(tmp_path)
    r.start()
    yield r
    r.stop()


async def test_redis_down_is_503_everywhere_and_nothing_is_lost(
    tmp_path: Path, aiohttp_client, redis_proc: RedisProcess
) -> None:
    async def up() -> bool:
        return redis_answers(redis_proc.url)

    await wait_for(up, timeout=10)
    app = create_app(load_config(write_config(tmp_path, redis_proc.url)))
    client: TestClient = await aiohttp_client(app)
    body = json.dumps(payment_body(capture="manual"))
    r = await client.post("/v1/payments", data=body, headers=headers(idem="before"))
    assert r.status == 201
    pay = await r.json()

    redis_proc.kill()
    r = await client.post("/v1/payments", data=body, headers=headers(idem="during"))
    assert r.status == 503 and r.headers.get("Retry-After"), await r.text()
    assert (await r.json())["error"]["code"] == "store_unavailable"
    r = await client.get(f"/v1/payments/{pay['id']}", headers=headers())
    assert r.status == 503 and r.headers.get("Retry-After")
    r = await client.post(f"/v1/payments/{pay['id']}/capture", data="{}",
                          headers=headers(idem="cap-during"))
    assert r.status == 503
    assert (await client.get("/readyz")).status == 503

    redis_proc.start()  # same port; this Redis keeps nothing, like a failover to a replica
    await wait_for(up, timeout=10)

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await wait_for(ready, timeout=15)
    r = await client.post("/v1/payments", data=body, headers=headers(idem="during"))
    assert r.status == 201, await r.text()
    assert (await r.json())["status"] == "authorized"


async def test_a_sqlite_store_that_cannot_take_a_write_is_not_ready_and_answers_503(
    tmp_path: Path, aiohttp_client
) -> None:
    """The file turns read-only under the gateway (PRAGMA query_only gives the same
    SQLITE_READONLY a read-only mount does): /readyz 503, writes 503, never 500."""
    from gateway.appkeys import STORE

    app = create_app(load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}")))
    client: TestClient = await aiohttp_client(app)
    assert (await client.get("/readyz")).status == 200
    store = app[STORE]
    await store._run(lambda: store._db().execute("PRAGMA query_only = ON"))
    assert await store.ping() is False
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["checks"]["store"] is False
    r = await client.post("/v1/payments", data=json.dumps(payment_body()),
                          headers=headers(idem="ro"))
    assert r.status == 503 and r.headers.get("Retry-After"), await r.text()
    await store._run(lambda: store._db().execute("PRAGMA query_only = OFF"))
    assert (await client.get("/readyz")).status == 200
    r = await client.post("/v1/payments", data=json.dumps(payment_body()),
                          headers=headers(idem="ro"))
    assert r.status == 201, await r.text()


@pytest.mark.parametrize(("redis_args", "allowed", "starts"), [
    (["--appendonly", "no", "--save", ""], False, False),  # keeps nothing: refused
    (["--appendonly", "no", "--save", ""], True, True),  # ... unless explicitly allowed
    (["--appendonly", "yes", "--appendfsync", "always", "--save", ""], False, True),
    (["--appendonly", "no", "--save", "60 1"], False, True),  # RDB: allowed, warned
])
async def test_a_redis_that_persists_nothing_is_refused_unless_allowed(
    tmp_path: Path, redis_args: list[str], allowed: bool, starts: bool
) -> None:
    redis_proc = RedisProcess(tmp_path, tuple(redis_args))
    redis_proc.start()
    try:
        async def up() -> bool:
            return redis_answers(redis_proc.url)

        await wait_for(up, timeout=10)
        config = write_config(tmp_path, redis_proc.url, store_options={"allow_volatile": allowed})
        from aiohttp.test_utils import TestServer

        from gateway.store import StoreError

        server = TestServer(create_app(load_config(config)))
        if starts:
            await server.start_server()
            await server.close()
        else:
            with pytest.raises(StoreError, match="persists nothing"):
                await server.start_server()
            await server.close()
    finally:
        redis_proc.kill()


async def test_after_a_redis_restart_no_pooled_connection_fails(tmp_path: Path) -> None:
    """Connections pooled before Redis was restarted were closed by the server: the store
    must not hand them out (redis-py's default maintenance-notification mode skips that
    check), else every one of them fails once after recovery, each a 503."""
    from gateway.store.redis import RedisStore

    redis_proc = RedisProcess(tmp_path / "redis")
    redis_proc.start()
    store = RedisStore(redis_proc.url)
    try:
        await redis_proc.wait_up()
        await store.open()

        async def busy(i: int) -> None:  # 16 connections in the pool, all idle after
            await store.acquire_lease(f"pool-{i}", "owner", 60)
            await asyncio.sleep(0.05)
            await store.release_lease(f"pool-{i}", "owner")

        await asyncio.gather(*[busy(i) for i in range(16)])
        redis_proc.kill()
        redis_proc.start()
        await redis_proc.wait_up()
        results = await asyncio.gather(*[store.acquire_lease(f"after-{i}", "owner", 60)
                                         for i in range(16)], return_exceptions=True)
        assert results == [True] * 16, results
    finally:
        await store.close()
        redis_proc.stop()
