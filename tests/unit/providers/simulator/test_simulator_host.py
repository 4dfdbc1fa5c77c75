"""The generic simulator framework: control API, fault modes, counting, reset, runner."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from providers.simulator import (
    ChargeView,
    FaultMode,
    FaultSettings,
    SandboxCard,
    SimulatedProvider,
    SimulatorHost,
    resolve_token,
)
from providers.simulator.tokens import CardBehavior
from tests.paths import REPO

ROOT = REPO


class ToySimulator(SimulatedProvider):
    """A minimal provider: JSON charges, enough to exercise the framework."""

    def __init__(self, name: str = "toy", **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name
        self.store: dict[str, dict[str, Any]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/charges", self._create, name="create_charge")
        app.router.add_get("/charges/{id}", self._get, name="get_charge")

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        charge = {"id": f"ch_{len(self.store) + 1}", "amount": body["amount"],
                  "reference": body["reference"]}
        self.store[charge["id"]] = charge
        return web.json_response(charge, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.store[request.match_info["id"]])

    def fault_response(self, status: int) -> web.Response:
        return web.json_response({"fault": status}, status=status)

    def charges(self, reference: str) -> list[ChargeView]:
        return [ChargeView(c["id"], c["amount"], "EUR", "captured", c["amount"], 0)
                for c in self.store.values() if c["reference"] == reference]

    def reset_state(self) -> None:
        self.store.clear()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


@pytest.fixture
async def host() -> AsyncIterator[SimulatorHost]:
    h = SimulatorHost([ToySimulator("toy", seed=7), ToySimulator("other")], control_port=0)
    await h.start()
    yield h
    await h.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


async def ctl(http: aiohttp.ClientSession, host: SimulatorHost, method: str, path: str,
              body: Any = None, raw: str | None = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.request(method, f"{host.control_url}{path}", **kwargs) as resp:
        return resp.status, await resp.json()


async def charge(http: aiohttp.ClientSession, host: SimulatorHost, ref: str = "pay_1",
                 name: str = "toy") -> aiohttp.ClientResponse:
    async with http.post(f"{host.base_url(name)}/charges",
                         json={"amount": 100, "reference": ref}) as resp:
        await resp.read()
        return resp


async def charge_count(http: aiohttp.ClientSession, host: SimulatorHost, ref: str = "pay_1",
                       name: str = "toy") -> int:
    status, body = await ctl(http, host, "GET", f"/_sim/{name}/charges?reference={ref}")
    assert status == 200
    return len(body["charges"])


@pytest.mark.parametrize(("token", "behavior", "brand"), [
    ("tok_visa", CardBehavior.APPROVE, "visa"),
    ("tok_mastercard", CardBehavior.APPROVE, "mastercard"),
    ("tok_decline", CardBehavior.DECLINE, "visa"),
    ("tok_insufficient_funds", CardBehavior.INSUFFICIENT_FUNDS, "visa"),
    ("tok_3ds", CardBehavior.REQUIRES_ACTION, "visa"),
    ("tok_pending", CardBehavior.PENDING, "visa"),
])
def test_sandbox_tokens(token: str, behavior: CardBehavior, brand: str) -> None:
    card = resolve_token(token)
    assert card is not None and (card.behavior, card.brand) == (behavior, brand)
    assert card.declines == (behavior in (CardBehavior.DECLINE, CardBehavior.INSUFFICIENT_FUNDS))


def test_unknown_and_provider_tokens() -> None:
    assert resolve_token("tok_nope") is None and resolve_token(None) is None
    extra = {"pm_x": SandboxCard(CardBehavior.DECLINE)}
    assert resolve_token("pm_x", extra) == SandboxCard(CardBehavior.DECLINE)
    assert resolve_token("tok_visa", extra) is not None


DEFAULT_FAULTS = {"mode": "normal", "latency_ms": 0, "error_rate": 0.0, "error_status": 500,
                  "rate_limit_rate": 0.0, "late_process_ms": 0, "search_lag_ms": 0,
                  "error_after_process": False}


async def test_faults_get_and_merge(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    status, body = await ctl(http, host, "GET", "/_sim/toy/faults")
    assert (status, body) == (200, DEFAULT_FAULTS)
    status, body = await ctl(http, host, "POST", "/_sim/toy/faults",
                             {"latency_ms": 5, "error_status": 503})
    assert status == 200 and body["latency_ms"] == 5 and body["error_status"] == 503
    status, body = await ctl(http, host, "POST", "/_sim/toy/faults", {"error_rate": 0.25})
    assert body == {**DEFAULT_FAULTS, "latency_ms": 5, "error_rate": 0.25, "error_status": 503}
    status, body = await ctl(http, host, "POST", "/_sim/toy/faults",
                             {"mode": "late_process", "late_process_ms": 250,
                              "error_after_process": True})
    assert status == 200
    assert body == {**DEFAULT_FAULTS, "mode": "late_process", "latency_ms": 5,
                    "error_rate": 0.25, "error_status": 503, "late_process_ms": 250,
                    "error_after_process": True}
    assert (await ctl(http, host, "GET", "/_sim/toy/faults"))[1] == body
    assert (await ctl(http, host, "GET", "/_sim/other/faults"))[1]["latency_ms"] == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"mode": "explode"}, "mode"),
    ({"error_rate": 1.5}, "error_rate"),
    ({"rate_limit_rate": -0.1}, "rate_limit_rate"),
    ({"error_status": 404}, "error_status"),
    ({"error_status": True}, "error_status"),
    ({"latency_ms": -1}, "latency_ms"),
    ({"latency_ms": "10"}, "latency_ms"),
    ({"latency_ms": 1.5}, "latency_ms"),
    ({"colour": "red"}, "colour"),
    ([1, 2], None),
    ({"late_process_ms": -1}, "late_process_ms"),
    ({"late_process_ms": 600_001}, "late_process_ms"),
    ({"late_process_ms": 2.5}, "late_process_ms"),
    ({"late_process_ms": True}, "late_process_ms"),
    ({"late_process_ms": "100"}, "late_process_ms"),
    ({"error_after_process": 1}, "error_after_process"),
    ({"error_after_process": "true"}, "error_after_process"),
    ({"error_after_process": None}, "error_after_process"),
    ({"search_lag_ms": 10}, "search_lag_ms"),  # the toy provider has no search API
    ({"mode": "late"}, "mode"),
])
async def test_faults_validation(host: SimulatorHost, http: aiohttp.ClientSession, body: Any,
                                 param: str | None) -> None:
    status, err = await ctl(http, host, "POST", "/_sim/toy/faults",
                            {"mode": "hang", **body} if isinstance(body, dict) else body)
    assert status == 400
    assert err["error"]["code"] == "invalid_fault_settings"
    assert err["error"].get("param") == param
    # a rejected update changes nothing, not even its valid keys
    assert (await ctl(http, host, "GET", "/_sim/toy/faults"))[1]["mode"] == "normal"


async def test_control_errors(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    status, err = await ctl(http, host, "POST", "/_sim/toy/faults", raw="{not json")
    assert status == 400 and err["error"]["code"] == "invalid_json"
    status, err = await ctl(http, host, "GET", "/_sim/nosuch/faults")
    assert status == 404 and err["error"]["code"] == "unknown_provider"
    status, err = await ctl(http, host, "GET", "/_sim/toy/charges")
    assert status == 400 and err["error"]["param"] == "reference"


async def test_refuse_closes_the_port_and_relistens(
    host: SimulatorHost, http: aiohttp.ClientSession
) -> None:
    port = host.port("toy")
    assert (await charge(http, host)).status == 201  # leaves a keep-alive connection
    status, _ = await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "refuse"})
    assert status == 200 and not host.is_listening("toy")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    # the pooled connection was closed too: the client cannot reach the simulator at all
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await charge(http, host)
    assert isinstance(info.value.os_error, ConnectionRefusedError)
    assert (await charge(http, host, name="other")).status == 201  # other provider still up
    _, index = await ctl(http, host, "GET", "/_sim")
    assert index["providers"]["toy"] == {"port": port, "base_url": f"http://127.0.0.1:{port}",
                                         "listening": False}
    await ctl(http, host, "POST", "/_sim/toy/faults", {"latency_ms": 1})  # still refusing
    assert not host.is_listening("toy")
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "normal"})
    assert host.port("toy") == port and host.is_listening("toy")
    assert (await charge(http, host)).status == 201
    _, counts = await ctl(http, host, "GET", "/_sim/toy/requests")
    assert counts == {"total": 2, "by_operation": {"create_charge": 2}}


async def test_hang_never_answers(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "hang"})
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(f"{host.base_url('toy')}/charges",
                             json={"amount": 1, "reference": "pay_h"},
                             timeout=aiohttp.ClientTimeout(total=0.3)) as resp:
            await resp.read()
    assert time.monotonic() - t0 >= 0.3
    assert await charge_count(http, host, "pay_h") == 0  # read, never processed
    _, counts = await ctl(http, host, "GET", "/_sim/toy/requests")
    assert counts["by_operation"] == {"create_charge": 1}
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "normal"})
    assert (await charge(http, host, "pay_h")).status == 201


async def test_stop_does_not_wait_for_hung_requests() -> None:
    h = SimulatorHost([ToySimulator()], control_port=None)
    await h.start()
    h.simulator("toy").faults = FaultSettings(mode=FaultMode.HANG)
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(f"{h.base_url('toy')}/charges",
                                          json={"amount": 1, "reference": "x"}))

        async def arrived() -> bool:
            return h.simulator("toy").requests.count() == 1

        await eventually(arrived)
        t0 = time.monotonic()
        await h.stop()
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(aiohttp.ClientError):
            await task


async def test_drop_after_process(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "drop_after_process"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await charge(http, host, "pay_d")
    assert await charge_count(http, host, "pay_d") == 1  # processed although unanswered


async def test_drop_after_process_seen_by_requests(host: SimulatorHost,
                                                   http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "drop_after_process"})

    def post() -> BaseException:
        try:
            requests.post(f"{host.base_url('toy')}/charges", timeout=5,
                          json={"amount": 1, "reference": "pay_r"})
        except requests.ConnectionError as exc:
            return exc
        raise AssertionError("expected a ConnectionError")

    exc = await asyncio.to_thread(post)
    assert "RemoteDisconnected" in repr(exc)
    assert await charge_count(http, host, "pay_r") == 1


async def test_latency(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"latency_ms": 300})
    t0 = time.monotonic()
    assert (await charge(http, host)).status == 201
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    assert (await charge(http, host, name="other")).status == 201
    assert time.monotonic() - t0 < 0.3


async def test_error_rate_and_rate_limit(host: SimulatorHost,
                                         http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"error_rate": 1.0, "error_status": 502})
    resp = await charge(http, host, "pay_e")
    assert resp.status == 502
    await ctl(http, host, "POST", "/_sim/toy/faults", {"rate_limit_rate": 1.0})
    assert (await charge(http, host, "pay_e")).status == 429
    assert await charge_count(http, host, "pay_e") == 0  # injected answers process nothing
    _, counts = await ctl(http, host, "GET", "/_sim/toy/requests")
    assert counts["total"] == 2


async def test_partial_error_rate_mixes_outcomes(host: SimulatorHost,
                                                 http: aiohttp.ClientSession) -> None:
    await ctl(http, host, "POST", "/_sim/toy/faults", {"error_rate": 0.5})
    statuses = [(await charge(http, host, "pay_m")).status for _ in range(40)]
    assert set(statuses) == {201, 500}
    assert await charge_count(http, host, "pay_m") == statuses.count(201)


async def test_counts_charges_and_reset(host: SimulatorHost, http: aiohttp.ClientSession) -> None:
    await charge(http, host, "pay_a")
    await charge(http, host, "pay_a")
    await charge(http, host, "pay_b")
    async with http.get(f"{host.base_url('toy')}/charges/ch_1") as resp:
        assert resp.status == 200
    await charge(http, host, "pay_a", name="other")
    _, counts = await ctl(http, host, "GET", "/_sim/toy/requests")
    assert counts == {"total": 4, "by_operation": {"create_charge": 3, "get_charge": 1}}
    _, charges = await ctl(http, host, "GET", "/_sim/toy/charges?reference=pay_a")
    assert charges == {"charges": [
        {"id": "ch_1", "amount": 100, "currency": "EUR", "status": "captured",
         "amount_captured": 100, "amount_refunded": 0},
        {"id": "ch_2", "amount": 100, "currency": "EUR", "status": "captured",
         "amount_captured": 100, "amount_refunded": 0}]}
    assert await charge_count(http, host, "nobody") == 0

    await ctl(http, host, "POST", "/_sim/other/reset")
    assert await charge_count(http, host, "pay_a", "other") == 0
    assert await charge_count(http, host, "pay_a") == 2

    await ctl(http, host, "POST", "/_sim/toy/faults", {"mode": "refuse", "latency_ms": 9})
    status, body = await ctl(http, host, "POST", "/_sim/reset")
    assert status == 200 and body == {"reset": ["toy", "other"]}
    assert host.is_listening("toy")
    assert (await ctl(http, host, "GET", "/_sim/toy/faults"))[1]["mode"] == "normal"
    assert (await ctl(http, host, "GET", "/_sim/toy/requests"))[1] == {"total": 0,
                                                                      "by_operation": {}}
    assert await charge_count(http, host, "pay_a") == 0


async def test_in_process_api_and_fixed_ports() -> None:
    first = SimulatorHost([ToySimulator()], control_port=None)
    await first.start()
    port = first.port("toy")
    await first.stop()
    h = SimulatorHost([ToySimulator()], ports={"toy": port}, control_port=None)
    async with h:
        assert h.port("toy") == port and h.control_url is None
        await h.set_faults("toy", {"mode": "refuse"})
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await h.reset("toy")
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()


async def test_sandbox_cli_runs_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from providers.sandbox import sandbox_main; "
        "sys.exit(sandbox_main(sys.argv[1:]))", "--stripe-port", "0", "--control-port", "0",
        "--braintree-port", "0", "--adyen-port", "0",
        "--webhook-url", "stripe=http://127.0.0.1:9/hooks",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert ready["event"] == "sandbox_listening"
        assert set(ready["ports"]) >= {"stripe", "control"}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{ready['control_url']}/_sim/stripe/requests") as resp:
                assert resp.status == 200 and (await resp.json())["total"] == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_sandbox_cli_rejects_bad_webhook_flag() -> None:
    from providers.sandbox import sandbox_main

    with pytest.raises(SystemExit) as info:
        sandbox_main(["--webhook-url", "stripe"])
    assert info.value.code == 2
