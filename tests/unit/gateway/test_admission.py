"""Admission control (issue #15 item 5, gateway.admission): past ``admission.max_in_flight``
payment operations in progress, new payments and follow-ups are answered 503 with
Retry-After at once, without being stored or sent to a provider, counted in
gateway_requests_shed_total{operation}; the admitted ones finish normally.

The gateway is real (create_app on the in-process simulators); the operations in progress
are held at the Stripe simulator by its latency fault, and every wait is on a condition
with a deadline (tests.gateway_harness.wait_for)."""

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

from gateway.admission import _TICKET, ADMISSION, Admission, operation_of, waiting_on_provider
from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import ConfigError, load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config

LIMIT = 2
HOLD_MS = 1500  # how long the simulator holds each admitted request


def shed(operation: str) -> float:
    return REGISTRY.get_sample_value("gateway_requests_shed_total",
                                     {"operation": operation}) or 0.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _gateway(tmp_path: Path, store_url: str, aiohttp_client: Any,
                   session: aiohttp.ClientSession) -> tuple[TestClient, SimControl, Admission]:
    config = write_config(tmp_path, store_url, admission={"max_in_flight": LIMIT})
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    sim = SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)
    return client, sim, app[ADMISSION]


async def _post(client: TestClient, path: str, body: dict[str, Any], idem: str
                ) -> tuple[int, dict[str, Any], dict[str, str], float]:
    started = time.monotonic()
    r = await client.post(path, data=json.dumps(body), headers=headers(idem=idem))
    payload = await r.json()
    return r.status, payload, dict(r.headers), time.monotonic() - started


