"""A capture's stored idempotency answer (written with the capture's result, one write,
issue #15): a success is stored and replayed as its 200; a provider's refusal is stored
and replayed as its 409. Real simulators, SQLite and Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import STORE
from gateway.config import load_config
from gateway.store import ClaimOutcome
from providers.sandbox import start_sandbox
from tests.gateway_harness import headers, write_config
from tests.unit.gateway.api import test_webhooks_api as hooks
from tests.unit.gateway.api.test_webhooks_api import Env, adyen_code, adyen_item, resign_adyen


@pytest.fixture
async def wenv(store_url: str, tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Env]:
    """The webhook tests' environment (simulators in process, their webhooks recorded)."""
    host = await start_sandbox(
        "127.0.0.1", ports={"stripe": 0, "braintree": 0, "adyen": 0}, control_port=None,
        names=["stripe", "braintree", "adyen"],
        webhook_secrets={"stripe": hooks.STRIPE_SECRET, "adyen": hooks.ADYEN_KEY,
                         "braintree": hooks.BT_PRIVATE})
    try:
        rec = {}
        for name in ("stripe", "braintree", "adyen"):
            sim: Any = host.simulator(name)
            sim.async_delay_s = 0.2
            rec[name] = sim.webhooks = hooks.Recorder()
        config = load_config(write_config(tmp_path, store_url,
                                          providers=hooks.providers_config(host)))
        app = create_app(config)
        yield Env(await aiohttp_client(app), app, host, rec)
    finally:
        await host.stop()


async def _post(env: Env, path: str, idem: str) -> tuple[int, dict[str, Any], str | None]:
    r = await env.client.post(path, data=json.dumps({}), headers=headers(idem=idem))
    return r.status, await r.json(), r.headers.get("Idempotent-Replayed")


async def _stored_answer(env: Env, idem: str) -> dict[str, Any] | None:
    claim = await env.app[STORE].claim_idempotency("acme", idem, "not-this-one", 1, 1)
    assert claim.outcome is ClaimOutcome.MISMATCH and claim.record is not None
    return claim.record.response


async def test_capture_success_answer_stored_with_the_result(wenv: Env) -> None:
    env = wenv
    pay = await env.create("fa-ok", "stripe", capture="manual")
    pid = pay["id"]
    status, done, replayed = await _post(env, f"/v1/payments/{pid}/capture", "fa-ok-c")
    assert status == 200 and done["status"] == "captured" and replayed is None
    assert await _stored_answer(env, "fa-ok-c") == {"status": 200, "payment_id": pid}
    status, again, replayed = await _post(env, f"/v1/payments/{pid}/capture", "fa-ok-c")
    assert (status, again["status"], replayed) == (200, "captured", "true")


async def test_capture_refused_answer_is_the_409(wenv: Env) -> None:
    env = wenv
    pay = await env.create("fa-ref", "adyen", capture="manual")
    psp, pid = pay["provider_reference"], pay["id"]
    status, pay, _ = await _post(env, f"/v1/payments/{pid}/capture", "fa-ref-c")
    assert pay["status"] == "capture_pending"
    body, hdrs = await env.sent("adyen", adyen_code("CAPTURE", psp))
    status, _answer = await env.hook("adyen", resign_adyen(adyen_item(body), success="false"),
                                     hdrs)
    assert status == 200 and (await env.get(pid))["status"] == "authorized"
    # the simulator captured for real: a new capture is refused by the provider
    status, err, _ = await _post(env, f"/v1/payments/{pid}/capture", "fa-ref-c2")
    assert status == 409 and err["error"]["code"] == "provider_refused", err
    stored = await _stored_answer(env, "fa-ref-c2")
    assert stored is not None and stored["status"] == 409
    assert stored["error"]["error"]["code"] == "provider_refused"
    status, again, replayed = await _post(env, f"/v1/payments/{pid}/capture", "fa-ref-c2")
    assert (status, again["error"]["code"], replayed) == (409, "provider_refused", "true")
