"""3-D Secure: a payment abandoned in ``requires_action`` is ended after the customer's
window (``reconciliation.action_window_s``), by the background reconciliation loop, only on
the provider's proof that nothing can be charged (SPEC 3.3, 4, 5.1).

Through the simulators with a 1 s window and a fast reconciliation loop; every wait is a
condition with a deadline. Each charge is counted at the simulator.

* Stripe, the customer never came back: the loop retrieves the PaymentIntent (still
  ``requires_action``), cancels it (``abandoned``) and the payment is ``expired`` with
  ``failure.code = action_expired``; the simulator's only charge is canceled, nothing
  captured, never a second authorization. A late customer or confirm changes nothing.
* Stripe, the customer finished but nobody told the gateway (no webhook, no confirm): the
  loop's lookup finds the authorization -> ``authorized``, never expired.
* A merchant's confirm before the customer finished re-arms the wait; the payment is
  still ended after the window.
* Adyen, the customer returned (``redirectResult`` recorded) but the merchant never
  confirmed: the loop's ``/payments/details`` completes it.
* Adyen, the customer never returned: Adyen has no answer that proves nothing can be
  charged, so the payment stays ``requires_action``, flagged for an operator, never
  ``failed``/``expired`` -- and the shopper finishing later (AUTHORISATION webhook)
  authorizes it, one charge. The operator the flag calls for can resolve it (``failed``,
  along requires_action's edges only); a late AUTHORISATION still corrects that.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.appkeys import STORE
from gateway.config import ConfigError, load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import wait_for, write_config
from tests.unit.gateway.test_three_ds import Env, _env

#: a 1 s window, a loop every 0.2 s; min_age_s may not be below request_deadline_s
FAST = {"request_deadline_s": 2,
        "reconciliation": {"action_window_s": 1, "interval_s": 0.2, "min_age_s": 2}}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _status(env: Env, pay_id: str, status: str) -> dict[str, Any] | None:
    got = await env.get(pay_id)
    return got if got["status"] == status else None


async def _trail(env: Env, pay_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in await env.events(pay_id) if e["type"] == kind]


async def test_an_abandoned_stripe_challenge_is_expired_after_the_window(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "stripe_a",
                     webhooks=True, **FAST)
    pay = await env.pay("3ds-abandoned", "stripe_a")
    assert pay["status"] == "requires_action"
    doc = await env.client.app[STORE].get_payment(pay["id"])
    assert doc["_action_window_s"] == 1.0

    done = await wait_for(lambda: _status(env, pay["id"], "expired"), timeout=20)
    assert done["failure"]["code"] == "action_expired"
    assert "3-D Secure within 1 s" in done["failure"]["message"]
    assert "nothing was charged" in done["failure"]["message"]
    assert done["next_action"] is None
    assert done["amount_authorized"] == 0 and done["amount_captured"] == 0
    changed = [e for e in await _trail(env, pay["id"], "status_changed")
               if e["to_status"] == "expired"]
    assert [e["source"] for e in changed] == ["reconciliation"]
    assert len(await _trail(env, pay["id"], "action_expired")) == 1
    # asked first (retrieve), then cancelled at Stripe; never authorized again
    ops = (await env.sim.requests("stripe"))["by_operation"]
    assert ops.get("create_payment_intent") == 1
    assert ops.get("retrieve_payment_intent", 0) >= 1
    assert ops.get("cancel_payment_intent") == 1
    charges = await env.charges("stripe_a", pay["id"])
    assert [(c["status"], c["amount_captured"]) for c in charges] == [("canceled", 0)]

    # the customer comes back too late: Stripe refuses the challenge, the payment stays
    page = await env.browse(pay)
    assert page.status >= 400
    status, answer, _ = await env.confirm(pay["id"], "too-late")
    assert (status, answer["status"]) == (200, "expired")
    doc = await env.client.app[STORE].get_payment(pay["id"])
    assert doc["_operation"] is None and doc["needs_reconcile"] is False
    assert len(await env.charges("stripe_a", pay["id"])) == 1


async def test_a_stripe_challenge_finished_unseen_is_authorized_not_expired(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    """The customer finished, but no webhook reached the gateway and the merchant never
    confirmed: the loop's lookup after the window finds the authorization."""
    env = await _env(tmp_path, store_url, aiohttp_client, session, "stripe_a", **FAST)
    pay = await env.pay("3ds-unseen", "stripe_a", capture="manual")
    await env.browse(pay)
    done = await wait_for(lambda: _status(env, pay["id"], "authorized"), timeout=20)
    assert done["amount_authorized"] == 1000 and done["failure"] is None
    ops = (await env.sim.requests("stripe"))["by_operation"]
    assert ops.get("cancel_payment_intent", 0) == 0  # nothing cancelled
    charges = await env.charges("stripe_a", pay["id"])
    assert len(charges) == 1 and charges[0]["status"] == "requires_capture"


