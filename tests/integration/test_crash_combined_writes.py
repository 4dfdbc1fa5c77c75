"""Crash safety of the two-write hot path (issue #15 item 1), with real processes on
SQLite and Redis: a new payment is ONE store write before the provider call (the
idempotency claim with the payment and its first attempt) and ONE after (the provider's
answer with the stored idempotency answer). The gateway is killed (-9) at each of the two
gaps:

* after the first write, before the provider received anything: a proxy between the
  unmodified Stripe SDK and the simulator holds the create request without forwarding it;
* after the provider answered, before the second write: the proxy forwards the create,
  the simulator charges, and the answer is held back from the gateway.

In both, the store holds the write-ahead record (payment ``pending``, its attempt
``in_flight``, the idempotency claim ``in_progress``) at the moment of the kill; after the
restart the merchant's retry with the same key (first gap) or reconciliation and then
the retry (second gap) end the payment authorized with exactly one charge at the
simulator, and the replay answers the same payment."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.model import derived_id
from gateway.store import ClaimOutcome, make_store
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import kill_9, restart_gateway, sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow

_HOP = {"host", "content-length", "accept-encoding", "connection", "transfer-encoding"}
CREATE = "/v1/payment_intents"  # the Stripe SDK's create (POST)


class HoldingProxy:
    """Real HTTP between the Stripe SDK and the simulator. The first create request is
    held: ``before`` -- never forwarded (the provider receives nothing); ``after`` --
    forwarded, its answer read and never returned. Everything else passes through."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream, self.mode = upstream.rstrip("/"), mode
        self.held = asyncio.Event()  # the create is held (mode after: answered upstream)
        self.answer: dict[str, Any] | None = None
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, str, str]:
        assert self._session is not None
        fwd = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=body, headers=fwd) as resp:
            return resp.status, await resp.text(), resp.content_type

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hold = (request.method == "POST" and request.path == CREATE
                and not self.held.is_set())
        if hold and self.mode == "before":
            self.held.set()
            await self._release.wait()  # the gateway is killed meanwhile
            return web.Response(status=503)
        status, text, content_type = await self._forward(request, body)
        if hold:
            self.answer = json.loads(text)
            self.held.set()
            await self._release.wait()
            return web.Response(status=503)
        return web.Response(status=status, text=text, content_type=content_type)

    def release(self) -> None:
        """Let requests pass from now on (the held one answers a gateway that is dead)."""
        self.mode = "pass"
        self._release.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe",)) as ready:
        yield ready


async def _write_ahead_record(store_url: str, payment_id: str) -> dict[str, Any]:
    """What the store holds for the payment now (the gateway is dead): the payment, its
    audit events and the state of its idempotency claim."""
    store = make_store(store_url)
    await store.open()
    try:
        doc = await store.get_payment(payment_id)
        events = await store.list_events(payment_id)
        # another fingerprint: MISMATCH reports the record and writes nothing
        probe = await store.claim_idempotency("acme", payment_id_key(payment_id), "probe",
                                              1, 1)
    finally:
        await store.close()
    assert probe.outcome is ClaimOutcome.MISMATCH and probe.record is not None
    return {"doc": doc, "events": [e["type"] for e in events], "claim": probe.record.state}


_KEYS: dict[str, str] = {}


def payment_id_key(payment_id: str) -> str:
    return _KEYS[payment_id]


def _assert_write_ahead(record: dict[str, Any]) -> None:
    doc = record["doc"]
    assert doc is not None, "the payment was not stored before the provider call"
    assert doc["status"] == "pending"
    assert [(a["provider"], a["outcome"]) for a in doc["attempts"]] == [
        ("stripe_main", "in_flight")]
    assert record["events"] == ["payment_created", "attempt_started"]
    assert record["claim"] == "in_progress"


