"""Money safety while a provider may still act (SPEC 5.1, 9.1): the fault model includes a
provider that keeps working after the gateway stopped waiting (``late_process``, Braintree
``search_lag_ms``), follow-ups that crash half way, and answers that are not final.

In-process gateway + in-process simulators (unmodified SDKs over HTTP); the simulators'
control API is the witness of what the provider really holds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import ORCHESTRATOR, SANDBOX_PORTS, STORE
from gateway.config import ConfigError, load_config
from gateway.idempotency import fingerprint
from gateway.metrics import REGISTRY
from gateway.model import derived_id, snapshot, store_snapshot
from gateway.orchestrator import _op_key
from gateway.payment_writer import PaymentWriter
from gateway.reconcile import Reconciler
from gateway.state_machine import reserve_refund
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import free_port

SIM_OF = {"stripe_p": "stripe", "bt_p": "braintree", "adyen_p": "adyen"}
FAST = {"timeout_s": 0.5, "connect_timeout_s": 0.5}


def provider_configs() -> dict[str, dict[str, Any]]:
    return {
        "stripe_p": {"type": "stripe", "sandbox": True, "currencies": ["EUR"], **FAST},
        "bt_p": {"type": "braintree", "sandbox": True, "currencies": ["EUR"], **FAST},
        "adyen_p": {"type": "adyen", "sandbox": True, "currencies": ["EUR"], **FAST,
                    "merchant_account": "SafetyECOM"},
    }


@dataclass
class Env:
    client: TestClient
    sim: SimControl

    @property
    def app(self):
        return self.client.server.app

    def reconciler(self) -> Reconciler:
        orch = self.app[ORCHESTRATOR]
        return Reconciler(orch.config, self.app[STORE], orch)

    async def post(self, path: str, idem: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
        r = await self.client.post(path, data=json.dumps(body), headers=headers(idem=idem))
        return r.status, await r.json(), r.headers

    async def pay(self, idem: str, **kw: Any) -> dict[str, Any]:
        status, pay, _ = await self.post("/v1/payments", idem, payment_body(**kw))
        assert status == 201, pay
        return pay

    async def get(self, pid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/payments/{pid}", headers=headers())
        return await r.json()

    async def events(self, pid: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/payments/{pid}/events", headers=headers())
        return (await r.json())["data"]

    async def charges(self, pid: str) -> dict[str, list[dict[str, Any]]]:
        return {name: await self.sim.charges(sim, pid) for name, sim in SIM_OF.items()}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def make_env(tmp_path: Path, store_url: str, aiohttp_client,
                   session: aiohttp.ClientSession, routing: list[str],
                   providers: dict[str, dict[str, Any]] | None = None,
                   webhooks: bool = True, **cfg: Any) -> Env:
    (tmp_path / "routing.yaml").write_text(
        "version: 1\nrules:\n  - name: default\n    providers: [" + ", ".join(routing) + "]\n")
    cfg.setdefault("request_deadline_s", 3)
    cfg.setdefault("reconciliation", {"enabled": False, "min_age_s": 3})
    cfg.setdefault("retry", {"attempts": 2, "backoff_s": 0.02, "backoff_max_s": 0.05,
                             "jitter_s": 0.01})
    config = write_config(tmp_path, store_url, providers=providers or provider_configs(),
                          routing_file="routing.yaml", **cfg)
    port = free_port()  # the simulators deliver their webhooks to this gateway
    app = create_app(load_config(config),
                     public_url=f"http://127.0.0.1:{port}" if webhooks else None)
    client = await aiohttp_client(app, server_kwargs={"port": port})
    return Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session))


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------- still working after we gave up

PRIMARIES = {"stripe_p": "bt_p", "bt_p": "stripe_p", "adyen_p": "stripe_p"}


async def _lift_after_first_request(env: Env, sim: str) -> None:
    """Back to normal as soon as the first request arrived: it alone is processed late,
    retries and lookups are answered at once (while it is still being worked on)."""
    async def seen() -> bool:
        return (await env.sim.requests(sim)).get("total", 0) >= 1

    await wait_for(seen, timeout=10, interval=0.01)
    await env.sim.faults(sim, mode="normal")


@pytest.mark.parametrize("primary", list(PRIMARIES))
async def test_late_processing_primary_is_never_failed_over_and_ends_as_the_provider_says(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
    primary: str,
) -> None:
    """The primary reads the authorization and processes it 2 s later, after the gateway
    gave up waiting; its retries and lookup, answered at once (the fault was lifted as
    soon as the first request arrived), find nothing final. The payment must stay
    ``unknown`` at the primary -- never charged at the healthy secondary -- and end, after
    reconciliation, exactly as the primary holds it."""
    secondary = PRIMARIES[primary]
    env = await make_env(tmp_path, store_url, aiohttp_client, session, [primary, secondary])
    sim = SIM_OF[primary]
    late = {"mode": "late_process", "late_process_ms": 2000}
    if sim == "braintree":
        late["search_lag_ms"] = 1500
    await env.sim.faults(sim, **late)

    lifter = asyncio.create_task(_lift_after_first_request(env, sim))
    pay = await env.pay(f"late-{primary}", capture="manual")
    await lifter
    assert pay["provider"] == primary and pay["status"] in ("unknown", "authorized"), pay
    assert [a["provider"] for a in pay["attempts"]] == [primary], pay

    async def processed() -> list[dict[str, Any]]:
        return (await env.charges(pay["id"]))[primary]

    [charge] = await wait_for(processed, timeout=10)
    assert (await env.charges(pay["id"]))[secondary] == []
    assert (await env.sim.requests(SIM_OF[secondary])).get("total", 0) == 0

    async def reconciled() -> dict[str, Any] | None:
        await env.reconciler().run_once(now=time.time() + 60)
        done = await env.get(pay["id"])
        return done if done["status"] == "authorized" else None

    done = await wait_for(reconciled, timeout=15, interval=0.3)
    assert done["status"] != "failed"
    assert done["provider"] == primary and done["provider_reference"] == charge["id"]
    assert done["amount_authorized"] == charge["amount"] == 1000
    assert charge["status"] not in ("voided", "failed")
    assert (await env.charges(pay["id"]))[secondary] == []
    statuses = [e.get("to_status") for e in await env.events(pay["id"])
                if e["type"] == "status_changed"]
    assert "failed" not in statuses


async def test_braintree_search_miss_inside_the_proof_window_is_not_proof(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    """A Braintree sale processed late and not yet searchable: reconciliation's search
    finds nothing but the payment stays unknown (not failed) until the sale shows up."""
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["bt_p", "stripe_p"])
    await env.sim.faults("braintree", mode="late_process", late_process_ms=1500,
                         search_lag_ms=3000)
    pay = await env.pay("bt-lag", capture="manual")
    assert pay["status"] == "unknown" and pay["provider"] == "bt_p", pay

    async def processed() -> list[dict[str, Any]]:
        return (await env.charges(pay["id"]))["bt_p"]

    [charge] = await wait_for(processed, timeout=10)
    await env.sim.faults("braintree", mode="normal")
    report = await env.reconciler().run_once(now=time.time() + 60)
    assert [u.payment_id for u in report.unresolved] == [pay["id"]]
    assert (await env.get(pay["id"]))["status"] == "unknown"

    async def reconciled() -> dict[str, Any] | None:
        await env.reconciler().run_once(now=time.time() + 60)
        done = await env.get(pay["id"])
        return done if done["status"] == "authorized" else None

    done = await wait_for(reconciled, timeout=15, interval=0.3)
    assert done["provider_reference"] == charge["id"]
    assert (await env.charges(pay["id"]))["stripe_p"] == []


async def test_reconciliation_never_races_a_slow_live_call(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    """Issue #9 case 2: the provider answers in 3.5 s while the loop runs every 0.3 s with
    min_age_s = request_deadline_s = 2 s. The pass skips the live payment; it ends
    authorized, never failed."""
    providers = provider_configs()
    providers["bt_p"].update(timeout_s=6)
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["bt_p"],
                         providers=providers, request_deadline_s=2,
                         reconciliation={"interval_s": 0.3, "min_age_s": 2})
    await env.sim.faults("braintree", latency_ms=3500)
    task = asyncio.create_task(env.pay("slow-live", capture="automatic"))

    async def in_flight() -> bool:
        return (await env.sim.requests("braintree")).get("total", 0) >= 1

    await wait_for(in_flight, timeout=10, interval=0.01)
    report = await env.reconciler().run_once(now=time.time() + 2.5)  # older than min_age_s
    assert report.skipped_live == 1 and report.examined == 0, report.render()
    pay = await task
    assert pay["status"] == "captured", pay
    [charge] = (await env.charges(pay["id"]))["bt_p"]
    assert charge["amount_captured"] == pay["amount_captured"] == 1000
    statuses = [e.get("to_status") for e in await env.events(pay["id"])
                if e["type"] == "status_changed"]
    assert "failed" not in statuses


async def test_min_age_below_the_request_deadline_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}", request_deadline_s=10,
                        reconciliation={"min_age_s": 2})
    with pytest.raises(ConfigError, match="min_age_s"):
        load_config(path)


# --------------------------------------------------------------- "no money moved" overturned


async def test_a_wrong_failed_is_corrected_by_the_providers_webhook(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    """A Braintree account configured with a provider deadline shorter than the provider
    really takes (lookup_proof_after_s: 0.6 s, the sale processed 2.5 s late):
    reconciliation fails the payment on its "proof", then Braintree settles the sale and
    says so by webhook. The webhook is applied as a correction (audited, counted), never
    ignored as a transition out of ``failed``."""
    providers = provider_configs()
    providers["bt_p"].update(lookup_proof_after_s=0.6)
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["bt_p"],
                         providers=providers, retry={"attempts": 1})
    await env.sim.faults("braintree", mode="late_process", late_process_ms=2500)
    before = _metric("gateway_reconciliation_corrections_total",
                     {"provider": "bt_p", "from_status": "failed", "to_status": "captured"})
    lifter = asyncio.create_task(_lift_after_first_request(env, "braintree"))
    pay = await env.pay("wrong-failed", capture="automatic")
    await lifter
    assert pay["status"] == "unknown", pay  # the lookup came before the declared deadline
    sent = time.time()

    async def declared_deadline_passed() -> bool:
        return time.time() > sent + 0.6

    await wait_for(declared_deadline_passed, timeout=2, interval=0.02)
    await env.reconciler().run_once(now=time.time() + 60)
    failed = await env.get(pay["id"])
    assert failed["status"] == "failed" and failed["failure"]["code"] == "not_created", failed
    assert (await env.charges(pay["id"]))["bt_p"] == []  # not processed yet

    async def corrected() -> dict[str, Any] | None:
        p = await env.get(pay["id"])
        return p if p["status"] == "captured" else None

    done = await wait_for(corrected, timeout=15, interval=0.1)
    [charge] = (await env.charges(pay["id"]))["bt_p"]
    assert done["amount_captured"] == charge["amount_captured"] == 1000
    assert done["failure"] is None
    fixes = [e for e in await env.events(pay["id"]) if e.get("correction")]
    assert [(e["from_status"], e["to_status"]) for e in fixes] == [("failed", "captured")]
    assert fixes[0]["source"] == "webhook:bt_p"
    assert _metric("gateway_reconciliation_corrections_total",
                   {"provider": "bt_p", "from_status": "failed",
                    "to_status": "captured"}) == before + 1


# --------------------------------------------------------------- follow-ups: write-ahead, resumable


async def _crashed_capture(env: Env, provider: str, idem: str, *, lease_left_s: float = -1.0,
                           provider_captured: bool = True) -> dict[str, Any]:
    """A capture as a gateway that died mid-request leaves it: the operation recorded
    (write-ahead), the provider called with its key (or not), the merchant's claim open."""
    pay = await env.pay(f"auth-{idem}", capture="manual")
    assert pay["status"] == "authorized" and pay["provider"] == provider, pay
    orch, store = env.app[ORCHESTRATOR], env.app[STORE]
    key = _op_key(pay["id"], "capture", idem)
    doc = await store.get_payment(pay["id"])
    assert doc is not None
    if provider_captured:
        await orch.providers[provider].capture(orch._ref(doc), 1000, key)

    def crashed(d: dict[str, Any]) -> list[dict[str, Any]]:
        started = time.time() - 30
        d["_operation"] = {"op": "capture", "amount": 1000, "key": key, "started_at": started,
                           "lease_until": time.time() + lease_left_s}
        return []

    await PaymentWriter(store, None).mutate(pay["id"], crashed)
    fp = fingerprint("POST", f"/v1/payments/{pay['id']}/capture", {})
    lapses_at = time.time() + 0.05
    await store.claim_idempotency("acme", idem, fp, 0.05, 86400)

    async def lapsed() -> bool:  # the crashed request's claim lapses before any retry
        return time.time() > lapses_at

    await wait_for(lapsed, timeout=2, interval=0.01)
    return pay