async def test_an_early_confirm_rearms_the_wait_and_the_payment_still_expires(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "stripe_a", **FAST)
    pay = await env.pay("3ds-early", "stripe_a")
    status, early, _ = await env.confirm(pay["id"], "early")
    assert (status, early["status"]) == (200, "requires_action")
    doc = await env.client.app[STORE].get_payment(pay["id"])
    op = doc["_operation"]
    assert op["await_customer"] is True  # waiting again, until the window's end
    assert op["lease_until"] == pytest.approx(doc["_action"]["since"] + 1.0)
    done = await wait_for(lambda: _status(env, pay["id"], "expired"), timeout=20)
    assert done["failure"]["code"] == "action_expired"
    charges = await env.charges("stripe_a", pay["id"])
    assert [(c["status"], c["amount_captured"]) for c in charges] == [("canceled", 0)]


async def test_an_adyen_return_never_confirmed_is_completed_after_the_window(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "adyen_b", **FAST)
    pay = await env.pay("3ds-adyen-returned", "adyen_b", capture="manual")
    page = await env.browse(pay)  # back at the gateway with redirectResult; no confirm
    assert page.status == 200
    done = await wait_for(lambda: _status(env, pay["id"], "authorized"), timeout=20)
    assert done["amount_authorized"] == 1000
    ops = (await env.sim.requests("adyen"))["by_operation"]
    assert ops.get("payments") == 1 and ops.get("payments_details") == 1
    assert len(await env.charges("adyen_b", pay["id"])) == 1


