"""Braintree settlement (#14 items 3, 5, provider side): the simulator's settlement batch
summary, settled transactions and disputes, ``GET /_sim/braintree/settlement``, ``POST
/_sim/braintree/settlement_faults``, ``providers.braintree.settlement``.

The witness is the braintree SDK itself: its ``settlement_batch_summary.generate`` and
transaction search run against the simulator unmodified, its ``XmlUtil`` and resource
classes (``SettlementBatchSummary``, ``Transaction``, ``DisbursementDetail``,
``Dispute``) read the report the simulator serves, and the records have the attributes
Braintree documents (kind, card_type, merchant_account_id, count, amount_settled).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import braintree
import pytest
from braintree.util.xml_util import XmlUtil

from providers.braintree.adapter import make_environment
from providers.braintree.settlement import ROOT, fetch_settlement, parse_braintree
from providers.braintree.simulator import BraintreeSimulator
from providers.registry import DECLARATIONS
from providers.settlement import MalformedSettlement
from providers.simulator import SimulatorHost
from tests.settlement_harness import (
    by_kind,
    check_refusals,
    fault,
    payout_balances,
    report_bytes,
    today,
)

ACCOUNTS = {"acct_eur": "EUR", "acct_jpy": "JPY", "acct_kwd": "KWD"}
CREDS = {"merchant_id": "m_settle", "public_key": "pub", "private_key": "priv"}
RECORD_KEYS = {"kind", "card_type", "merchant_account_id", "count", "amount_settled"}


@dataclass
class Settings:
    base_url: str | None
    name: str = "braintree"
    type: str = "braintree"
    currencies: frozenset[str] = frozenset()
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    sandbox: bool = True
    credentials: dict[str, str] = field(default_factory=lambda: dict(CREDS))
    options: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
async def host() -> AsyncIterator[SimulatorHost]:
    h = SimulatorHost([BraintreeSimulator(merchant_accounts=ACCOUNTS)], control_port=0)
    await h.start()
    yield h
    await h.stop()


def gateway(host: SimulatorHost) -> braintree.BraintreeGateway:
    return braintree.BraintreeGateway(braintree.Configuration(
        environment=make_environment(host.base_url("braintree")), **CREDS))


async def sdk(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def pay(host: SimulatorHost, ref: str, amount: str, account: str,
              capture: bool = True) -> str:
    result = await sdk(gateway(host).transaction.sale, {
        "amount": amount, "payment_method_nonce": "fake-valid-nonce",
        "merchant_account_id": account, "order_id": ref,
        "options": {"submit_for_settlement": capture}})
    assert result.is_success, result
    return str(result.transaction.id)


async def refund(host: SimulatorHost, txn: str, amount: str) -> str:
    result = await sdk(gateway(host).transaction.refund, txn, amount)
    assert result.is_success, result
    return str(result.transaction.id)


async def dispute(host: SimulatorHost, ref: str, action: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{host.control_url}/_sim/braintree/disputes",
                          json={"reference": ref, "action": action}) as resp:
            assert resp.status == 200, await resp.text()


#: Braintree amounts (ISO decimals) -> ISO minor units: EUR (2), JPY (0), KWD (3)
DAY = {"pay_eur": ("20.00", "acct_eur", 2000), "pay_jpy": ("500", "acct_jpy", 500),
       "pay_kwd": ("12.345", "acct_kwd", 12345), "pay_dsp": ("30.00", "acct_eur", 3000)}


async def simulated_day(host: SimulatorHost) -> dict[str, str]:
    ids = {ref: await pay(host, ref, amount, account)
           for ref, (amount, account, _) in DAY.items()}
    await refund(host, ids["pay_kwd"], "1.005")
    await refund(host, ids["pay_eur"], "5.00")
    await dispute(host, "pay_dsp", "open")
    await dispute(host, "pay_dsp", "win")
    await pay(host, "pay_auth", "7.00", "acct_eur", capture=False)
    return ids


async def test_a_day_parses_to_the_exact_iso_amounts_charged(host: SimulatorHost) -> None:
    ids = await simulated_day(host)
    lines = parse_braintree(await report_bytes(host, "braintree"))
    assert {line.settled_on for line in lines} == {today().isoformat()}
    captures = {line.merchant_reference: line for line in by_kind(lines, "capture")}
    assert set(captures) == set(DAY)
    for ref, (_, account, iso) in DAY.items():
        line = captures[ref]
        assert (line.line_id, line.payment_reference, line.currency, line.gross, line.fee,
                line.net, line.payout_id) == (
            ids[ref], ids[ref], ACCOUNTS[account], iso, 0, iso,
            f"{account}:{today().isoformat()}"), ref
    refunds = {line.merchant_reference: line for line in by_kind(lines, "refund")}
    assert {r: (x.gross, x.currency, x.payment_reference) for r, x in refunds.items()} == {
        "pay_kwd": (-1005, "KWD", ids["pay_kwd"]), "pay_eur": (-500, "EUR", ids["pay_eur"])}
    [opened] = by_kind(lines, "dispute")
    [won] = by_kind(lines, "dispute_reversal")
    assert (opened.payment_reference, opened.merchant_reference, opened.gross, won.gross,
            opened.payout_id) == (ids["pay_dsp"], "pay_dsp", -3000, 3000, None)
    payouts = {p.payout_id: p for p in by_kind(lines, "payout")}
    assert {pid: (p.currency, p.gross) for pid, p in payouts.items()} == {
        f"acct_eur:{today()}": ("EUR", -(2000 - 500 + 3000)),
        f"acct_jpy:{today()}": ("JPY", -500), f"acct_kwd:{today()}": ("KWD", -(12345 - 1005))}
    assert set(payout_balances(lines).values()) == {0}


async def test_the_sdk_reads_what_the_simulator_serves(host: SimulatorHost) -> None:
    ids = await simulated_day(host)
    raw = await report_bytes(host, "braintree")
    doc = XmlUtil.dict_from_xml(raw.decode())[ROOT]
    summary = braintree.SettlementBatchSummary(None, doc["settlement_batch_summary"])
    assert summary.records and all(set(r) == RECORD_KEYS for r in summary.records)
    sales = {r["merchant_account_id"]: Decimal(r["amount_settled"]) for r in summary.records
             if r["kind"] == "sale"}
    assert sales == {"acct_eur": Decimal("50.00"), "acct_jpy": Decimal("500"),
                     "acct_kwd": Decimal("12.345")}
    txns = [braintree.Transaction(None, t) for t in doc["transactions"]]
    assert {t.id for t in txns if t.type == "sale"} == set(ids.values())
    for txn in txns:
        assert txn.status == "settled" and txn.settlement_batch_id == (
            f"{today()}_{txn.merchant_account_id}")
        assert txn.disbursement_details.is_valid
        assert txn.disbursement_details.settlement_amount == txn.amount
    [disputed] = [braintree.Dispute(d) for d in doc["disputes"]]
    assert (disputed.status, disputed.amount_disputed) == ("won", Decimal("30.00"))
    # the SDK's own calls against the simulator give the same summary and transactions
    gw = gateway(host)
    result = await sdk(gw.settlement_batch_summary.generate, today().isoformat())
    assert result.is_success and result.settlement_batch_summary.records == summary.records
    criterion = braintree.TransactionSearch.settlement_batch_id.starts_with(f"{today()}_")
    found = await sdk(lambda: [t.id for t in gw.transaction.search(criterion).items])
    assert sorted(found) == sorted(t.id for t in txns)
    bad = await sdk(gw.settlement_batch_summary.generate, "THIS AINT NO DATE")
    errors = bad.errors.for_object("settlement_batch_summary").on("settlement_date")
    assert not bad.is_success and [e.code for e in errors] == [
        braintree.ErrorCodes.SettlementBatchSummary.SettlementDateIsInvalid]
    empty = await sdk(gw.settlement_batch_summary.generate, "2011-01-01")
    assert empty.is_success and empty.settlement_batch_summary.records == []


async def test_the_sdk_fetches_the_same_batch(host: SimulatorHost) -> None:
    await simulated_day(host)
    raw = await fetch_settlement(Settings(base_url=host.base_url("braintree")), today())
    served = parse_braintree(await report_bytes(host, "braintree"))
    assert parse_braintree(raw) == served
    assert by_kind(served, "dispute") and by_kind(served, "dispute_reversal")
    found = await sdk(lambda: [d.id for d in gateway(host).dispute.search(
        braintree.DisputeSearch.effective_date.between(today(), today())).disputes.items])
    assert found == [by_kind(served, "dispute")[0].line_id]
    none = await sdk(lambda: list(gateway(host).dispute.search(
        braintree.DisputeSearch.received_date.between("2011-01-01", "2011-01-02")).disputes.items))
    assert none == []
    decl = DECLARATIONS["braintree"]
    assert decl.fetch_settlement is fetch_settlement
    assert decl.parse_settlement is parse_braintree


async def test_the_same_report_twice_gives_the_same_ids(host: SimulatorHost) -> None:
    await simulated_day(host)
    first = parse_braintree(await report_bytes(host, "braintree"))
    assert first == parse_braintree(await report_bytes(host, "braintree"))
    assert len({line.line_id for line in first}) == len(first)


async def test_control_refusals(host: SimulatorHost) -> None:
    await pay(host, "pay_cap", "20.00", "acct_eur")
    await pay(host, "pay_auth", "20.00", "acct_eur", capture=False)
    await check_refusals(host, "braintree", captured="pay_cap", uncaptured="pay_auth",
                         fees_reported=False)


async def test_each_fault_changes_the_parsed_lines(host: SimulatorHost) -> None:
    ids = {ref: await pay(host, ref, "20.00", "acct_eur") for ref in ("p_ok", "p_a", "p_b",
                                                                        "p_d")}
    await refund(host, ids["p_b"], "7.00")
    clean = parse_braintree(await report_bytes(host, "braintree"))
    for kind, ref in (("unsettled_capture", "p_a"), ("double_refund", "p_b"),
                      ("wrong_payout", "p_d")):
        status, answer = await fault(host, "braintree", {"kind": kind, "reference": ref})
        assert status == 200 and answer["fault"] == {"kind": kind, "reference": ref}
    lines = parse_braintree(await report_bytes(host, "braintree"))
    assert not by_kind(lines, "capture", "p_a") and by_kind(clean, "capture", "p_a")
    refunds = by_kind(lines, "refund", "p_b")
    assert len(refunds) == 2 and len({r.line_id for r in refunds}) == 2
    assert {r.gross for r in refunds} == {-700}
    [moved] = by_kind(lines, "capture", "p_d")
    [day_payout] = by_kind(lines, "payout")
    tomorrow = today() + dt.timedelta(days=1)
    assert moved.payout_id == f"acct_eur:{tomorrow}" != day_payout.payout_id
    assert payout_balances(lines)[(day_payout.payout_id, "EUR")] == -moved.net
    # the batch pays what it settled: without the missing sale, with both credits
    assert day_payout.gross == -(3 * 2000 - 2 * 700)
    assert [x for x in lines if x.merchant_reference == "p_ok"] == [
        x for x in clean if x.merchant_reference == "p_ok"]


def _doc(inner: str, day: str = "2026-01-02") -> bytes:
    return (f'<braintree-settlement-report><settlement-date type="date">{day}'
            f"</settlement-date>{inner}</braintree-settlement-report>").encode()


SUMMARY = ('<settlement-batch-summary><records type="array"><record><card-type>Visa'
           '</card-type><count>1</count><merchant-account-id>a</merchant-account-id><kind>'
           'sale</kind><amount-settled>10.00</amount-settled></record></records>'
           '</settlement-batch-summary>')
TXN = ('<transactions type="array"><transaction><id>t1</id><type>sale</type><status>settled'
       '</status><amount>10.00</amount><currency-iso-code>EUR</currency-iso-code>'
       '<merchant-account-id>a</merchant-account-id><order-id>o1</order-id>'
       '<settlement-batch-id>2026-01-02_a</settlement-batch-id></transaction></transactions>')


def test_a_minimal_document_parses() -> None:
    capture, payout = parse_braintree(_doc(SUMMARY + TXN))
    assert (capture.kind, capture.gross, capture.payout_id, capture.merchant_reference) == (
        "capture", 1000, None, "o1")
    assert (payout.kind, payout.gross, payout.payout_id) == ("payout", -1000, "a:2026-01-02")


@pytest.mark.parametrize("raw", [
    b"", b"<not-closed>", b"<other/>", _doc(TXN), _doc(SUMMARY),  # no currency for a
    _doc(SUMMARY + TXN, day="someday"),
    _doc(SUMMARY + TXN.replace("<type>sale", "<type>refund")),
    _doc(SUMMARY + TXN.replace("settled</status>", "authorized</status>")),
    _doc(SUMMARY + TXN.replace("10.00</amount>", "10.001</amount>")),
    _doc(SUMMARY + TXN.replace("EUR", "eur")),
    _doc(SUMMARY.replace("<count>1", "<count>one") + TXN),
    _doc(SUMMARY.replace("<kind>sale", "<kind>chargeback") + TXN),
    _doc(SUMMARY + TXN.replace("<id>t1</id>", "")),
])
def test_malformed_documents_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedSettlement):
        parse_braintree(raw)


def test_a_repeated_transaction_is_refused() -> None:
    twice = TXN.replace("</transaction></transactions>", "</transaction>"
                        + TXN.split('type="array">', 1)[1])
    with pytest.raises(MalformedSettlement, match="twice"):
        parse_braintree(_doc(SUMMARY + twice))