FOLLOW_UP_PROVIDERS = ["stripe_p", "bt_p"]
# The crashed follow-up tests run without provider webhooks, so the gateway's own resume
# logic (not a webhook that happens to confirm the capture) is what is tested.
NO_HOOKS = {"webhooks": False}


@pytest.mark.parametrize("provider", FOLLOW_UP_PROVIDERS)
async def test_retry_of_a_crashed_capture_with_its_key_returns_its_real_outcome(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
    provider: str,
) -> None:
    env = await make_env(tmp_path, store_url, aiohttp_client, session, [provider], **NO_HOOKS)
    pay = await _crashed_capture(env, provider, "cap-crash-1")
    path = f"/v1/payments/{pay['id']}/capture"
    for _ in range(2):  # the resumed answer, then its remembered replay
        status, body, _ = await env.post(path, "cap-crash-1", {})
        assert status == 200, body
        assert body["status"] == "captured" and body["amount_captured"] == 1000
    [charge] = (await env.charges(pay["id"]))[provider]
    assert charge["amount_captured"] == 1000


@pytest.mark.parametrize("provider", FOLLOW_UP_PROVIDERS)
async def test_other_requests_get_409_only_while_the_crashed_operation_lease_is_live(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
    provider: str,
) -> None:
    env = await make_env(tmp_path, store_url, aiohttp_client, session, [provider], **NO_HOOKS)
    pay = await _crashed_capture(env, provider, "cap-crash-2", lease_left_s=1.0)
    void = f"/v1/payments/{pay['id']}/void"
    status, body, _ = await env.post(void, "void-after-crash", {})
    assert status == 409 and body["error"]["code"] == "operation_in_progress", body

    async def definite() -> tuple[int, Any] | None:
        s, b, h = await env.post(void, "void-after-crash", {})
        if s == 409 and b["error"]["code"] == "operation_in_progress":
            assert h.get("Idempotent-Replayed") != "true"  # a transient 409 is not kept
            return None
        return s, b

    status, body = await wait_for(definite, timeout=5, interval=0.1)
    # The stale capture was finished first (same provider key), so the void now gets the
    # definite answer: the payment is captured.
    assert status == 409 and body["error"]["code"] == "invalid_state", body
    done = await env.get(pay["id"])
    [charge] = (await env.charges(pay["id"]))[provider]
    assert done["status"] == "captured"
    assert done["amount_captured"] == charge["amount_captured"] == 1000
    status, body, _ = await env.post(f"/v1/payments/{pay['id']}/capture", "cap-crash-2", {})
    assert status == 200 and body["status"] == "captured", body