async def test_past_the_limit_payments_and_follow_ups_get_503_and_nothing_is_stored(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    client, sim, admission = await _gateway(tmp_path, store_url, aiohttp_client, session)
    assert admission.limit == LIMIT
    # an authorized payment, for the follow-up below (before the simulator slows down)
    status, authorized, _, _ = await _post(client, "/v1/payments", payment_body(), "adm-pre")
    assert status == 201 and authorized["status"] == "authorized", authorized

    await sim.faults("stripe", latency_ms=HOLD_MS)
    before = (await sim.requests("stripe"))["total"]
    shed_auth, shed_capture = shed("authorize"), shed("capture")
    admitted = [asyncio.create_task(_post(client, "/v1/payments",
                                          payment_body(reference=f"adm-held-{i}"),
                                          f"adm-held-{i}"))
                for i in range(LIMIT)]

    async def full() -> bool:  # both admitted requests are held at the provider
        sent = (await sim.requests("stripe"))["total"] - before
        return admission.in_flight == LIMIT and sent == LIMIT

    await wait_for(full, timeout=HOLD_MS / 1000 - 0.3, interval=0.01)

    # a new payment: 503 + Retry-After, before any provider call, nothing stored
    status, body, hdrs, took = await _post(client, "/v1/payments",
                                           payment_body(reference="adm-shed"), "adm-shed")
    assert status == 503, body
    assert body["error"]["code"] == "gateway_overloaded"
    assert hdrs["Retry-After"] == "1"
    assert took < HOLD_MS / 1000  # answered while the admitted ones are still held
    # a follow-up of an existing payment likewise: nothing changed
    status, body, hdrs, _ = await _post(client, f"/v1/payments/{authorized['id']}/capture",
                                        {}, "adm-shed-capture")
    assert status == 503 and body["error"]["code"] == "gateway_overloaded", body
    assert hdrs["Retry-After"] == "1"
    assert shed("authorize") == shed_auth + 1
    assert shed("capture") == shed_capture + 1
    assert admission.in_flight == LIMIT  # the shed ones took no place
    assert (await sim.requests("stripe"))["total"] - before == LIMIT  # never sent

    # reads are not shed, and show nothing of the shed payment
    r = await client.get("/v1/payments", params={"reference": "adm-shed"}, headers=headers())
    assert r.status == 200
    assert (await r.json())["data"] == []
    r = await client.get(f"/v1/payments/{authorized['id']}", headers=headers())
    assert r.status == 200 and (await r.json())["status"] == "authorized"

    # the admitted requests finish normally
    for task in admitted:
        status, pay, _, _ = await task
        assert status == 201 and pay["status"] == "authorized", pay
    assert admission.in_flight == 0

    # with room again, the merchant's retries with the same keys go through, once each
    await sim.faults("stripe", latency_ms=0)
    status, pay, _, _ = await _post(client, "/v1/payments", payment_body(reference="adm-shed"),
                                    "adm-shed")
    assert status == 201 and pay["status"] == "authorized", pay
    assert "Idempotent-Replayed" not in pay
    assert len(await sim.charges("stripe", pay["id"])) == 1
    status, pay, _, _ = await _post(client, f"/v1/payments/{authorized['id']}/capture", {},
                                    "adm-shed-capture")
    assert status == 200 and pay["status"] == "captured", pay


def test_the_operations_that_are_counted() -> None:
    assert operation_of("POST", "/v1/payments") == "authorize"
    assert operation_of("POST", "/v1/payments/{payment_id}/capture") == "capture"
    assert operation_of("POST", "/v1/payments/{payment_id}/void") == "void"
    assert operation_of("POST", "/v1/payments/{payment_id}/refunds") == "refund"
    assert operation_of("POST", "/v1/payments/{payment_id}/confirm") == "confirm"
    assert operation_of("GET", "/v1/payments") is None
    assert operation_of("POST", "/webhooks/{provider}") is None


def test_admission_counts_and_releases_places() -> None:
    adm = Admission(2)
    before = shed("void")
    first, second = adm.try_enter("void"), adm.try_enter("void")
    assert first is not None and second is not None
    assert adm.try_enter("void") is None
    assert shed("void") == before + 1
    adm.leave(first)
    adm.leave(first)  # given back once only
    assert adm.in_flight == 1
    assert adm.try_enter("void") is not None
    with pytest.raises(ValueError):
        Admission(0)
    with pytest.raises(ValueError):
        Admission(4, busy_limit=5)
    with pytest.raises(ValueError):
        Admission(4, busy_limit=0)


def test_operations_waiting_on_a_provider_do_not_count_as_busy() -> None:
    """busy = in flight - waiting on a provider; new operations are shed at either bound."""
    adm = Admission(3, busy_limit=1)
    a = adm.try_enter("authorize")
    assert a is not None and adm.busy == 1
    assert adm.try_enter("authorize") is None  # a is busy: the loop is taken
    token = _TICKET.set(a)
    try:
        with waiting_on_provider():
            assert (adm.waiting, adm.busy) == (1, 0)
            b = adm.try_enter("authorize")  # a awaits its provider: room for one busy
            assert b is not None and adm.busy == 1
            assert adm.try_enter("capture") is None
        assert (adm.waiting, adm.busy) == (0, 2)  # a's answer is processed, not stopped
        assert adm.try_enter("authorize") is None
        with waiting_on_provider():
            adm.leave(a)  # left while its call was awaited (a task it started lives on)
            assert (adm.in_flight, adm.waiting, adm.busy) == (1, 0, 1)
        assert (adm.in_flight, adm.waiting) == (1, 0)  # the late exit changes nothing
    finally:
        _TICKET.reset(token)
    with waiting_on_provider():  # outside an operation (reconciliation): not counted
        assert adm.waiting == 0
    adm.leave(b)
    assert (adm.in_flight, adm.waiting, adm.busy) == (0, 0, 0)
    c = adm.try_enter("authorize")
    assert c is not None


async def test_payments_held_at_the_provider_leave_room_for_new_ones(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    """max_busy 1: payments awaiting the provider are not busy, so new ones are admitted
    up to max_in_flight (4), each counted as waiting while the simulator holds it; the
    fifth is shed by max_in_flight; all four end authorized, each charged once."""
    config = write_config(tmp_path, store_url, admission={"max_in_flight": 4, "max_busy": 1})
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    sim = SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)
    admission = app[ADMISSION]
    assert (admission.limit, admission.busy_limit) == (4, 1)
    await sim.faults("stripe", latency_ms=HOLD_MS)
    held = []
    for i in range(4):
        held.append(asyncio.create_task(_post(client, "/v1/payments",
                                              payment_body(reference=f"adm-wait-{i}"),
                                              f"adm-wait-{i}")))

        async def waiting(n: int = i + 1) -> bool:
            return admission.waiting == n

        await wait_for(waiting, timeout=HOLD_MS / 1000 - 0.3, interval=0.005)
    assert (admission.in_flight, admission.busy) == (4, 0)
    status, body, _, _ = await _post(client, "/v1/payments",
                                     payment_body(reference="adm-wait-shed"), "adm-wait-shed")
    assert status == 503 and body["error"]["code"] == "gateway_overloaded", body
    for task in held:
        status, pay, _, _ = await task
        assert status == 201 and pay["status"] == "authorized", pay
        assert len(await sim.charges("stripe", pay["id"])) == 1
    assert (admission.in_flight, admission.waiting) == (0, 0)


def test_the_limit_is_configurable_and_validated(tmp_path: Path) -> None:
    default = load_config(write_config(tmp_path / "a", "sqlite:///x.db"))
    assert default.admission.max_in_flight == 64 and default.admission.retry_after_s == 1
    assert default.admission.max_busy == 64  # off unless given: max_in_flight
    small = load_config(write_config(tmp_path / "d", "sqlite:///x.db",
                                     admission={"max_in_flight": 3}))
    assert small.admission.max_busy == 3
    busy = load_config(write_config(tmp_path / "e", "sqlite:///x.db",
                                    admission={"max_busy": 8}))
    assert (busy.admission.max_in_flight, busy.admission.max_busy) == (64, 8)
    assert create_app(busy)[ADMISSION].busy_limit == 8
    cfg = load_config(write_config(tmp_path / "b", "sqlite:///x.db",
                                   admission={"max_in_flight": 7, "retry_after_s": 3}))
    assert (cfg.admission.max_in_flight, cfg.admission.retry_after_s) == (7, 3)
    app = create_app(cfg)
    assert app[ADMISSION].limit == 7 and app[ADMISSION].retry_after_s == 3
    for bad, message in [
        ({"max_in_flight": 0}, "admission.max_in_flight: must be between 1 and 100000 (got 0)"),
        ({"max_in_flight": "many"}, "admission.max_in_flight: expected"),
        ({"retry_after_s": 0}, "admission.retry_after_s: must be between 1 and 3600 (got 0)"),
        ({"max_inflight": 5}, "unknown key 'max_inflight'"),
        ({"max_in_flight": 4, "max_busy": 5},
         "admission.max_busy: must be between 1 and 4 (got 5)"),
        ({"max_busy": 0}, "admission.max_busy: must be between 1 and 64 (got 0)"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(write_config(tmp_path / "c", "sqlite:///x.db", admission=bad))
        assert any(message in e for e in info.value.errors), info.value.errors


async def test_a_concurrent_burst_is_admitted_up_to_the_limit_and_the_rest_shed_whole(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    """BURST new payments at once while the simulator holds each admitted one: LIMIT are
    authorized, every other one is answered 503 gateway_overloaded with Retry-After and
    counted once, none of those is stored or sent to the provider, and each of them, sent
    again with its key once there is room, is charged exactly once."""
    burst = 12
    client, sim, admission = await _gateway(tmp_path, store_url, aiohttp_client, session)
    await sim.faults("stripe", latency_ms=HOLD_MS)
    before = (await sim.requests("stripe"))["total"]
    shed_before = shed("authorize")
    answers = await asyncio.gather(*[
        _post(client, "/v1/payments", payment_body(reference=f"adm-burst-{i}"),
              f"adm-burst-{i}") for i in range(burst)])
    await sim.faults("stripe", latency_ms=0)

    admitted = [i for i, (status, _, _, _) in enumerate(answers) if status == 201]
    refused = [i for i, (status, _, _, _) in enumerate(answers) if status != 201]
    assert len(admitted) == LIMIT, [a[:2] for a in answers]
    for i in admitted:
        assert answers[i][1]["status"] == "authorized", answers[i][1]
    for i in refused:
        status, body, hdrs, _ = answers[i]
        assert status == 503, body
        assert body["error"]["code"] == "gateway_overloaded", body
        assert body["error"]["type"] == "internal", body
        assert hdrs["Retry-After"] == "1"
    assert shed("authorize") == shed_before + burst - LIMIT
    assert (await sim.requests("stripe"))["total"] - before == LIMIT  # only the admitted
    assert admission.in_flight == 0
    for i in refused:
        r = await client.get("/v1/payments", params={"reference": f"adm-burst-{i}"},
                             headers=headers())
        assert (await r.json())["data"] == []
    # the merchant's retries with the same keys: each authorized, once
    for i in refused:
        status, pay, hdrs, _ = await _post(client, "/v1/payments",
                                           payment_body(reference=f"adm-burst-{i}"),
                                           f"adm-burst-{i}")
        assert status == 201 and pay["status"] == "authorized", pay
        assert "Idempotent-Replayed" not in hdrs
        assert len(await sim.charges("stripe", pay["id"])) == 1
