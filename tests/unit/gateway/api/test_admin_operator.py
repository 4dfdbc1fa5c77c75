"""Operator tools over the admin API (SPEC 9.2): POST /admin/payments/{id}/sync looks a
payment up at its provider now and applies only what the provider proves (charged once:
authorized; proven never created: failed); POST /admin/payments/{id}/resolve applies an
operator's verdict along the state machine's edges, audited with source operator. Both
refuse while a live request owns the payment (SPEC 9.1), on both stores."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS, STORE
from gateway.config import load_config
from gateway.metrics import REGISTRY
from gateway.payment_writer import PaymentWriter
from tests.gateway_harness import ACME_KEY, SimControl, headers, payment_body, write_config

ADMIN = {"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"}
PROVIDERS = {
    "stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2},
    # short timeouts: a hanging sale and its lookups give up quickly
    "bt_main": {"type": "braintree", "sandbox": True, "currencies": ["EUR"], "timeout_s": 0.5,
                "connect_timeout_s": 0.3},
    "adyen_main": {"type": "adyen", "sandbox": True, "currencies": ["EUR"], "timeout_s": 2,
                   "merchant_account": "OperatorECOM"},
}
SIM_OF = {"stripe_main": "stripe", "bt_main": "braintree", "adyen_main": "adyen"}
#: Past every lease of a request and past Braintree's lookup_proof_after_s (300 s),
#: well inside the replay window (900 s).
AGE_S = 400.0


@dataclass
class Env:
    client: TestClient
    sim: SimControl

    @property
    def store(self):
        return self.client.server.app[STORE]

    async def pay(self, idem: str, provider: str, **kw: Any) -> dict[str, Any]:
        body = payment_body(payment_method={"type": "card", "provider_tokens": {
            provider: kw.pop("token", "tok_visa")}}, **kw)
        r = await self.client.post("/v1/payments", data=json.dumps(body),
                                   headers=headers(idem=idem))
        assert r.status == 201, await r.text()
        return await r.json()

    async def unknown(self, idem: str, provider: str = "stripe_main") -> dict[str, Any]:
        """A payment left unknown by a lost response (the provider did charge it)."""
        sim = SIM_OF[provider]
        await self.sim.faults(sim, mode="drop_after_process")
        pay = await self.pay(idem, provider)
        await self.sim.faults(sim, mode="normal")
        assert pay["status"] == "unknown", pay
        return pay

    async def age(self, pid: str, seconds: float = AGE_S) -> None:
        """Move the payment's clock back: its request's leases have lapsed."""
        def fn(d: dict[str, Any]) -> list[dict[str, Any]]:
            d["created_at"] -= seconds
            for a in d["attempts"]:
                for k in ("_sent_at", "_live_until"):
                    if isinstance(a.get(k), int | float):
                        a[k] -= seconds
            op = d.get("_operation")
            if isinstance(op, dict):
                op["started_at"] -= seconds
                op["lease_until"] -= seconds
            return []

        await PaymentWriter(self.store, None).mutate(pid, fn)

    async def sync(self, pid: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.client.post(f"/admin/payments/{pid}/sync", headers=kw.pop(
            "hdrs", ADMIN), **kw)

    async def resolve(self, pid: str, body: Any, hdrs: dict[str, str] = ADMIN
                      ) -> aiohttp.ClientResponse:
        data = body if isinstance(body, str) else json.dumps(body)
        return await self.client.post(f"/admin/payments/{pid}/resolve", data=data,
                                      headers=hdrs)

    async def get(self, pid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/payments/{pid}", headers=headers())
        return await r.json()

    async def events(self, pid: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/payments/{pid}/events", headers=headers())
        return (await r.json())["data"]

    async def sent(self, sim: str) -> int:
        return int((await self.sim.requests(sim))["total"])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def env(tmp_path: Path, store_url: str, aiohttp_client, session) -> Env:
    import hashlib

    merchants = [{"id": "acme", "api_key_sha256": [hashlib.sha256(ACME_KEY.encode()).hexdigest()],
                  # nobody listens: the notification stays in the outbox for the test to read
                  "webhook": {"url": "http://127.0.0.1:9/hooks", "secret": "whsec_operator"}}]
    config = write_config(tmp_path, store_url, providers=PROVIDERS, merchants=merchants,
                          retry={"attempts": 2, "backoff_s": 0.02, "backoff_max_s": 0.05,
                                 "jitter_s": 0.01}, reconciliation={"enabled": False})
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    return Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session))


def _actions(action: str, result: str) -> float:
    return REGISTRY.get_sample_value("gateway_operator_actions_total",
                                     {"action": action, "result": result}) or 0.0


async def _error(r: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    body = await r.json()
    assert r.status == status, body
    return body["error"]


# ------------------------------------------------------------------------------ sync


async def test_sync_authorizes_an_unknown_payment_the_provider_charged_once(env: Env) -> None:
    pay = await env.unknown("op-sync-charged")
    await env.age(pay["id"])
    before = _actions("sync", "corrected")
    r = await env.sync(pay["id"])
    body = await r.json()
    assert r.status == 200, body
    assert r.headers["Gateway-Sync-Result"] == "corrected"
    assert body == await env.get(pay["id"])  # the public payment object of GET /v1
    assert body["status"] == "authorized" and body["amount_authorized"] == pay["amount"]
    [charge] = await env.sim.charges("stripe", pay["id"])  # the replay charged nothing more
    assert body["provider_reference"] == charge["id"]
    assert _actions("sync", "corrected") == before + 1
    [change] = [e for e in await env.events(pay["id"]) if e["type"] == "status_changed"
                and e["to_status"] == "authorized"]
    assert change["source"] == "reconciliation"

    again = await env.sync(pay["id"])  # nothing open any more: nothing asked
    sent = await env.sent("stripe")
    assert again.status == 200 and again.headers["Gateway-Sync-Result"] == "unchanged"
    assert (await again.json())["status"] == "authorized"
    assert await env.sent("stripe") == sent


async def test_sync_fails_an_unknown_payment_the_provider_never_created(env: Env) -> None:
    await env.sim.faults("braintree", mode="hang")  # the sale is read, never processed
    pay = await env.pay("op-sync-never", "bt_main")
    await env.sim.faults("braintree", mode="normal")
    assert pay["status"] == "unknown", pay
    await env.age(pay["id"])  # the search is proof only lookup_proof_after_s after the sale
    r = await env.sync(pay["id"])
    body = await r.json()
    assert r.status == 200 and body["status"] == "failed", body
    assert body["failure"]["code"] == "not_created"
    assert await env.sim.charges("braintree", pay["id"]) == []


async def test_sync_whose_lookup_answer_is_lost_is_503_and_stays_unknown(env: Env) -> None:
    pay = await env.unknown("op-sync-unanswered")
    await env.age(pay["id"])
    await env.sim.faults("stripe", mode="drop_after_process")  # answers lost again
    r = await env.sync(pay["id"])
    await env.sim.faults("stripe", mode="normal")
    # a lost answer is no answer: 503, the payment as it was
    err = await _error(r, 503)
    assert err["type"] == "provider_unavailable" and r.headers["Retry-After"]
    assert (await env.get(pay["id"]))["status"] == "unknown"


async def test_sync_of_a_sale_braintree_cannot_see_yet_is_unresolved_not_unavailable(
        env: Env) -> None:
    """Braintree's search not showing the sale yet (inside lookup_proof_after_s) is an
    answer that proves nothing (SPEC 5.1), not an outage: 200 with Gateway-Sync-Result
    unresolved and the reason, the payment unchanged -- never 503 provider_unavailable
    (Braintree is up). Once the search sees the one sale, sync authorizes it."""
    await env.sim.faults("braintree", mode="drop_after_process", search_lag_ms=600_000)
    pay = await env.pay("op-sync-bt-lag", "bt_main")
    assert pay["status"] == "unknown", pay
    await env.sim.faults("braintree", mode="normal")  # search still lags
    await env.age(pay["id"], 60.0)  # leases lapsed, well inside the 300 s proof window
    stored = await env.store.get_payment(pay["id"])
    before = _actions("sync", "unresolved")
    r = await env.sync(pay["id"])
    body = await r.json()
    assert (r.status, r.headers.get("Gateway-Sync-Result")) == (200, "unresolved"), body
    assert body["status"] == "unknown"
    assert _actions("sync", "unresolved") == before + 1
    assert (await env.store.get_payment(pay["id"]))["status"] == stored["status"]
    assert not [e for e in await env.events(pay["id"]) if e["type"] == "status_changed"
                and e["to_status"] in ("failed", "authorized")]

    await env.sim.faults("braintree", search_lag_ms=0)  # now the search sees the sale
    r = await env.sync(pay["id"])
    body = await r.json()
    assert (r.status, r.headers.get("Gateway-Sync-Result")) == (200, "corrected"), body
    assert body["status"] == "authorized" and body["provider_reference"]
    assert len(await env.sim.charges("braintree", pay["id"])) == 1


async def test_sync_refused_while_a_request_may_still_own_the_payment(env: Env) -> None:
    pay = await env.unknown("op-sync-live")  # its attempt's lease is still live
    sent = await env.sent("stripe")
    before = _actions("sync", "refused")
    r = await env.sync(pay["id"])
    err = await _error(r, 409)
    assert err["type"] == "invalid_state" and err["code"] == "payment_busy"
    assert "SPEC 9.1" in err["message"] and int(r.headers["Retry-After"]) > 0
    assert await env.sent("stripe") == sent  # nothing looked up
    assert (await env.get(pay["id"]))["status"] == "unknown"
    assert _actions("sync", "refused") == before + 1


async def test_sync_refused_while_reconciliation_works_on_the_payment(env: Env) -> None:
    from gateway.reconcile import lease_name

    pay = await env.unknown("op-sync-reconciling")
    await env.age(pay["id"])
    assert await env.store.acquire_lease(lease_name(pay["id"]), "another-replica", 30)
    err = await _error(await env.sync(pay["id"]), 409)
    assert err["code"] == "payment_busy" and "reconciliation" in err["message"]
    err = await _error(await env.resolve(pay["id"], {"status": "failed", "reason": "x"}), 409)
    assert err["code"] == "payment_busy"


async def test_sync_provider_unavailable_is_503_and_changes_nothing(env: Env) -> None:
    pay = await env.unknown("op-sync-down")
    await env.age(pay["id"])
    await env.sim.faults("stripe", mode="refuse")
    stored = await env.store.get_payment(pay["id"])
    events = await env.events(pay["id"])
    before = _actions("sync", "unavailable")
    r = await env.sync(pay["id"])
    await env.sim.faults("stripe", mode="normal")
    err = await _error(r, 503)
    assert err["type"] == "provider_unavailable" and "nothing was changed" in err["message"]
    assert r.headers["Retry-After"] == "5"
    assert await env.store.get_payment(pay["id"]) == stored
    assert await env.events(pay["id"]) == events
    assert _actions("sync", "unavailable") == before + 1


async def test_sync_of_a_final_payment_answers_it_unchanged(env: Env) -> None:
    pay = await env.pay("op-sync-final", "stripe_main", token="tok_decline")
    assert pay["status"] == "declined"
    await env.age(pay["id"])
    sent = await env.sent("stripe")
    r = await env.sync(pay["id"])
    assert r.status == 200 and r.headers["Gateway-Sync-Result"] == "unchanged"
    assert await r.json() == await env.get(pay["id"])
    assert await env.sent("stripe") == sent


async def test_sync_unknown_id_auth_and_parameters(env: Env) -> None:
    assert (await _error(await env.sync("pay_nope"), 404))["type"] == "not_found"
    pay = await env.unknown("op-sync-auth")
    await env.age(pay["id"])
    no_token = await env.sync(pay["id"], hdrs={"Content-Type": "application/json"})
    assert (await _error(no_token, 401))["code"] == "missing_admin_token"
    merchant = await env.sync(pay["id"], hdrs=headers())
    assert (await _error(merchant, 403))["code"] == "admin_only"
    extra = await env.sync(pay["id"], data=json.dumps({"force": True}))
    assert (await _error(extra, 400))["param"] == "force"
    assert (await env.get(pay["id"]))["status"] == "unknown"


# ------------------------------------------------------------------------------ resolve


async def test_resolve_unknown_to_failed_is_audited_notified_and_counted(env: Env) -> None:
    pay = await env.unknown("op-resolve-failed")
    await env.age(pay["id"])
    before = _actions("resolve", "applied")
    reason = "ticket OPS-1: the provider dashboard shows no charge"
    r = await env.resolve(pay["id"], {"status": "failed", "reason": reason})
    body = await r.json()
    assert r.status == 200, body
    assert body == await env.get(pay["id"])
    assert body["status"] == "failed" and body["failure"]["code"] == "resolved_by_operator"
    assert reason not in json.dumps(body)  # the operator's note stays in the audit trail
    [change] = [e for e in await env.events(pay["id"]) if e["type"] == "status_changed"
                and e["to_status"] == "failed"]
    assert change["source"] == "operator" and change["reason"] == reason
    assert change["from_status"] == "unknown"
    assert _actions("resolve", "applied") == before + 1
    notes = await env.store.list_notifications(pay["id"])
    assert [(n["type"], n["payload"]["source"]) for n in notes][-1] == ("payment.failed",
                                                                       "operator")


async def test_resolve_unknown_to_authorized_needs_the_provider_reference(env: Env) -> None:
    pay = await env.unknown("op-resolve-auth")
    await env.age(pay["id"])
    assert (await env.get(pay["id"]))["provider_reference"] is None  # the answer was lost
    err = await _error(await env.resolve(pay["id"], {"status": "authorized",
                                                     "reason": "seen at Stripe"}), 400)
    assert err["code"] == "parameter_missing" and err["param"] == "provider_reference"
    [charge] = await env.sim.charges("stripe", pay["id"])
    r = await env.resolve(pay["id"], {"status": "authorized", "reason": "seen at Stripe",
                                      "provider_reference": charge["id"]})
    body = await r.json()
    assert r.status == 200, body
    assert body["status"] == "authorized" and body["provider_reference"] == charge["id"]
    assert body["amount_authorized"] == pay["amount"]
    # the merchant can act on it: the capture goes to that charge
    cap = await env.client.post(f"/v1/payments/{pay['id']}/capture", data="{}",
                                headers=headers(idem="op-cap-1"))
    assert (await cap.json())["status"] == "captured"
    [charge] = await env.sim.charges("stripe", pay["id"])
    assert charge["amount_captured"] == pay["amount"]
    events = await env.events(pay["id"])
    [resolved] = [e for e in events if e["source"] == "operator"]
    assert resolved["provider_reference"] == charge["id"]


async def test_resolve_capture_pending_to_captured_ends_the_operation(env: Env) -> None:
    pay = await env.pay("op-resolve-cap", "stripe_main")
    await env.sim.faults("stripe", mode="drop_after_process")
    r = await env.client.post(f"/v1/payments/{pay['id']}/capture",
                              data=json.dumps({"amount": 600}), headers=headers(idem="oc-1"))
    await env.sim.faults("stripe", mode="normal")
    assert (await r.json())["status"] == "capture_pending"  # parked: the answer was lost
    assert (await env.store.get_payment(pay["id"]))["_operation"]["amount"] == 600
    await env.age(pay["id"])
    r = await env.resolve(pay["id"], {"status": "captured", "reason": "Stripe shows it"})
    body = await r.json()
    assert r.status == 200 and body["status"] == "captured", body
    assert body["amount_captured"] == 600  # the pending capture's amount, not the hold's
    stored = await env.store.get_payment(pay["id"])
    assert stored["_operation"] is None and stored["_ops_done"][-1]["outcome"] == "succeeded"
    assert not stored["needs_reconcile"]  # nothing left for reconciliation to re-send
    # the merchant's retry of that capture answers what the operator decided
    r = await env.client.post(f"/v1/payments/{pay['id']}/capture",
                              data=json.dumps({"amount": 600}), headers=headers(idem="oc-1"))
    assert r.status == 200 and (await r.json())["status"] == "captured"


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    ({"status": "failed"}, 400, "parameter_missing", "reason"),
    ({"status": "failed", "reason": "   "}, 400, "parameter_invalid", "reason"),
    ({"status": "failed", "reason": "x" * 501}, 400, "parameter_invalid", "reason"),
    ({"status": "failed", "reason": "ok", "force": True}, 400, "parameter_unknown", "force"),
    ({"reason": "ok"}, 400, "parameter_missing", "status"),
    ({"status": "settled", "reason": "ok"}, 400, "parameter_invalid", "status"),
    ({"status": 7, "reason": "ok"}, 400, "parameter_invalid", "status"),
    ({"status": "expired", "reason": "ok"}, 409, "transition_not_allowed", "status"),
    ({"status": "refunded", "reason": "ok"}, 409, "transition_not_allowed", "status"),
    ({"status": "processing", "reason": "ok"}, 409, "transition_not_allowed", "status"),
    ({"status": "requires_action", "reason": "ok"}, 409, "transition_not_allowed", "status"),
    ({"status": "failed", "reason": "ok", "provider_reference": ""}, 400, "parameter_invalid",
     "provider_reference"),
    ({"status": "failed", "reason": "card 4242 4242 4242 4242"}, 400, "raw_card_data_rejected",
     None),
])
async def test_resolve_refusals_change_nothing(env: Env, body: dict[str, Any], status: int,
                                               code: str, param: str | None) -> None:
    pay = await env.unknown(f"op-refuse-{code}-{param}-{len(json.dumps(body))}")
    await env.age(pay["id"])
    stored = await env.store.get_payment(pay["id"])
    before = _actions("resolve", "refused")
    err = await _error(await env.resolve(pay["id"], body), status)
    assert err["code"] == code and err.get("param") == param, err
    if code == "transition_not_allowed":
        assert "unknown -> " in err["message"] and "failed" in err["message"]
    assert await env.store.get_payment(pay["id"]) == stored
    assert _actions("resolve", "refused") == before + 1


async def test_resolve_refused_for_final_live_unknown_and_unauthorized(env: Env) -> None:
    ok = {"status": "failed", "reason": "checked"}
    declined = await env.pay("op-resolve-final", "stripe_main", token="tok_decline")
    await env.age(declined["id"])
    err = await _error(await env.resolve(declined["id"], ok), 409)
    assert err["type"] == "invalid_state" and err["code"] == "payment_not_unresolved"
    authorized = await env.pay("op-resolve-authorized", "stripe_main")
    await env.age(authorized["id"])
    err = await _error(await env.resolve(authorized["id"], {"status": "voided",
                                                           "reason": "x"}), 409)
    assert err["code"] == "payment_not_unresolved"  # resolved already: use void

    live = await env.unknown("op-resolve-live")
    r = await env.resolve(live["id"], ok)
    assert (await _error(r, 409))["code"] == "payment_busy" and r.headers["Retry-After"]
    assert (await _error(await env.resolve("pay_nope", ok), 404))["type"] == "not_found"
    await env.age(live["id"])
    assert (await _error(await env.resolve(live["id"], ok, hdrs={}), 401))["code"] == (
        "missing_admin_token")
    assert (await _error(await env.resolve(live["id"], ok, hdrs=headers()), 403))["code"] == (
        "admin_only")
    bad = {"Authorization": "Bearer wrong", "Content-Type": "application/json"}
    assert (await _error(await env.resolve(live["id"], ok, hdrs=bad), 401))["code"] == (
        "invalid_admin_token")
    assert (await _error(await env.resolve(live["id"], '{"status": "failed", "status": "x"}'),
                         400))["type"] == "invalid_request"  # strict JSON
    assert (await env.get(live["id"]))["status"] == "unknown"


async def test_resolve_never_replaces_the_provider_reference(env: Env) -> None:
    pay = await env.pay("op-resolve-ref", "adyen_main")
    r = await env.client.post(f"/v1/payments/{pay['id']}/void", data="{}",
                              headers=headers(idem="ov-1"))
    assert (await r.json())["status"] == "void_pending"
    await env.age(pay["id"])
    err = await _error(await env.resolve(pay["id"], {
        "status": "voided", "reason": "x", "provider_reference": "OTHER"}), 409)
    assert err["code"] == "provider_reference_mismatch"
    r = await env.resolve(pay["id"], {"status": "authorized", "reason": "void refused at Adyen"})
    body = await r.json()
    assert r.status == 200 and body["status"] == "authorized", body
    assert body["amount_authorized"] == pay["amount"]
    assert body["provider_reference"] == pay["provider_reference"]


async def test_resolve_refused_when_no_provider_was_ever_called(env: Env) -> None:
    """A payment recorded and never sent (its request crashed before any provider call):
    an operator cannot say money moved (409 no_provider), whatever reference is given; a
    body that is not a JSON object is a 400; failed is allowed, and no provider is asked."""
    from gateway.model import audit, new_payment

    doc = new_payment("pay_never_sent", "acme", payment_body(), "fp-never-sent")
    await env.store.insert_payment(doc, [audit("payment_created", "merchant")])
    await env.age(doc["id"])
    sent = {sim: await env.sent(sim) for sim in ("stripe", "braintree", "adyen")}
    stored = await env.store.get_payment(doc["id"])
    for target in ("authorized", "captured"):
        err = await _error(await env.resolve(doc["id"], {
            "status": target, "reason": "the customer says so", "provider_reference": "pi_x"}),
            409)
        assert (err["code"], err["param"]) == ("no_provider", "status"), err
    for body in ("[]", '"failed"', "null"):
        err = await _error(await env.resolve(doc["id"], body), 400)
        assert err["type"] == "invalid_request", err
    assert await env.store.get_payment(doc["id"]) == stored
    r = await env.resolve(doc["id"], {"status": "failed", "reason": "never sent (log check)"})
    body = await r.json()
    assert r.status == 200 and body["status"] == "failed", body
    assert body["failure"]["code"] == "resolved_by_operator"
    assert {sim: await env.sent(sim) for sim in sent} == sent  # nothing was asked or charged


async def test_resolve_refused_while_the_customer_may_still_complete_3ds(env: Env) -> None:
    """requires_action is resolvable only after its 3-D Secure window (the customer may
    still finish the challenge): 409 payment_busy with Retry-After until then, even once
    every request lease has lapsed; nothing written."""
    pay = await env.pay("op-3ds-open", "adyen_main", token="tok_3ds")
    assert pay["status"] == "requires_action", pay
    await env.age(pay["id"])  # leases lapsed; the customer's window (900 s) has not
    stored = await env.store.get_payment(pay["id"])
    before = _actions("resolve", "refused")
    r = await env.resolve(pay["id"], {"status": "failed", "reason": "customer gave up?"})
    err = await _error(r, 409)
    assert err["code"] == "payment_busy" and "3-D Secure" in err["message"], err
    assert 800 < float(r.headers["Retry-After"]) <= 900
    assert await env.store.get_payment(pay["id"]) == stored
    assert _actions("resolve", "refused") == before + 1


@pytest.mark.parametrize(("operation", "pending", "refused", "allowed"), [
    ("capture", "capture_pending", ["voided", "declined", "failed", "expired"],
     ["authorized", "captured"]),
    ("void", "void_pending", ["captured", "declined", "failed", "expired"],
     ["authorized", "voided"]),
])
async def test_resolve_of_a_pending_follow_up_only_along_its_edges(
        env: Env, operation: str, pending: str, refused: list[str], allowed: list[str]
) -> None:
    """capture_pending / void_pending resolve only to their two edges (SPEC 4): every
    other target is 409 transition_not_allowed naming the allowed ones, nothing written,
    each refusal counted; an allowed one is then applied."""
    pay = await env.pay(f"op-edges-{operation}", "stripe_main")
    await env.sim.faults("stripe", mode="drop_after_process")
    r = await env.client.post(f"/v1/payments/{pay['id']}/{operation}", data="{}",
                              headers=headers(idem=f"oe-{operation}"))
    await env.sim.faults("stripe", mode="normal")
    assert (await r.json())["status"] == pending
    await env.age(pay["id"])
    stored = await env.store.get_payment(pay["id"])
    before = _actions("resolve", "refused")
    for target in refused:
        err = await _error(await env.resolve(pay["id"], {"status": target, "reason": "x"}),
                           409)
        assert (err["code"], err["param"]) == ("transition_not_allowed", "status"), err
        assert f"{pending} -> {target} is not allowed" in err["message"]
        assert err["message"].endswith(", ".join(allowed)), err["message"]
    assert await env.store.get_payment(pay["id"]) == stored
    assert _actions("resolve", "refused") == before + len(refused)
    r = await env.resolve(pay["id"], {"status": allowed[1], "reason": "seen at Stripe"})
    assert r.status == 200 and (await r.json())["status"] == allowed[1]


def test_resolvable_says_what_resolve_would_take() -> None:
    """operator.resolvable (shown by gateway payments show): the unresolved statuses, and
    requires_action only once its 3-D Secure window has passed."""
    import time

    from gateway.operator import resolvable

    now = time.time()

    def doc(status: str, since: float = now) -> dict[str, Any]:
        return {"status": status, "created_at": since, "_action": {"since": since},
                "_action_window_s": 900.0}

    for status in ("pending", "unknown", "processing", "capture_pending", "void_pending"):
        assert resolvable(doc(status)), status
    for status in ("authorized", "captured", "declined", "failed", "voided", "expired",
                   "refunded", "partially_refunded"):
        assert not resolvable(doc(status)), status
    assert not resolvable(doc("requires_action"))  # the customer may still finish
    assert not resolvable(doc("requires_action", since=now - 899))
    assert resolvable(doc("requires_action", since=now - 901))