@pytest.mark.parametrize("provider_captured", [True, False])
@pytest.mark.parametrize("provider", FOLLOW_UP_PROVIDERS)
async def test_reconciliation_resumes_a_crashed_capture_whatever_the_status(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
    provider: str, provider_captured: bool,
) -> None:
    """Nobody retries: the payment still says ``authorized``; one reconciliation pass
    resumes the recorded capture with its key, so gateway and provider agree."""
    env = await make_env(tmp_path, store_url, aiohttp_client, session, [provider], **NO_HOOKS)
    pay = await _crashed_capture(env, provider, "cap-crash-3",
                                 provider_captured=provider_captured)
    report = await env.reconciler().run_once(now=time.time() + 60)
    assert report.examined == 1, report.render()
    done = await env.get(pay["id"])
    [charge] = (await env.charges(pay["id"]))[provider]
    assert done["status"] == "captured", done
    assert done["amount_captured"] == charge["amount_captured"] == 1000
    status, body, _ = await env.post(f"/v1/payments/{pay['id']}/capture", "cap-crash-3", {})
    assert status == 200 and body["amount_captured"] == 1000, body


async def test_reconciliation_leaves_a_live_operation_alone(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["stripe_p"],
                         **NO_HOOKS)
    pay = await _crashed_capture(env, "stripe_p", "cap-live", lease_left_s=30,
                                 provider_captured=False)
    report = await env.reconciler().run_once(now=time.time() + 10)  # older than min_age_s
    assert report.skipped_live == 1 and report.examined == 0
    assert (await env.get(pay["id"]))["status"] == "authorized"
    [charge] = (await env.charges(pay["id"]))["stripe_p"]
    assert charge["amount_captured"] == 0


