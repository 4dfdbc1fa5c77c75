"""The double-entry ledger (#14 item 2, SPEC 16): property tests of gateway/ledger.py's
entries over random payment histories, the stores' atomic and idempotent ledger writes
(both backends), and end to end: ``GET /v1/payments/{id}/ledger`` and ``gateway ledger
balance`` after a capture, a refund and a lost dispute through the simulators."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.cli import main
from gateway.config import load_config
from gateway.disputes import apply_dispute
from gateway.ledger import (
    ENTRY_TYPES,
    balances,
    entries_for_change,
    money_state,
    new_entry,
    provider_account,
)
from gateway.model import apply_status, new_payment, snapshot, store_snapshot
from gateway.orchestrator import apply_refund_result
from gateway.state_machine import PaymentStatus, StatusEvent, reserve_refund
from gateway.store import Store
from providers.base import Outcome, RefundResult
from providers.statuses import DisputeStatus, RefundStatus
from providers.webhook_event import DisputeInfo
from tests.gateway_harness import (
    GLOBEX_KEY,
    SimControl,
    headers,
    payment_body,
    wait_for,
    write_config,
)
from tests.processes import free_port

S = PaymentStatus
D = DisputeStatus

# --------------------------------------------------------------------------- properties

AMOUNT = 10_000
ops = st.lists(st.one_of(
    st.tuples(st.just("capture"), st.integers(1, AMOUNT)),
    st.tuples(st.just("refund"), st.integers(1, AMOUNT), st.booleans()),
    st.tuples(st.just("dispute"), st.integers(0, 2), st.integers(1, AMOUNT),
              st.sampled_from([D.NEEDS_RESPONSE, D.UNDER_REVIEW, D.WON, D.LOST])),
), max_size=14)


def _authorized() -> dict[str, Any]:
    doc = new_payment("pay_prop", "acme", payment_body(amount=AMOUNT, currency="JPY"), "fp")
    doc.update(provider="stripe_main", provider_reference="pi_prop", version=1)
    apply_status(doc, StatusEvent(S.AUTHORIZED, authorized=AMOUNT), "provider_response")
    return doc


def _step(doc: dict[str, Any], op: tuple[Any, ...], n: int) -> None:
    kind = op[0]
    if kind == "capture":
        apply_status(doc, StatusEvent(S.CAPTURED, captured=min(op[1], AMOUNT)), "merchant")
    elif kind == "refund":
        snap = snapshot(doc)
        amount = min(op[1], snap.ledger.refundable)
        if amount <= 0:
            return
        store_snapshot(doc, reserve_refund(snap, amount))
        doc["refunds"].append({"id": f"ref_{n}", "amount": amount, "status": "pending",
                               "provider_reference": None})
        status = RefundStatus.SUCCEEDED if op[2] else RefundStatus.FAILED
        apply_refund_result(doc, f"ref_{n}", RefundResult(Outcome.SUCCEEDED, status),
                            "provider_response")
    else:
        _, which, amount, status = op
        apply_dispute(doc, DisputeInfo(f"dp_{which}", amount, "JPY", "fraud", status),
                      source="webhook:stripe_main", detail="prop", occurred_at=float(n))


def _disputed(doc: dict[str, Any]) -> int:
    """What the chargebacks hold: every dispute not won (the money went back at opening)."""
    return sum(int(d["amount"]) for d in doc.get("disputes") or [] if d["status"] != "won")


@settings(max_examples=300, deadline=None)
@given(ops)
def test_every_entry_balances_and_the_ledger_follows_the_payment(history: list) -> None:
    doc = _authorized()
    ledger: list[dict[str, Any]] = []
    for n, op in enumerate(history):
        before = money_state(doc)
        _step(doc, op, n)
        doc["version"] += 1
        ledger += entries_for_change(before, doc, doc["version"], "test")
        for e in ledger:
            assert e["entry_type"] in ENTRY_TYPES
            assert isinstance(e["amount"], int) and e["amount"] > 0
            assert e["debit"] != e["credit"] and e["currency"] == "JPY"
        totals = balances(ledger)
        assert sum(totals.values()) == 0  # balanced
        held = totals.get(provider_account("stripe_main"), 0)
        assert held == doc["amount_captured"] - doc["amount_refunded"] - _disputed(doc)
        assert totals.get("sales", 0) == -doc["amount_captured"]
        assert totals.get("refunds", 0) == doc["amount_refunded"]
    assert len({e["id"] for e in ledger}) == len(ledger)  # ids never repeat


def test_an_authorization_hold_is_not_money() -> None:
    doc = new_payment("pay_h", "acme", payment_body(), "fp")
    doc["provider"] = "stripe_main"
    before = money_state(doc)
    apply_status(doc, StatusEvent(S.AUTHORIZED, authorized=1000), "provider_response")
    assert entries_for_change(before, doc, 2, "provider_response") == []
    before = money_state(doc)
    apply_status(doc, StatusEvent(S.VOIDED), "merchant")
    assert entries_for_change(before, doc, 3, "merchant") == []


def test_a_capture_taken_back_is_a_reversal_never_an_edit() -> None:
    doc = _authorized()
    before = money_state(doc)
    apply_status(doc, StatusEvent(S.CAPTURED, captured=AMOUNT), "merchant")
    [capture] = entries_for_change(before, doc, 3, "merchant")
    before = money_state(doc)
    doc["amount_captured"] = 0  # a correction: the provider says nothing was captured
    [back] = entries_for_change(before, doc, 4, "reconciliation")
    assert back["entry_type"] == "capture" and back["reversal"] is True
    assert (back["debit"], back["credit"]) == (capture["credit"], capture["debit"])
    assert sum(balances([capture, back]).values()) == 0


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "5"])
def test_an_entry_is_a_positive_integer(amount: Any) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        new_entry("fee", entry_id="led_x", merchant_id="acme", provider="stripe_main",
                  currency="EUR", amount=amount, source="settlement")


# --------------------------------------------------------------------------- stores


def _fee(eid: str, amount: int = 30, currency: str = "EUR", merchant: str = "acme"
         ) -> dict[str, Any]:
    return new_entry("fee", entry_id=eid, merchant_id=merchant, provider="stripe_main",
                     currency=currency, amount=amount, source="settlement:stripe",
                     payment_id="pay_s1")


async def test_append_is_idempotent_and_balances_follow(store: Store) -> None:
    assert await store.append_ledger([_fee("led_f1"), _fee("led_f2", 20)]) == 2
    assert await store.append_ledger([_fee("led_f1"), _fee("led_f2", 20)]) == 0  # again
    assert await store.ledger_balances("acme", "EUR") == {"fees:stripe_main": 50,
                                                          "provider:stripe_main": -50}
    assert await store.ledger_balances("acme", "USD") == {}
    assert await store.ledger_balances("globex", "EUR") == {}
    assert [e["id"] for e in await store.list_ledger("pay_s1")] == ["led_f1", "led_f2"]
    bad = {**_fee("led_bad"), "credit": "fees:stripe_main"}
    with pytest.raises(ValueError, match="same account"):
        await store.append_ledger([_fee("led_ok"), bad])
    assert await store.list_ledger("pay_s1") == await store.list_ledger("pay_s1")
    assert "led_ok" not in [e["id"] for e in await store.list_ledger("pay_s1")]


async def test_ledger_entries_are_written_with_the_change_or_not_at_all(store: Store) -> None:
    doc = _authorized()
    doc["id"] = "pay_atomic"
    doc.pop("version")
    await store.insert_payment(doc, [])
    stored = await store.get_payment("pay_atomic")
    assert stored is not None
    before = money_state(stored)
    apply_status(stored, StatusEvent(S.CAPTURED, captured=AMOUNT), "merchant")
    entries = entries_for_change(before, stored, stored["version"] + 1, "merchant")
    assert len(entries) == 1
    # a lost compare-and-swap writes nothing: no entry, no balance
    assert not await store.update_payment(dict(stored), stored["version"] + 5, [], (), entries)
    assert await store.list_ledger("pay_atomic") == []
    assert await store.ledger_balances("acme", "JPY") == {}
    assert await store.update_payment(stored, stored["version"], [], (), entries)
    [entry] = await store.list_ledger("pay_atomic")
    assert entry == entries[0]
    assert await store.ledger_balances("acme", "JPY") == {"provider:stripe_main": AMOUNT,
                                                          "sales": -AMOUNT}


# --------------------------------------------------------------------------- end to end


@pytest.fixture
async def env(tmp_path: Path, store_url: str, aiohttp_client
              ) -> AsyncIterator[tuple[TestClient, SimControl, Path]]:
    providers = {"stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR"]}}
    config = write_config(tmp_path, store_url, providers=providers)
    port = free_port()
    app = create_app(load_config(config), public_url=f"http://127.0.0.1:{port}")
    client = await aiohttp_client(app, server_kwargs={"port": port})
    async with aiohttp.ClientSession() as session:
        yield (client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}",
                                  session), config)


async def test_the_ledger_of_a_captured_refunded_and_disputed_payment(
        env: tuple[TestClient, SimControl, Path], capsys: pytest.CaptureFixture[str]) -> None:
    client, sim, config = env
    body = payment_body(amount=2000, capture="automatic", reference="order-ledger")
    r = await client.post("/v1/payments", data=json.dumps(body), headers=headers(idem="lg-1"))
    pay = await r.json()
    assert r.status == 201 and pay["status"] == "captured", pay
    pid = pay["id"]
    r = await client.post(f"/v1/payments/{pid}/refunds", data=json.dumps({"amount": 500}),
                          headers=headers(idem="lg-2"))
    assert r.status == 201 and (await r.json())["refunds"][0]["status"] == "succeeded"
    async with sim.session.post(f"{sim.base}/_sim/stripe/disputes",
                                json={"reference": pid, "action": "open", "amount": 1500}) as r:
        assert r.status == 200, await r.text()

    async def disputed() -> dict[str, Any] | None:
        got = await (await client.get(f"/v1/payments/{pid}", headers=headers())).json()
        return got if got["disputes"] else None

    await wait_for(disputed, 15)
    r = await client.get(f"/v1/payments/{pid}/ledger", headers=headers())
    ledger = await r.json()
    assert r.status == 200 and ledger["object"] == "list" and ledger["payment_id"] == pid
    rows = [(e["entry_type"], e["amount"], e["debit"], e["credit"]) for e in ledger["data"]]
    assert rows == [("capture", 2000, "provider:stripe_main", "sales"),
                    ("refund", 500, "refunds", "provider:stripe_main"),
                    ("dispute", 1500, "disputes", "provider:stripe_main")]
    for e in ledger["data"]:
        assert set(e) == {"id", "entry_type", "amount", "currency", "debit", "credit",
                          "created_at", "source"}
        assert e["currency"] == "EUR" and e["created_at"].endswith("Z")
    assert [e["source"] for e in ledger["data"]] == ["provider_response", "provider_response",
                                                     "webhook:stripe_main"]
    r = await client.get(f"/v1/payments/{pid}/ledger", headers=headers(GLOBEX_KEY))
    assert r.status == 404
    r = await client.get("/v1/payments/pay_nope/ledger", headers=headers())
    assert r.status == 404

    capsys.readouterr()
    code = await asyncio.to_thread(main, ["ledger", "balance", "--config", str(config),
                                          "--merchant", "acme", "--currency", "eur", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["balanced"] is True
    assert report["accounts"] == {"disputes": 1500, "provider:stripe_main": 0,
                                  "refunds": 500, "sales": -2000}
    assert await asyncio.to_thread(main, ["ledger", "balance", "--config", str(config),
                                          "--merchant", "acme", "--currency", "XYZ"]) == 2
    assert await asyncio.to_thread(main, ["ledger", "balance", "--config", str(config),
                                          "--merchant", "acme", "--currency", "EUR"]) == 0
    assert "total (0 when balanced)" in capsys.readouterr().out
