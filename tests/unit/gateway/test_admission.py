"""Admission control (issue #15 item 5, gateway.admission): past ``admission.max_in_flight``
payment operations in progress, new payments and follow-ups are answered 503 with
Retry-After at once, without being stored or sent to a provider, counted in
gateway_requests_shed_total{operation}; the admitted ones finish normally.

The gateway is real (create_app on the in-process simulators); the operations in progress
are held at the Stripe simulator by its latency fault, and every wait is on a condition
with a deadline (tests.gateway_harness.wait_for)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.admission import (
    _TICKET,
    ADMISSION,
    Admission,
    LoopLagControl,
    operation_of,
    waiting_on_provider,
)
from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import ConfigError, load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config

LIMIT = 2
HOLD_MS = 1500  # how long the simulator holds each admitted request


def window(lag_s: float, samples: int = 5) -> list[float]:
    """One decision window whose every lag sample is ``lag_s``."""
    return [lag_s] * samples


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
        ({"loop_lag_target_ms": -1}, "admission.loop_lag_target_ms: must be >= 0 (got -1)"),
        ({"loop_lag_target_ms": "fast"}, "admission.loop_lag_target_ms: expected"),
        ({"max_in_flight": 4, "min_in_flight": 5},
         "admission.min_in_flight: must be between 1 and 4 (got 5)"),
        ({"min_in_flight": 0}, "admission.min_in_flight: must be between 1 and 64 (got 0)"),
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


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_the_lag_control_is_configured_with_the_limit(tmp_path: Path) -> None:
    """By default the limit follows the loop's lag (5 ms target) between 8 and 64; a
    smaller max_in_flight lowers the floor with it; 0 turns the control off."""
    default = load_config(write_config(tmp_path / "a", "sqlite:///x.db")).admission
    assert (default.loop_lag_target_ms, default.min_in_flight) == (5.0, 8)
    small = load_config(write_config(tmp_path / "b", "sqlite:///x.db",
                                     admission={"max_in_flight": 3})).admission
    assert small.min_in_flight == 3  # a fixed limit of 3: nothing to move
    cfg = load_config(write_config(tmp_path / "c", "sqlite:///x.db", admission={
        "max_in_flight": 32, "min_in_flight": 4, "loop_lag_target_ms": 2.5}))
    adm = create_app(cfg)[ADMISSION]
    assert (adm.ceiling, adm.floor, adm.limit) == (32, 4, 32)
    off = load_config(write_config(tmp_path / "d", "sqlite:///x.db",
                                   admission={"loop_lag_target_ms": 0})).admission
    assert off.loop_lag_target_ms == 0.0


def test_lag_over_the_target_cuts_the_limit_to_what_was_in_flight_scaled_to_it() -> None:
    adm = Admission(64, floor=8)
    ctl = LoopLagControl(adm, target_s=0.005)
    tickets = [adm.try_enter("authorize") for _ in range(40)]
    assert all(t is not None for t in tickets) and adm.peak == 40
    assert ctl.adjust(window(0.004)) == 64  # under the target: no cut
    # over it: 40 in flight x 5/10 = 20 at once (the loop is saturated now)
    assert ctl.adjust(window(0.010)) == 20
    assert gauge("gateway_event_loop_lag_seconds") == pytest.approx(0.010)
    assert gauge("gateway_admission_limit") == 20
    before = shed("authorize")
    assert adm.try_enter("authorize") is None  # 40 in flight >= 20: new ones are shed
    assert shed("authorize") == before + 1
    for t in tickets[:30]:
        assert t is not None
        adm.leave(t)
    assert ctl.adjust(window(0.010)) == 10  # 20 x 5/10 (the peak of the window was 40)
    assert ctl.adjust(window(0.008)) == 8  # 10 x 5/8 = 6, not under the floor
    assert ctl.adjust(window(0.100)) == 8
    assert ctl.adjust(window(0.004)) == 8  # under the target: no cut, and not low enough to rise
    for t in tickets[30:35]:
        assert t is not None
        adm.leave(t)
    assert adm.in_flight == 5
    assert ctl.adjust(window(0.001)) == 8  # low lag, but the limit was not reached: unchanged
    assert ctl.adjust(window(0.001)) == 8
    with pytest.raises(ValueError):
        LoopLagControl(adm, target_s=0)
    for bad in (0, 65):
        with pytest.raises(ValueError):
            Admission(64, floor=bad)


def test_one_late_sample_is_a_stall_most_late_samples_saturation() -> None:
    adm = Admission(64, floor=8)
    ctl = LoopLagControl(adm, target_s=0.005)
    tickets = [adm.try_enter("authorize") for _ in range(40)]
    # one GC pass or long callback: the window's mean (9 ms) is over the target, but only
    # one sample of five was late: no cut
    assert ctl.adjust([0.0, 0.045, 0.0, 0.0, 0.0]) == 64
    assert gauge("gateway_event_loop_lag_seconds") == pytest.approx(0.009)
    assert ctl.adjust([0.0, 0.045]) == 64  # a window the stall cut short: half is not most
    # three of five late: saturated; the median lag (10 ms) scales, not the stall
    assert ctl.adjust([0.010, 0.0, 0.045, 0.010, 0.001]) == 20  # 40 x 5/10
    assert ctl.adjust([]) == 20  # no sample (cannot happen in run()): nothing decided
    for t in tickets:
        assert t is not None
        adm.leave(t)


def test_a_cut_keeps_the_places_of_operations_waiting_on_a_provider() -> None:
    """A slow provider: most operations in flight await it and do not load the loop; a
    cut scales only the busy ones (those the loop's lag comes from)."""
    adm = Admission(64, floor=8)
    ctl = LoopLagControl(adm, target_s=0.005)
    tickets = [adm.try_enter("authorize") for _ in range(60)]
    with contextlib.ExitStack() as stack:
        for t in tickets[:50]:  # 50 await their provider, 10 are busy
            assert t is not None
            token = _TICKET.set(t)
            stack.enter_context(waiting_on_provider())
            _TICKET.reset(token)
        assert (adm.waiting, adm.busy) == (50, 10)
        assert ctl.adjust(window(0.010)) == 55  # 50 waiting + 10 busy x 5/10
        assert ctl.adjust(window(0.050)) == 50  # 50 + int((55 - 50) x 5/50)
    assert adm.waiting == 0  # their answers arrived: all 60 are busy now
    assert ctl.adjust(window(0.020)) == 12  # 0 + min(50, 60) x 5/20
    for t in tickets:
        assert t is not None
        adm.leave(t)


def test_the_limit_rises_only_when_reached_with_the_loop_idle_up_to_the_ceiling() -> None:
    adm = Admission(16, floor=4)
    ctl = LoopLagControl(adm, target_s=0.005)
    adm.set_limit(4)
    held = [adm.try_enter("capture") for _ in range(4)]
    assert adm.reached  # the fourth filled the limit
    assert ctl.adjust(window(0.003)) == 4  # under the target but not under half of it
    assert not adm.reached  # each window looks afresh
    assert adm.try_enter("capture") is None and adm.reached  # shed: wanted more
    assert ctl.adjust(window(0.001)) == 5  # + max(1, 4/8)
    limits = []
    for _ in range(20):  # reached every window (shed arrivals), loop idle
        assert adm.try_enter("capture") is not None or adm.reached
        while adm.try_enter("capture") is not None:
            pass
        limits.append(ctl.adjust(window(0.0005)))
    assert limits == sorted(limits) and limits[-1] == 16  # up to the ceiling, not past
    assert gauge("gateway_admission_limit") == 16
    for t in held:
        assert t is not None
        adm.leave(t)


async def test_a_saturated_event_loop_lowers_the_limit_sheds_and_recovers(
        tmp_path: Path, store_url: str, aiohttp_client: Any,
        session: aiohttp.ClientSession) -> None:
    """The real control task of a real gateway: while something keeps the event loop
    busy (20 ms at a time), the limit falls to min_in_flight (2); two payments held at
    the simulator fill it and a third is shed 503 gateway_overloaded, stored nowhere;
    once the loop is free the limit rises again (the shed arrival showed it was wanted),
    and the shed payment, retried with its key, is charged once."""
    config = write_config(tmp_path, store_url, admission={
        "max_in_flight": 16, "min_in_flight": 2, "loop_lag_target_ms": 5})
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    assert any(t.get_name() == "admission-lag-control" for t in asyncio.all_tasks())
    sim = SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)
    admission = app[ADMISSION]
    assert admission.limit == 16

    stop = asyncio.Event()

    async def hog() -> None:  # CPU work that holds the loop 20 ms at a time
        while not stop.is_set():
            end = time.monotonic() + 0.02
            while time.monotonic() < end:
                pass
            await asyncio.sleep(0)

    hogging = asyncio.create_task(hog())
    try:
        async def lowered() -> bool:
            return admission.limit == 2

        await wait_for(lowered, timeout=10)
        lag = gauge("gateway_event_loop_lag_seconds")
        assert lag is not None and lag > 0.005, lag
        await sim.faults("stripe", latency_ms=HOLD_MS * 2)
        held = [asyncio.create_task(_post(client, "/v1/payments",
                                          payment_body(reference=f"adm-lag-{i}"),
                                          f"adm-lag-{i}")) for i in range(2)]

        async def full() -> bool:
            return admission.in_flight == 2

        await wait_for(full, timeout=10, interval=0.005)
        status, body, hdrs, _ = await _post(client, "/v1/payments",
                                            payment_body(reference="adm-lag-shed"),
                                            "adm-lag-shed")
        assert status == 503 and body["error"]["code"] == "gateway_overloaded", body
        assert hdrs["Retry-After"] == "1"
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await hogging

    async def raised() -> bool:
        return admission.limit > 2

    await wait_for(raised, timeout=10)
    await sim.faults("stripe", latency_ms=0)
    for task in held:
        status, pay, _, _ = await task
        assert status == 201 and pay["status"] == "authorized", pay
    r = await client.get("/v1/payments", params={"reference": "adm-lag-shed"},
                         headers=headers())
    assert (await r.json())["data"] == []  # the shed one was stored nowhere
    status, pay, _, _ = await _post(client, "/v1/payments",
                                    payment_body(reference="adm-lag-shed"), "adm-lag-shed")
    assert status == 201 and pay["status"] == "authorized", pay
    assert len(await sim.charges("stripe", pay["id"])) == 1


async def test_without_a_lag_target_no_control_runs_and_the_limit_is_fixed(
        tmp_path: Path, store_url: str, aiohttp_client: Any) -> None:
    config = write_config(tmp_path, store_url, admission={
        "max_in_flight": 16, "min_in_flight": 2, "loop_lag_target_ms": 0})
    app = create_app(load_config(config))
    await aiohttp_client(app)
    assert not any(t.get_name() == "admission-lag-control" for t in asyncio.all_tasks())
    assert app[ADMISSION].limit == 16