# --------------------------------------------------------------- only final answers are kept


async def test_a_void_refused_during_a_capture_that_failed_safely_can_be_retried(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    """The capture takes 0.3 s and then fails safely (429 -> 503, nothing changed); a void
    sent meanwhile gets 409 operation_in_progress. That 409 is not the key's answer: the
    void retried with the same key voids the payment."""
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["stripe_p"])
    pay = await env.pay("auth-cap-void", capture="manual")
    await env.sim.faults("stripe", latency_ms=300, rate_limit_rate=1.0)
    capture = asyncio.create_task(env.post(f"/v1/payments/{pay['id']}/capture", "cap-429", {}))

    async def capture_in_flight() -> bool:
        return (await env.sim.requests("stripe")).get("by_operation", {}).get(
            "capture_payment_intent", 0) >= 1

    await wait_for(capture_in_flight, timeout=10, interval=0.01)
    void = f"/v1/payments/{pay['id']}/void"
    status, body, _ = await env.post(void, "void-1", {})
    assert status == 409 and body["error"]["code"] == "operation_in_progress", body
    status, body, hdrs = await capture
    assert status == 503 and "Retry-After" in hdrs, body
    await env.sim.faults("stripe", latency_ms=0, rate_limit_rate=0.0)
    status, body, hdrs = await env.post(void, "void-1", {})
    assert status == 200 and body["status"] == "voided", body
    assert hdrs.get("Idempotent-Replayed") != "true"
    [charge] = (await env.charges(pay["id"]))["stripe_p"]
    assert charge["status"] == "canceled"