async def test_an_adyen_challenge_never_returned_is_flagged_never_ended_on_a_guess(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    env = await _env(tmp_path, store_url, aiohttp_client, session, "adyen_b",
                     webhooks=True, **FAST)
    pay = await env.pay("3ds-adyen-gone", "adyen_b", capture="manual")

    async def flagged() -> list[dict[str, Any]]:
        return await _trail(env, pay["id"], "flagged")

    (flag,) = await wait_for(flagged, timeout=20)
    assert flag["source"] == "reconciliation" and "adyen" in flag["reason"]
    got = await env.get(pay["id"])
    assert got["status"] == "requires_action" and got["failure"] is None
    doc = await env.client.app[STORE].get_payment(pay["id"])
    assert doc["_operation"] is None and doc["_flagged"]
    ops = (await env.sim.requests("adyen"))["by_operation"]
    assert ops.get("payments") == 1 and not ops.get("payments_details")  # nothing re-sent
    # the shopper finishes after all: Adyen's AUTHORISATION notification authorizes it
    await env.browse(pay)
    done = await wait_for(lambda: _status(env, pay["id"], "authorized"), timeout=20)
    assert done["amount_authorized"] == 1000
    assert len(await env.charges("adyen_b", pay["id"])) == 1


ADMIN = {"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"}


def _resolved(action: str, result: str) -> float:
    return REGISTRY.get_sample_value("gateway_operator_actions_total",
                                     {"action": action, "result": result}) or 0.0


async def test_an_operator_resolves_a_flagged_adyen_challenge_and_a_late_authorisation_wins(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    """The flag asks an operator to end the abandoned challenge: POST
    /admin/payments/{id}/resolve takes requires_action after its window (SPEC 9.2, along
    requires_action's edges only), audited with source operator and counted. ``failed``
    says no money moved, so the shopper finishing after all (Adyen's AUTHORISATION) still
    corrects it to authorized: one charge, never hidden."""
    env = await _env(tmp_path, store_url, aiohttp_client, session, "adyen_b",
                     webhooks=True, **FAST)
    pay = await env.pay("3ds-adyen-resolved", "adyen_b", capture="manual")
    await wait_for(lambda: _trail(env, pay["id"], "flagged"), timeout=20)

    async def resolve(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = await env.client.post(f"/admin/payments/{pay['id']}/resolve", json=body,
                                  headers=ADMIN)
        return r.status, await r.json()

    before = await env.client.app[STORE].get_payment(pay["id"])
    for target in ("expired", "voided", "processing"):  # not along requires_action's edges
        status, body = await resolve({"status": target, "reason": "OPS-7"})
        assert (status, body["error"]["code"]) == (409, "transition_not_allowed"), body
        assert "requires_action -> " in body["error"]["message"]
    assert await env.client.app[STORE].get_payment(pay["id"]) == before  # nothing written

    applied = _resolved("resolve", "applied")
    status, done = await resolve({"status": "failed",
                                  "reason": "OPS-7: no authorisation in the Adyen CA"})
    assert status == 200, done
    assert done["status"] == "failed" and done["next_action"] is None
    assert done["failure"]["code"] == "resolved_by_operator"
    assert _resolved("resolve", "applied") == applied + 1
    (ev,) = [e for e in await env.events(pay["id"])
             if e["type"] == "status_changed" and e["to_status"] == "failed"]
    assert (ev["source"], ev["from_status"], ev["reason"]) == (
        "operator", "requires_action", "OPS-7: no authorisation in the Adyen CA")
    status, again = await resolve({"status": "failed", "reason": "twice"})
    assert (status, again["error"]["code"]) == (409, "payment_not_unresolved")

    await env.browse(pay)  # the shopper finishes after all: AUTHORISATION corrects it
    late = await wait_for(lambda: _status(env, pay["id"], "authorized"), timeout=20)
    assert late["amount_authorized"] == 1000
    assert len(await env.charges("adyen_b", pay["id"])) == 1
    ops = (await env.sim.requests("adyen"))["by_operation"]
    assert ops.get("payments") == 1 and not ops.get("payments_details")


@pytest.mark.parametrize("value", [0, -5, "soon"])
def test_action_window_must_be_a_positive_number(tmp_path: Path, value: Any) -> None:
    path = write_config(tmp_path, "sqlite:///x.db", reconciliation={"action_window_s": value})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "reconciliation.action_window_s" in str(err.value)


def test_action_window_defaults_to_900_s(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, "sqlite:///x.db")
                       ).reconciliation.action_window_s == 900
    cfg = load_config(write_config(tmp_path, "sqlite:///x.db",
                                   reconciliation={"action_window_s": 120}))
    assert cfg.reconciliation.action_window_s == 120


async def test_a_lost_cancel_answer_is_asked_again_and_the_payment_still_expires(
        tmp_path: Path, store_url: str, aiohttp_client, session: aiohttp.ClientSession) -> None:
    """Stripe cancels the PaymentIntent but its answer is lost: the payment stays
    ``requires_action`` (audit ``expire_unknown``, never expired on a guess), the wait is
    re-armed, and the next pass finds the PaymentIntent canceled -> ``expired``."""
    from gateway.appkeys import ORCHESTRATOR
    from gateway.reconcile import Reconciler
    from gateway.three_ds import window_passed
    from providers.base import Ambiguous

    env = await _env(tmp_path, store_url, aiohttp_client, session, "stripe_a",
                     request_deadline_s=2, reconciliation={
                         "enabled": False, "action_window_s": 1, "min_age_s": 2})
    app = env.client.app
    orch = app[ORCHESTRATOR]
    provider = orch.providers["stripe_a"]
    real = provider.abandon_action

    async def cancel_then_lose_the_answer(ref: Any, key: str) -> Any:
        await real(ref, key)  # processed at Stripe ...
        raise Ambiguous("connection_lost", "the answer never arrived")  # ... answer lost

    provider.abandon_action = cancel_then_lose_the_answer  # type: ignore[method-assign]
    pay = await env.pay("3ds-lost-cancel", "stripe_a")

    async def past_the_window() -> bool:
        doc = await app[STORE].get_payment(pay["id"])
        return window_passed(doc)

    await wait_for(past_the_window, timeout=10)
    reconciler = Reconciler(orch.config, app[STORE], orch)
    await reconciler.run_once(now=time.time() + 60)
    got = await env.get(pay["id"])
    assert got["status"] == "requires_action" and got["failure"] is None
    assert [e["error_code"] for e in await _trail(env, pay["id"], "expire_unknown")] == [
        "connection_lost"]
    doc = await app[STORE].get_payment(pay["id"])
    assert doc["_operation"]["await_customer"] is True and doc["needs_reconcile"] is True
    charges = await env.charges("stripe_a", pay["id"])
    assert [c["status"] for c in charges] == ["canceled"]

    provider.abandon_action = real  # type: ignore[method-assign]
    report = await reconciler.run_once(now=time.time() + 60)
    assert [(d.from_status, d.to_status) for d in report.corrected] == [
        ("requires_action", "expired")]
    done = await env.get(pay["id"])
    assert done["status"] == "expired" and done["failure"]["code"] == "action_expired"
    assert len(await env.charges("stripe_a", pay["id"])) == 1
    ops = (await env.sim.requests("stripe"))["by_operation"]
    # the lost cancel was retried (same idempotency key, SPEC 5); never a new authorization
    assert ops.get("create_payment_intent") == 1 and ops.get("cancel_payment_intent", 0) >= 1