async def _run(store_url: str, tmp_path: Path, sandbox: dict[str, Any], mode: str,
               idem: str) -> None:
    stripe_url = f"http://127.0.0.1:{sandbox['ports']['stripe']}"
    proxy = HoldingProxy(stripe_url, mode)
    await proxy.start()
    config = write_config(
        tmp_path, store_url, request_deadline_s=2,
        reconciliation={"interval_s": 0.5, "min_age_s": 2},
        providers={"stripe_main": {"type": "stripe", "api_key": "sk_test_combined",
                                   "base_url": proxy.url, "currencies": ["EUR"],
                                   "timeout_s": 1}},
    )
    log = tmp_path / "gateway.log"
    payment_id = derived_id("pay_", "acme", idem)
    _KEYS[payment_id] = idem
    body = json.dumps(payment_body(amount=4400))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        sim = SimControl(f"http://127.0.0.1:{sandbox['ports']['control']}", session)
        gateway, base = await start_gateway(config, log, session)
        try:
            first = asyncio.create_task(session.post(
                f"{base}/v1/payments", data=body, headers=headers(idem=idem)))
            await asyncio.wait_for(proxy.held.wait(), timeout=15)
            creates = (await sim.requests("stripe")).get("by_operation", {}).get(
                "create_payment_intent", 0)
            if mode == "before":  # the provider has received nothing
                assert creates == 0 and await sim.charges("stripe", payment_id) == []
            else:  # the provider charged; its answer never reached the gateway
                assert creates == 1 and proxy.answer is not None
                assert proxy.answer["status"] == "requires_capture"
            kill_9(gateway)
            with pytest.raises(aiohttp.ClientError):
                await first
        finally:
            stop(gateway)
        _assert_write_ahead(await _write_ahead_record(store_url, payment_id))
        proxy.release()

        gateway = await restart_gateway(gateway, base, config, log, session)
        try:
            async def get() -> dict[str, Any]:
                async with session.get(f"{base}/v1/payments/{payment_id}",
                                       headers=headers()) as r:
                    assert r.status == 200
                    return dict(await r.json())

            if mode == "after":
                # reconciliation alone brings it up to date (nobody retries yet)
                async def reconciled() -> dict[str, Any] | None:
                    p = await get()
                    return p if p["status"] == "authorized" else None

                await wait_for(reconciled, timeout=30, interval=0.2)

            async def retry() -> tuple[int, dict[str, Any], str | None] | None:
                async with session.post(f"{base}/v1/payments", data=body,
                                        headers=headers(idem=idem)) as r:
                    if r.status == 409:  # the killed owner's lease has not lapsed yet
                        return None
                    return r.status, await r.json(), r.headers.get("Idempotent-Replayed")

            status, pay, _replayed = await wait_for(retry, timeout=30, interval=0.2)
            assert status == 201, pay
            assert pay["id"] == payment_id

            async def authorized() -> dict[str, Any] | None:
                p = await get()
                return p if p["status"] == "authorized" else None

            final = await wait_for(authorized, timeout=30, interval=0.2)
            charges = await sim.charges("stripe", payment_id)
            assert len(charges) == 1, charges
            assert final["provider_reference"] == charges[0]["id"]
            assert final["amount_authorized"] == 4400
            if mode == "after":
                assert charges[0]["id"] == proxy.answer["id"]  # type: ignore[index]
            # a later retry replays the same payment, nothing sent again
            async with session.post(f"{base}/v1/payments", data=body,
                                    headers=headers(idem=idem)) as r:
                again = await r.json()
                assert r.status == 201 and r.headers.get("Idempotent-Replayed") == "true"
                assert again["id"] == payment_id and again["status"] == "authorized"
            assert len(await sim.charges("stripe", payment_id)) == 1
        finally:
            stop(gateway)
            await proxy.stop()


async def test_kill_9_between_the_first_write_and_the_provider_call(
    store_url: str, tmp_path: Path, sandbox: dict[str, Any]
) -> None:
    await _run(store_url, tmp_path, sandbox, "before", "combined-before")


async def test_kill_9_between_the_provider_answer_and_the_second_write(
    store_url: str, tmp_path: Path, sandbox: dict[str, Any]
) -> None:
    await _run(store_url, tmp_path, sandbox, "after", "combined-after")