async def test_a_request_in_progress_409_is_not_the_keys_answer(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["stripe_p"])
    await env.sim.faults("stripe", latency_ms=700)
    body = payment_body(capture="manual")
    first = asyncio.create_task(env.post("/v1/payments", "same-key", body))

    async def in_flight() -> bool:
        return (await env.sim.requests("stripe")).get("total", 0) >= 1

    await wait_for(in_flight, timeout=10, interval=0.01)
    status, err, hdrs = await env.post("/v1/payments", "same-key", body)
    assert status == 409 and err["error"]["code"] == "idempotency_request_in_progress"
    assert "Retry-After" in hdrs
    status, pay, _ = await first
    assert status == 201 and pay["status"] == "authorized"
    status, again, hdrs = await env.post("/v1/payments", "same-key", body)
    assert status == 201 and again["id"] == pay["id"], again
    assert hdrs.get("Idempotent-Replayed") == "true"
    assert len((await env.charges(pay["id"]))["stripe_p"]) == 1


# --------------------------------------------------------------- refunds: write-ahead, resumable


async def _crashed_refund(env: Env, provider: str, idem: str) -> dict[str, Any]:
    """A refund as a gateway that died mid-request leaves it: reserved and recorded
    in flight (write-ahead), sent to the provider with its key, the answer never stored."""
    pay = await env.pay(f"auth-{idem}", capture="automatic")
    assert pay["status"] == "captured" and pay["provider"] == provider, pay
    orch, store = env.app[ORCHESTRATOR], env.app[STORE]
    refund_id = derived_id("ref_", "acme", idem)
    key = f"{pay['id']}:refund:{refund_id}"
    doc = await store.get_payment(pay["id"])
    assert doc is not None
    await orch.providers[provider].refund(orch._ref(doc), refund_id, 400, key)

    def crashed(d: dict[str, Any]) -> list[dict[str, Any]]:
        store_snapshot(d, reserve_refund(snapshot(d), 400))
        d["refunds"].append({"id": refund_id, "amount": 400, "status": "pending",
                             "provider_reference": None, "reason": None,
                             "created_at": pay["created_at"], "_key": key,
                             "_in_flight": True, "_live_until": time.time() - 1})
        return []

    await PaymentWriter(store, None).mutate(pay["id"], crashed)
    return pay


