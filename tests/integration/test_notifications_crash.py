"""Merchant notifications survive a crash: a real gateway process retries events while
the merchant endpoint is down, is killed with -9 with the events still in the outbox,
restarts, and delivers them once the endpoint is up. Runs on SQLite and on Redis."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.notification_signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature
from gateway.store import Store, make_store
from tests.conftest import free_port
from tests.gateway_harness import headers, wait_for, write_config
from tests.processes import restart_gateway, start_gateway, stop
from tests.unit.gateway.test_notifications import ACME_SECRET, Receiver, merchants, outbox_event

pytestmark = pytest.mark.slow


async def _states(store: Store, ids: list[str]) -> list[dict[str, Any]]:
    docs = [await store.get_notification(i) for i in ids]
    assert all(d is not None for d in docs)
    return [d for d in docs if d is not None]


async def test_outbox_survives_kill_9_and_is_delivered_after_restart(
    store_url: str, tmp_path: Path
) -> None:
    hook_port = free_port()  # nothing listens here until the endpoint comes "up"
    hook_url = f"http://127.0.0.1:{hook_port}/hooks"
    config = write_config(
        tmp_path, store_url, merchants=merchants(hook_url),
        notifications={"poll_interval_s": 0.1, "timeout_s": 2, "backoff_base_s": 0.2,
                       "backoff_max_s": 0.5, "max_age_s": 3600},
    )
    log = tmp_path / "gateway.log"
    ids = ["evt_crash_1", "evt_crash_2", "evt_crash_3"]
    store = make_store(str(store_url))
    await store.open()
    receiver = Receiver(fail_first=1)
    try:
        for i, eid in enumerate(ids):
            assert await store.enqueue_notification(outbox_event(eid, pid=f"pay_c{i}"))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            gateway, base = await start_gateway(config, log, session)
            try:
                async def retried_while_down() -> bool:
                    docs = await _states(store, ids)
                    return all(len(d["attempts"]) >= 2 for d in docs)

                await wait_for(retried_while_down, timeout=30)
                os.kill(gateway.pid, signal.SIGKILL)
                gateway.wait(timeout=10)
            finally:
                stop(gateway)

            before = await _states(store, ids)
            assert all(d["state"] == "pending" for d in before), before
            assert all(a.get("error", "").startswith("connection error")
                       for d in before for a in d["attempts"])
            # one more event lands in the outbox while the gateway is down
            late = "evt_crash_late"
            assert await store.enqueue_notification(outbox_event(late, pid="pay_late"))
            all_ids = [*ids, late]

            await receiver.start(hook_port)
            gateway = await restart_gateway(gateway, base, config, log, session)
            try:
                async def all_delivered() -> bool:
                    return all(d["state"] == "delivered" for d in await _states(store, all_ids))

                # generous deadline: an event leased by the killed process waits for its
                # lease (2 * timeout_s + 5 s) to lapse
                await wait_for(all_delivered, timeout=45, interval=0.1)

                for eid in all_ids:
                    async with session.get(f"{base}/v1/events/{eid}", headers=headers()) as r:
                        assert r.status == 200
                        ev = await r.json()
                    assert ev["delivery"]["state"] == "delivered"
                    attempts = ev["delivery"]["attempts"]
                    assert attempts[-1]["status"] == 200 and attempts[-2]["status"] == 500
                    if eid != late:  # the pre-crash failures are kept
                        assert sum("error" in a for a in attempts) >= 2
            finally:
                stop(gateway)
    finally:
        await receiver.stop()
        await store.close()

    assert set(receiver.accepted) == set(all_ids)
    assert all(n == 1 for n in receiver.accepted.values()), receiver.accepted
    for body, hdrs in receiver.requests:
        assert verify_signature(body, hdrs[SIGNATURE_HEADER], ACME_SECRET,
                                now=time.time()), hdrs
        assert json.loads(body)["id"] == hdrs[EVENT_ID_HEADER]
    assert ACME_SECRET not in log.read_text()
