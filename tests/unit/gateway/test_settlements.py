"""Settlement import and reconciliation to the cent (#14 items 3-5, SPEC 16), end to end
on both stores: payments through the gateway against the simulators, the simulator's own
settlement report fetched through the provider's API (the unmodified SDK / HTTP), imported
twice (nothing changes the second time), reconciled -- nothing on a clean day, and every
injected fault kind found on a faulty one; the CLI on the same store; the drift metric."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway import metrics
from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS, STORE
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.store import StoreError
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import free_port

ADMIN = {"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"}
PROVIDERS: dict[str, dict[str, Any]] = {
    "stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR", "JPY", "KWD"],
                    "fee_bps": 290},
    "adyen_main": {"type": "adyen", "sandbox": True, "currencies": ["EUR", "JPY", "KWD"],
                   "merchant_account": "SettleECOM", "fee_bps": 290},
    # Braintree reports no per-transaction fee: no fee_bps, and no fee drift to find
    "braintree_main": {"type": "braintree", "sandbox": True,
                       "currencies": ["EUR", "JPY", "KWD"],
                       "merchant_account_ids": {"EUR": "settle_eur", "JPY": "settle_jpy",
                                                "KWD": "settle_kwd"}},
}
SIM = {"stripe_main": "stripe", "adyen_main": "adyen", "braintree_main": "braintree"}


@dataclass
class Env:
    client: TestClient
    sim: SimControl
    config: Path

    async def post(self, path: str, idem: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.post(path, data=json.dumps(body), headers=headers(idem=idem))
        got = await r.json()
        assert r.status in (200, 201), got
        return got

    async def admin(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = await self.client.post(path, data=json.dumps(body), headers=ADMIN)
        return r.status, await r.json()

    async def control(self, path: str, body: dict[str, Any]) -> None:
        async with self.sim.session.post(f"{self.sim.base}{path}", json=body) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
async def env(tmp_path: Path, store_url: str, aiohttp_client) -> AsyncIterator[Env]:
    config = write_config(tmp_path, store_url, providers=PROVIDERS)
    port = free_port()  # the simulators' webhooks (Adyen's confirmations, disputes) come here
    app = create_app(load_config(config), public_url=f"http://127.0.0.1:{port}")
    client = await aiohttp_client(app, server_kwargs={"port": port})
    async with aiohttp.ClientSession() as session:
        yield Env(client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}",
                                     session), config)


async def _day(env: Env, provider: str) -> dict[str, list[str]]:
    """A day of payments at ``provider``: captures in a two-, zero- and three-decimal
    currency, a partial refund, a dispute opened. Returns payment ids by role."""
    roles: dict[str, list[str]] = {"captured": [], "refunded": [], "disputed": []}
    for n, (currency, amount) in enumerate([("EUR", 1250), ("JPY", 500), ("KWD", 1230),
                                            ("EUR", 9999), ("EUR", 4000), ("EUR", 700)]):
        body = payment_body(amount=amount, currency=currency, capture="automatic",
                            reference=f"order-{provider}-{n}",
                            payment_method={"type": "card",
                                            "provider_tokens": {provider: "tok_visa"}})
        pay = await env.post("/v1/payments", f"set-{provider}-{n}", body)

        async def captured(pid: str = pay["id"]) -> dict[str, Any] | None:
            got = await (await env.client.get(f"/v1/payments/{pid}", headers=headers())).json()
            return got if got["status"] == "captured" else None

        pay = await wait_for(captured, 15)
        roles["captured"].append(pay["id"])
    refunded = roles["captured"][3]
    await env.post(f"/v1/payments/{refunded}/refunds", f"set-{provider}-r", {"amount": 999})

    async def refund_settled() -> dict[str, Any] | None:
        got = await (await env.client.get(f"/v1/payments/{refunded}", headers=headers())).json()
        return got if got["amount_refunded"] == 999 else None

    await wait_for(refund_settled, 15)
    roles["refunded"].append(refunded)
    disputed = roles["captured"][4]
    await env.control(f"/_sim/{SIM[provider]}/disputes",
                      {"reference": disputed, "action": "open", "amount": 4000})

    async def dispute_seen() -> dict[str, Any] | None:
        got = await (await env.client.get(f"/v1/payments/{disputed}", headers=headers())).json()
        return got if got["disputes"] else None

    await wait_for(dispute_seen, 15)
    roles["disputed"].append(disputed)
    return roles


def _tally(report: dict[str, Any], provider: str) -> dict[str, dict[str, int]]:
    """Sum the per-currency buckets of one provider: kind -> {count, sum}."""
    out: dict[str, dict[str, int]] = {}
    for b in report["providers"]:
        if b["provider"] != provider:
            continue
        for kind in ("matched", "missing_at_provider", "missing_in_gateway", "amount_drift",
                     "fee_drift", "payout_mismatch"):
            t = out.setdefault(kind, {"count": 0, "sum": 0})
            t["count"] += b[kind]["count"]
            t["sum"] += b[kind]["sum"]
    return out


TODAY = dt.datetime.now(dt.UTC).date().isoformat()


def unpaid_somewhere(lines: list[dict[str, Any]]) -> bool:
    return any(x["payout_id"] is None and x["net"] != 0 for x in lines)


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_clean_day_reconciles_to_the_cent_and_imports_once(
        env: Env, provider: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roles = await _day(env, provider)
    status, first = await env.admin("/admin/settlements/import",
                                    {"provider": provider, "date": TODAY})
    assert status == 200, first
    assert first["lines"] > 0 and first["new_lines"] == first["lines"]
    assert first["unknown_payments"] == 0 and first["new_ledger_entries"] > 0
    status, again = await env.admin("/admin/settlements/import",
                                    {"provider": provider, "date": TODAY})
    assert status == 200 and again["lines"] == first["lines"]
    assert (again["new_lines"], again["new_ledger_entries"]) == (0, 0)  # idempotent
    # the same report as a file (the simulator's control API serves what its provider's API
    # gives), imported by the CLI on the same store: the same lines, nothing new
    async with env.sim.session.get(f"{env.sim.base}/_sim/{SIM[provider]}/settlement",
                                   params={"date": TODAY}) as r:
        assert r.status == 200
        (tmp_path / "report").write_bytes(await r.read())
    capsys.readouterr()
    code = await asyncio.to_thread(main, [
        "settlements", "import", "--config", str(env.config), "--provider", provider,
        "--file", str(tmp_path / "report")])
    from_file = json.loads(capsys.readouterr().out)
    assert code == 0 and from_file["lines"] == first["lines"], from_file
    assert (from_file["new_lines"], from_file["new_ledger_entries"]) == (0, 0), from_file

    status, report = await env.admin("/admin/settlements/reconcile",
                                     {"date": TODAY, "providers": [provider]})
    assert status == 200 and report["drift"] is False, json.dumps(report, indent=1)
    tally = _tally(report, provider)
    # 6 captures, 1 refund, 1 dispute, each matched to its ledger entry
    assert tally["matched"]["count"] == 8, tally
    for kind in ("missing_at_provider", "missing_in_gateway", "amount_drift", "fee_drift",
                 "payout_mismatch"):
        assert tally[kind] == {"count": 0, "sum": 0}, (kind, tally)
    # the fees are in the ledger: the payment's provider balance nets to captured - fee
    r = await env.client.get(f"/v1/payments/{roles['captured'][0]}/ledger", headers=headers())
    kinds = [e["entry_type"] for e in (await r.json())["data"]]
    fees = 1 if PROVIDERS[provider].get("fee_bps") is not None else 0
    assert kinds.count("capture") == 1 and kinds.count("fee") == fees, kinds
    code = await asyncio.to_thread(main, ["ledger", "balance", "--config", str(env.config),
                                          "--merchant", "acme", "--currency", "EUR"])
    assert code == 0  # still balanced with fees and payouts
    # what reached the bank in the ledger is what the provider says it paid out, and what
    # the provider still holds (captured - fees - refunds - disputes - payouts) is what no
    # payout carried yet (Braintree's disputes name no disbursement)
    store = env.client.app[STORE]
    lines = await store.list_settlement_lines(provider, TODAY)
    for currency in ("EUR", "JPY", "KWD"):
        mine = [x for x in lines if x["currency"] == currency]
        paid = -sum(int(x["gross"]) for x in mine if x["kind"] == "payout")
        unpaid = sum(int(x["net"]) for x in mine if x["payout_id"] is None)
        balances = await store.ledger_balances("acme", currency)
        assert paid > 0 and balances.get("bank") == paid, (currency, paid, balances)
        assert balances.get(f"provider:{provider}", 0) == unpaid, (currency, unpaid, balances)
    assert provider != "braintree_main" or unpaid_somewhere(lines)


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_every_injected_fault_is_found(env: Env, provider: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    roles = await _day(env, provider)
    sim = SIM[provider]
    captured = roles["captured"]
    faults = {"unsettled_capture": captured[0], "fee_changed": captured[1],
              "wrong_payout": captured[2], "double_refund": roles["refunded"][0]}
    fees = PROVIDERS[provider].get("fee_bps") is not None
    if not fees:  # the simulator refuses it (409 fees_not_reported): nothing to find
        del faults["fee_changed"]
    for kind, pid in faults.items():
        await env.control(f"/_sim/{sim}/settlement_faults", {"kind": kind, "reference": pid})
    # a second capture in the wrong payout, in another currency (captured[2] is KWD): one
    # payout id may carry several currencies (an Adyen batch); each is checked on its own
    moved = [captured[2], captured[5]]
    await env.control(f"/_sim/{sim}/settlement_faults",
                      {"kind": "wrong_payout", "reference": moved[1]})
    status, imported = await env.admin("/admin/settlements/import",
                                       {"provider": provider, "date": TODAY})
    assert status == 200, imported
    status, report = await env.admin("/admin/settlements/reconcile",
                                     {"date": TODAY, "providers": [provider]})
    assert status == 200 and report["drift"] is True
    details = [d for b in report["providers"] for d in b["details"]]
    found = {(d["kind"], d.get("payment_id")) for d in details}
    assert ("missing_at_provider", faults["unsettled_capture"]) in found, details
    assert ("missing_in_gateway", faults["double_refund"]) in found, details
    if fees:
        assert ("fee_drift", faults["fee_changed"]) in found, details
    short = {b["currency"]: [d["amount"] for d in b["details"]
                             if d["kind"] == "payout_mismatch" and "payout" in d]
             for b in report["providers"]}
    for pid in moved:  # the day's payout is short by exactly the moved capture's net
        doc = await (await env.client.get(f"/v1/payments/{pid}", headers=headers())).json()
        ledger = await env.client.app[STORE].list_ledger(pid)
        fee = sum(e["amount"] for e in ledger if e["entry_type"] == "fee")
        assert short[doc["currency"]] == [doc["amount_captured"] - fee], (doc, short)
    assert sorted(c for c, v in short.items() if v) == ["EUR", "KWD"], short
    tally = _tally(report, provider)
    assert tally["missing_at_provider"]["count"] == 1
    assert tally["missing_in_gateway"]["count"] == 1 and tally["amount_drift"]["count"] == 0
    assert tally["fee_drift"]["count"] == (1 if fees else 0)
    # the same as metrics, in this process
    for kind in ("missing_at_provider", "missing_in_gateway", "payout_mismatch",
                 *(("fee_drift",) if fees else ())):
        values = [metrics.REGISTRY.get_sample_value(
            "gateway_settlement_drift_minor_units",
            {"provider": provider, "currency": c, "kind": kind}) or 0 for c in
            ("EUR", "JPY", "KWD")]
        assert sum(values) > 0, kind
    # and from the CLI on the same store: exit 1, the same findings
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["settlements", "reconcile", "--config",
                                          str(env.config), "--date", TODAY, "--json"])
    cli = json.loads(capsys.readouterr().out)
    assert code == 1 and cli["drift"] is True
    assert _tally(cli, provider) == tally
    code = await asyncio.to_thread(main, ["settlements", "reconcile", "--config",
                                          str(env.config), "--date", TODAY])
    out = capsys.readouterr().out
    assert code == 1 and "DRIFT FOUND" in out and "missing_at_provider" in out
    # the gauge is what the last reconciliation found: the next day (nothing settled,
    # nothing recorded) brings every series of the provider back to 0, so the alert stops
    tomorrow = (dt.date.fromisoformat(TODAY) + dt.timedelta(days=1)).isoformat()
    status, clean = await env.admin("/admin/settlements/reconcile",
                                    {"date": tomorrow, "providers": [provider]})
    assert status == 200 and clean["drift"] is False and clean["providers"] == [], clean
    for currency in ("EUR", "JPY", "KWD"):
        for kind in ("missing_at_provider", "missing_in_gateway", "amount_drift",
                     "fee_drift", "payout_mismatch"):
            assert metrics.REGISTRY.get_sample_value(
                "gateway_settlement_drift_minor_units",
                {"provider": provider, "currency": currency, "kind": kind}) == 0, (
                currency, kind)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_fee_bps_is_refused_where_the_report_has_no_fee(tmp_path: Path, provider: str
                                                        ) -> None:
    """Braintree's settlement data has no per-transaction fee (the simulator refuses a
    fee_changed fault, 409 fees_not_reported): a fee_bps on a Braintree entry would make
    every capture a fee_drift of its whole fee, so the configuration refuses it; Stripe and
    Adyen take it."""
    entry = {**PROVIDERS[provider], "fee_bps": 290}
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}",
                          providers={provider: entry})
    if provider != "braintree_main":
        assert load_config(config).providers[provider].fee_bps == 290
        return
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert f"providers.{provider}.fee_bps" in str(exc.value), exc.value
    assert "no per-transaction fee" in str(exc.value), exc.value


async def test_import_refusals(env: Env, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"provider": "nope", "date": TODAY}, "provider"),
        ({"provider": "stripe_main", "date": "03/12/2026"}, "date"),
        ({"provider": "stripe_main"}, "date"),
        ({"provider": "stripe_main", "date": TODAY, "x": 1}, "x")]
    for body, param in cases:
        status, err = await env.admin("/admin/settlements/import", body)
        assert (status, err["error"]["param"]) == (400, param), err
    r = await env.client.post("/admin/settlements/reconcile", data="{}", headers=headers())
    assert r.status == 403  # a merchant key
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a report"}')
    assert await asyncio.to_thread(main, [
        "settlements", "import", "--config", str(env.config), "--provider", "stripe_main",
        "--file", str(bad)]) == 1
    assert await asyncio.to_thread(main, [
        "settlements", "import", "--config", str(env.config), "--provider", "stripe_main",
        "--file", str(tmp_path / "missing.json")]) == 1
    assert await asyncio.to_thread(main, [
        "settlements", "reconcile", "--config", str(env.config), "--date", "yesterday"]) == 2


async def test_an_import_cut_short_after_its_lines_were_kept_completes_when_run_again(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The import keeps the lines, then writes the ledger entries: two store writes. The
    store fails between them; importing the same report again writes what was missing
    (the entries are idempotent by id), and the day reconciles clean."""
    provider = "stripe_main"
    roles = await _day(env, provider)
    store = env.client.app[STORE]
    kept = store.append_ledger

    async def store_gone(entries: list[dict[str, Any]]) -> int:
        raise StoreError("the store went away after the lines were kept")

    monkeypatch.setattr(store, "append_ledger", store_gone)
    status, err = await env.admin("/admin/settlements/import",
                                  {"provider": provider, "date": TODAY})
    assert status == 503 and err["error"]["code"] == "store_unavailable", err
    lines = await store.list_settlement_lines(provider, TODAY)
    assert lines, "the lines were kept before the failure"
    ledger = await store.list_ledger(roles["captured"][0])
    assert [e["entry_type"] for e in ledger].count("fee") == 0  # ... and no fee entry
    # until the import is run again, reconciliation says what the ledger lacks: each kept
    # line's fee and payout entry, missing in the gateway
    status, short = await env.admin("/admin/settlements/reconcile",
                                    {"date": TODAY, "providers": [provider]})
    assert status == 200 and short["drift"] is True, short
    unbooked = [d for b in short["providers"] for d in b["details"]]
    assert unbooked and {d["kind"] for d in unbooked} == {"missing_in_gateway"}, unbooked
    assert {d["line_kind"] for d in unbooked} == {"fee", "payout"}, unbooked
    assert all("import the report again" in d["why"] for d in unbooked), unbooked
    due = sum(1 for x in lines if x["payment_id"] and x["kind"] != "payout" and x["fee"] > 0)
    due += sum(1 for x in lines if x["payment_id"] and x["kind"] != "payout"
               and x["payout_id"] and x["net"] != 0)
    assert len(unbooked) == due, (len(unbooked), due)
    assert _tally(short, provider)["matched"]["count"] == 8  # the money itself is there
    monkeypatch.setattr(store, "append_ledger", kept)

    status, again = await env.admin("/admin/settlements/import",
                                    {"provider": provider, "date": TODAY})
    assert status == 200, again
    assert again["new_lines"] == 0 and again["new_ledger_entries"] > 0, again
    status, report = await env.admin("/admin/settlements/reconcile",
                                     {"date": TODAY, "providers": [provider]})
    assert status == 200 and report["drift"] is False, json.dumps(report, indent=1)
    assert _tally(report, provider)["matched"]["count"] == 8
    ledger = await store.list_ledger(roles["captured"][0])
    assert [e["entry_type"] for e in ledger].count("fee") == 1
    status, third = await env.admin("/admin/settlements/import",
                                    {"provider": provider, "date": TODAY})
    assert (third["new_lines"], third["new_ledger_entries"]) == (0, 0)