@pytest.mark.parametrize("resumed_by", ["retry", "reconciliation"])
@pytest.mark.parametrize("provider", FOLLOW_UP_PROVIDERS)
async def test_a_crashed_refund_is_resumed_once_with_its_key(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
    provider: str, resumed_by: str,
) -> None:
    env = await make_env(tmp_path, store_url, aiohttp_client, session, [provider], **NO_HOOKS)
    pay = await _crashed_refund(env, provider, f"ref-crash-{resumed_by}")
    if resumed_by == "retry":
        status, body, _ = await env.post(f"/v1/payments/{pay['id']}/refunds",
                                         f"ref-crash-{resumed_by}", {"amount": 400})
        assert status == 201, body
    else:
        report = await env.reconciler().run_once(now=time.time() + 60)
        assert report.examined == 1, report.render()
    done = await env.get(pay["id"])
    [charge] = (await env.charges(pay["id"]))[provider]
    assert done["status"] == "partially_refunded", done
    assert [r["status"] for r in done["refunds"]] == ["succeeded"]
    assert done["amount_refunded"] == charge["amount_refunded"] == 400


# --------------------------------------------------------------- stored 500s, replay window


async def test_a_stored_stripe_500_is_resolved_by_search_not_looped_on(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
) -> None:
    """Stripe executed the create, answered 500 and stored that 500 for the key: every
    replay returns it. The gateway finds the PaymentIntent by search instead, and never
    moves the payment to the secondary."""
    env = await make_env(tmp_path, store_url, aiohttp_client, session, ["stripe_p", "bt_p"])
    await env.sim.faults("stripe", error_rate=1.0, error_status=500, error_after_process=True)

    async def lift() -> None:
        async def seen() -> bool:
            return (await env.sim.requests("stripe")).get("total", 0) >= 1

        await wait_for(seen, timeout=10, interval=0.01)
        await env.sim.faults("stripe", error_rate=0.0)

    lifter = asyncio.create_task(lift())
    pay = await env.pay("stored-500", capture="manual")
    await lifter
    [pi] = (await env.charges(pay["id"]))["stripe_p"]
    assert pay["status"] == "authorized" and pay["provider_reference"] == pi["id"], pay
    assert (await env.charges(pay["id"]))["bt_p"] == []
    ops = (await env.sim.requests("stripe"))["by_operation"]
    assert ops.get("search_payment_intents", 0) >= 1
    assert ops.get("create_payment_intent", 0) <= 3  # the first try, its retry, one replay


@pytest.mark.parametrize("provider", ["stripe_p", "adyen_p"])
async def test_past_the_replay_window_reconciliation_only_looks_up_and_flags(
    tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession,
    provider: str,
) -> None:
    """An unknown payment older than replay_window_s: no replay that could create it
    (the customer may have given up). Stripe is asked by search; Adyen, which has no
    lookup but the replay, is not called at all and the payment is flagged."""
    env = await make_env(tmp_path, store_url, aiohttp_client, session, [provider],
                         reconciliation={"enabled": False, "min_age_s": 3,
                                         "replay_window_s": 600}, **NO_HOOKS)
    sim = SIM_OF[provider]
    await env.sim.faults(sim, mode="drop_after_process")
    pay = await env.pay(f"window-{provider}", capture="manual")
    assert pay["status"] == "unknown", pay
    await env.sim.faults(sim, mode="normal")
    before = await env.sim.requests(sim)
    report = await env.reconciler().run_once(now=time.time() + 601)
    [charge] = (await env.charges(pay["id"]))[provider]
    done = await env.get(pay["id"])
    ops = (await env.sim.requests(sim))["by_operation"]
    if provider == "stripe_p":
        assert done["status"] == "authorized" and done["provider_reference"] == charge["id"]
        # no replay of the create by reconciliation: it searched
        assert ops["create_payment_intent"] == before["by_operation"]["create_payment_intent"]
        assert ops.get("search_payment_intents") == 1
    else:
        assert (await env.sim.requests(sim))["total"] == before["total"]  # not replayed
        assert done["status"] == "unknown"
        [unresolved] = report.unresolved
        assert unresolved.reason.startswith("replay window passed"), unresolved
        flags = [e for e in await env.events(pay["id"]) if e["type"] == "flagged"]
        assert len(flags) == 1 and "operator" in flags[0]["reason"]
        assert _metric("gateway_payments_unresolved", {"provider": provider}) >= 1
