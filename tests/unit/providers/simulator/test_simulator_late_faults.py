"""Framework fault modes where the provider keeps working after the client stopped
waiting: ``late_process`` (+ ``late_process_ms``), ``error_after_process`` and the
validation of ``search_lag_ms`` per provider. Provider-specific behaviour (Stripe's
stored 500s, search lag) is tested with each simulator's SDK tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from providers.adyen.simulator import AdyenSimulator
from providers.braintree.simulator import BraintreeSimulator
from providers.simulator import SimulatorHost
from providers.stripe.simulator import StripeSimulator
from tests.unit.providers.simulator.test_simulator_host import ToySimulator

DEADLINE_S = 5.0


async def eventually(check: Callable[[], Awaitable[bool]], within: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


class SearchableToy(ToySimulator):
    supports_search = True


@pytest.fixture
async def host() -> AsyncIterator[SimulatorHost]:
    h = SimulatorHost([ToySimulator("toy", seed=3), SearchableToy("searchable")],
                      control_port=0)
    await h.start()
    yield h
    await h.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


async def ctl(http: aiohttp.ClientSession, host: SimulatorHost, method: str, path: str,
              body: Any = None) -> tuple[int, Any]:
    async with http.request(method, f"{host.control_url}{path}", json=body) as resp:
        return resp.status, await resp.json()


async def count(http: aiohttp.ClientSession, host: SimulatorHost, ref: str,
                name: str = "toy") -> int:
    status, body = await ctl(http, host, "GET", f"/_sim/{name}/charges?reference={ref}")
    assert status == 200
    return len(body["charges"])


async def post_charge(base_url: str, ref: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async with s.post(f"{base_url}/charges", json={"amount": 100, "reference": ref}) as r:
            return r.status, await r.json()


def late_tasks(host: SimulatorHost, name: str = "toy") -> int:
    return len(host.simulator(name)._late)


# ------------------------------------------------------------------ late_process


async def test_late_process_client_times_out_then_charge_appears_once(
    host: SimulatorHost, http: aiohttp.ClientSession
) -> None:
    status, _ = await ctl(http, host, "POST", "/_sim/toy/faults",
                          {"mode": "late_process", "late_process_ms": 600})
    assert status == 200
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await post_charge(host.base_url("toy"), "pay_late", timeout_s=0.2)
    assert time.monotonic() - t0 < 0.6
    # the client gave up; the provider has the request but has not processed it yet
    assert host.simulator("toy").requests.count("create_charge") == 1
    assert await count(http, host, "pay_late") == 0

    async def charged() -> bool:
        return await count(http, host, "pay_late") == 1

    await eventually(charged)
    assert time.monotonic() - t0 >= 0.6

    async def settled() -> bool:
        return late_tasks(host) == 0

    await eventually(settled)  # nothing left that could charge again
    assert await count(http, host, "pay_late") == 1
    assert host.simulator("toy").requests.count("create_charge") == 1  # counted once
    # the simulator still serves normally (the answer went into a closed connection)
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "normal"})
    assert (await post_charge(host.base_url("toy"), "pay_next"))[0] == 201


async def test_late_process_waiting_client_gets_the_answer(
    host: SimulatorHost, http: aiohttp.ClientSession
) -> None:
    # no other injected error applies to a late-processed request
    await ctl(http, host, "POST", "/_sim/toy/faults",
              {"mode": "late_process", "late_process_ms": 300, "error_rate": 1.0,
               "rate_limit_rate": 1.0})
    t0 = time.monotonic()
    status, body = await post_charge(host.base_url("toy"), "pay_wait")
    assert time.monotonic() - t0 >= 0.3
    assert status == 201 and body["reference"] == "pay_wait"
    assert await count(http, host, "pay_wait") == 1
    # the other provider is not affected
    t0 = time.monotonic()
    assert (await post_charge(host.base_url("searchable"), "pay_wait"))[0] == 201
    assert time.monotonic() - t0 < 0.3


async def test_late_process_zero_delay_processes_at_once(
    host: SimulatorHost, http: aiohttp.ClientSession
) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "late_process"})
    assert (await post_charge(host.base_url("toy"), "pay_z"))[0] == 201
    assert await count(http, host, "pay_z") == 1


async def test_reset_drops_pending_late_requests(
    host: SimulatorHost, http: aiohttp.ClientSession
) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults",
              {"mode": "late_process", "late_process_ms": 60_000})
    task = asyncio.create_task(post_charge(host.base_url("toy"), "pay_r"))

    async def pending() -> bool:
        return late_tasks(host) == 1

    await eventually(pending)
    await ctl(http, host, "POST", "/_sim/toy/reset")
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, DEADLINE_S)
    assert late_tasks(host) == 0  # cancelled: it can never charge
    assert await count(http, host, "pay_r") == 0


async def test_stop_does_not_wait_for_late_requests() -> None:
    h = SimulatorHost([ToySimulator()], control_port=None)
    await h.start()
    await h.set_faults("toy", {"mode": "late_process", "late_process_ms": 60_000})
    task = asyncio.create_task(post_charge(h.base_url("toy"), "pay_s"))

    async def pending() -> bool:
        return late_tasks(h) == 1

    await eventually(pending)
    t0 = time.monotonic()
    await h.stop()
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, DEADLINE_S)
    assert h.simulator("toy").charges("pay_s") == []


async def test_late_processing_survives_handler_cancellation() -> None:
    """With ``handler_cancellation=True`` aiohttp cancels the handler when the client
    disconnects; the shielded provider task still processes the request."""
    sim = ToySimulator()
    sim.prepare()
    await SimulatorHost([sim], control_port=None).set_faults(
        "toy", {"mode": "late_process", "late_process_ms": 400})
    runner = web.AppRunner(sim.build_app(), access_log=None, handle_signals=False,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await post_charge(f"http://127.0.0.1:{site.port}", "pay_c", timeout_s=0.1)

        async def charged() -> bool:
            return len(sim.charges("pay_c")) == 1

        await eventually(charged)
        assert len(sim._late) == 0 and len(sim.charges("pay_c")) == 1
    finally:
        await runner.cleanup()
        await sim.close()


# ------------------------------------------------------------------ error_after_process


async def test_error_after_process(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults",
              {"error_rate": 1.0, "error_status": 503, "error_after_process": True})
    status, body = await post_charge(host.base_url("toy"), "pay_e")
    assert (status, body) == (503, {"fault": 503})
    assert await count(http, host, "pay_e") == 1  # processed, then the 5xx
    await ctl(http, host, "POST", "/_sim/toy/faults", {"error_after_process": False})
    status, _ = await post_charge(host.base_url("toy"), "pay_e")
    assert status == 503
    assert await count(http, host, "pay_e") == 1  # before processing: nothing happened
    # 429 stays before processing whatever error_after_process says
    await ctl(http, host, "POST", "/_sim/toy/faults",
              {"error_rate": 0.0, "rate_limit_rate": 1.0, "error_after_process": True})
    assert (await post_charge(host.base_url("toy"), "pay_e"))[0] == 429
    assert await count(http, host, "pay_e") == 1


async def test_error_after_process_then_drop(host: SimulatorHost,
                                             http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults",
              {"mode": "drop_after_process", "error_rate": 1.0, "error_after_process": True})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_charge(host.base_url("toy"), "pay_d")
    assert await count(http, host, "pay_d") == 1


# ------------------------------------------------------------------ search_lag_ms validation


async def test_search_lag_only_for_providers_with_search(
    host: SimulatorHost, http: aiohttp.ClientSession
) -> None:
    status, body = await ctl(http, host, "POST", "/_sim/searchable/faults",
                             {"search_lag_ms": 1500})
    assert status == 200 and body["search_lag_ms"] == 1500
    for bad in (-1, 600_001, 1.5, "10", True, None):
        status, err = await ctl(http, host, "POST", "/_sim/searchable/faults",
                                {"search_lag_ms": bad})
        assert status == 400, bad
        assert err["error"]["param"] == "search_lag_ms"
    assert (await ctl(http, host, "GET", "/_sim/searchable/faults"))[1]["search_lag_ms"] == 1500
    status, err = await ctl(http, host, "POST", "/_sim/toy/faults",
                            {"search_lag_ms": 5, "latency_ms": 1})
    assert status == 400 and err["error"]["code"] == "invalid_fault_settings"
    assert err["error"]["param"] == "search_lag_ms" and "search" in err["error"]["message"]
    status, body = await ctl(http, host, "POST", "/_sim/toy/faults", {"search_lag_ms": 0})
    assert status == 200 and body["search_lag_ms"] == 0 and body["latency_ms"] == 0


async def test_search_support_of_the_real_simulators() -> None:
    h = SimulatorHost([StripeSimulator(), BraintreeSimulator(), AdyenSimulator()],
                      control_port=0)
    async with h, aiohttp.ClientSession() as s:
        for name, ok in (("stripe", True), ("braintree", True), ("adyen", False)):
            async with s.post(f"{h.control_url}/_sim/{name}/faults",
                              json={"search_lag_ms": 250}) as resp:
                body = await resp.json()
                assert resp.status == (200 if ok else 400), (name, body)
                if not ok:
                    assert body["error"]["param"] == "search_lag_ms"
                    assert "adyen" in body["error"]["message"]
            async with s.get(f"{h.control_url}/_sim/{name}/faults") as resp:
                body = await resp.json()
                assert body["search_lag_ms"] == (250 if ok else 0)
                assert {"late_process_ms", "error_after_process"} <= set(body)
