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

from gateway.admission import ADMISSION, Admission, operation_of
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
    assert adm.try_enter("void") and adm.try_enter("void")
    assert not adm.try_enter("void")
    assert shed("void") == before + 1
    adm.leave()
    assert adm.try_enter("void")
    with pytest.raises(ValueError):
        Admission(0)


def test_the_limit_is_configurable_and_validated(tmp_path: Path) -> None:
    default = load_config(write_config(tmp_path / "a", "sqlite:///x.db"))
    assert default.admission.max_in_flight == 64 and default.admission.retry_after_s == 1
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
