"""Crash safety with real processes: kill -9 the gateway mid-authorization, restart it,
retry with the same Idempotency-Key -> no second PaymentIntent; the payment resolves to the
simulator's authorization. Runs on SQLite and on Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config

pytestmark = pytest.mark.slow


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[int, int]]:
    stripe_port, control_port = free_port(), free_port()
    proc = _spawn(["sandbox", "--host", "127.0.0.1", "--stripe-port", str(stripe_port),
                   "--control-port", str(control_port)], tmp_path / "sandbox.log")
    try:
        yield stripe_port, control_port
    finally:
        _stop(proc)


async def _http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_kill_9_mid_authorization_then_retry_makes_no_second_charge(
    store_url: str, tmp_path: Path, sandbox: tuple[int, int]
) -> None:
    stripe_port, control_port = sandbox
    config = write_config(
        tmp_path, store_url, request_deadline_s=3,
        providers={"stripe_main": {"type": "stripe", "api_key": "sk_test_crash",
                                   "base_url": f"http://127.0.0.1:{stripe_port}",
                                   "currencies": ["EUR"], "timeout_s": 10}},
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sim = SimControl(f"http://127.0.0.1:{control_port}", session)
        await wait_for(lambda: _http_ok(session, f"{sim.base}/_sim/stripe/faults"), timeout=20)
        await sim.faults("stripe", latency_ms=2000)

        gateway = _spawn(["serve", "--config", str(config), "--port", str(port)], log)
        try:
            await wait_for(lambda: _http_ok(session, f"{base}/healthz"), timeout=30)
            body = json.dumps(payment_body(amount=4200))
            first = asyncio.create_task(session.post(f"{base}/v1/payments", data=body,
                                                     headers=headers(idem="crash-1")))

            async def in_flight() -> bool:
                return (await sim.requests("stripe")).get("total", 0) >= 1

            await wait_for(in_flight, timeout=10)
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait(timeout=10)
            with pytest.raises(aiohttp.ClientError):
                await first
        finally:
            _stop(gateway)

        gateway = _spawn(["serve", "--config", str(config), "--port", str(port)], log)
        try:
            await wait_for(lambda: _http_ok(session, f"{base}/healthz"), timeout=30)

            async def retry() -> tuple[int, dict] | None:
                async with session.post(f"{base}/v1/payments", data=body,
                                        headers=headers(idem="crash-1")) as r:
                    if r.status == 409:  # the crashed owner's lease has not lapsed yet
                        return None
                    return r.status, await r.json()

            status, pay = await wait_for(retry, timeout=30, interval=0.25)
            assert status == 201, pay
            assert pay["status"] in ("pending", "unknown", "authorized")

            async def authorized() -> dict | None:
                async with session.get(f"{base}/v1/payments/{pay['id']}",
                                       headers=headers()) as r:
                    p = await r.json()
                    return p if p["status"] == "authorized" else None

            final = await wait_for(authorized, timeout=30)
            charges = await sim.charges("stripe", pay["id"])
            assert len(charges) == 1, charges
            assert final["provider_reference"] == charges[0]["id"]
            assert final["amount_authorized"] == 4200
            # the create was received once by the simulator, plus idempotent replays only
            assert (await sim.requests("stripe")).get("total", 0) >= 1
        finally:
            _stop(gateway)
    assert "4242" not in log.read_text()
