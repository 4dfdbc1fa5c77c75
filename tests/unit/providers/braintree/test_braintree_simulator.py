"""The unmodified braintree SDK against the Braintree simulator over real sockets."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qs

import braintree
import pytest
from aiohttp import web
from braintree.exceptions import (
    AuthenticationError,
    InvalidSignatureError,
    NotFoundError,
    ServerError,
)
from braintree.exceptions.http import TimeoutError as SdkTimeoutError

from providers.braintree.simulator import BraintreeSimulator
from providers.simulator.host import SimulatorHost
from tests.paths import REPO

T = TypeVar("T")
MERCHANT, PUBLIC, PRIVATE = "merch1", "pub1", "priv1"
DEADLINE_S = 5.0


def sdk_gateway(port: int, public: str = PUBLIC, private: str = PRIVATE
                ) -> braintree.BraintreeGateway:
    env = braintree.Environment("simulator", "127.0.0.1", str(port), "http://127.0.0.1", False,
                                None)
    return braintree.BraintreeGateway(braintree.Configuration(
        environment=env, merchant_id=MERCHANT, public_key=public, private_key=private,
        timeout=5, wrap_http_exceptions=True))


@dataclass
class Env:
    sim: BraintreeSimulator
    host: SimulatorHost
    gw: braintree.BraintreeGateway

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """The SDK is synchronous: run it off the loop that serves the simulator."""
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(fn, *args))

    async def sale(self, nonce: str = "tok_visa", amount: str = "10.00", order_id: str = "o-1",
                   submit: bool = False, **extra: Any) -> Any:
        params = {"amount": amount, "payment_method_nonce": nonce, "order_id": order_id,
                  "options": {"submit_for_settlement": submit}, **extra}
        return await self.call(self.gw.transaction.sale, params)


async def wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def _env(**kwargs: Any) -> tuple[SimulatorHost, Env]:
    sim = BraintreeSimulator(merchant_id=MERCHANT, public_key=PUBLIC, private_key=PRIVATE,
                             **kwargs)
    host = SimulatorHost([sim], control_port=None)
    await host.start()
    return host, Env(sim, host, sdk_gateway(host.port("braintree")))


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    host, e = await _env()
    yield e
    await host.stop()


@pytest.fixture
async def slow_env() -> AsyncIterator[Env]:
    """Settlement never happens during the test; tok_pending resolves quickly."""
    host, e = await _env(settle_delay_s=3600, async_delay_s=0.05)
    yield e
    await host.stop()


async def test_manual_sale_partial_settle_refund(env: Env) -> None:
    r = await env.sale(amount="10.00", order_id="pay-1")
    assert r.is_success
    txn = r.transaction
    assert (txn.status, txn.amount, txn.order_id, txn.type) == (
        "authorized", Decimal("10.00"), "pay-1", "sale")
    assert txn.currency_iso_code == "USD"
    assert txn.processor_response_code == "1000"

    s = await env.call(env.gw.transaction.submit_for_settlement, txn.id, "6.00")
    assert s.is_success
    assert (s.transaction.status, s.transaction.amount) == ("submitted_for_settlement",
                                                            Decimal("6.00"))
    found = await env.call(env.gw.transaction.find, txn.id)
    assert found.status == "settled"  # settle_delay_s=0: settled right after the answer

    ref = await env.call(env.gw.transaction.refund, txn.id, "2.50")
    assert ref.is_success
    assert ref.transaction.type == "credit"
    assert ref.transaction.refunded_transaction_id == txn.id
    assert ref.transaction.amount == Decimal("2.50")

    too_much = await env.call(env.gw.transaction.refund, txn.id, "4.00")
    assert not too_much.is_success
    assert [e.code for e in too_much.errors.deep_errors] == ["91521"]

    [charge] = env.sim.charges("pay-1")
    assert (charge.amount, charge.amount_captured, charge.amount_refunded) == (1000, 600, 250)
    assert charge.status == "settled"
    assert env.sim.requests.count("sale") == 1
    assert env.sim.requests.count("refund") == 2


async def test_auto_settle(env: Env) -> None:
    r = await env.sale(submit=True, order_id="pay-auto")
    assert r.is_success and r.transaction.status == "submitted_for_settlement"
    assert (await env.call(env.gw.transaction.find, r.transaction.id)).status == "settled"
    [charge] = env.sim.charges("pay-auto")
    assert charge.amount_captured == 1000


async def test_full_settle_with_empty_amount_then_full_refund(env: Env) -> None:
    r = await env.sale(amount="7.25", order_id="pay-full")
    s = await env.call(env.gw.transaction.submit_for_settlement, r.transaction.id)
    assert s.transaction.amount == Decimal("7.25")
    ref = await env.call(env.gw.transaction.refund, r.transaction.id)
    assert ref.is_success and ref.transaction.amount == Decimal("7.25")
    again = await env.call(env.gw.transaction.refund, r.transaction.id)
    assert [e.code for e in again.errors.deep_errors] == ["91512"]


async def test_void(env: Env) -> None:
    r = await env.sale(order_id="pay-void")
    v = await env.call(env.gw.transaction.void, r.transaction.id)
    assert v.is_success and v.transaction.status == "voided"
    again = await env.call(env.gw.transaction.void, r.transaction.id)
    assert not again.is_success
    assert [e.code for e in again.errors.deep_errors] == ["91504"]
    settle = await env.call(env.gw.transaction.submit_for_settlement, r.transaction.id)
    assert [e.code for e in settle.errors.deep_errors] == ["91507"]


@pytest.mark.parametrize(("nonce", "code", "text"), [
    ("tok_insufficient_funds", "2001", "Insufficient Funds"),
    ("tok_decline", "2000", "Do Not Honor"),
    ("fake-processor-declined-visa-nonce", "2000", "Do Not Honor"),
])
async def test_decline_with_processor_code(env: Env, nonce: str, code: str, text: str) -> None:
    r = await env.sale(nonce=nonce, order_id="pay-d")
    assert not r.is_success
    assert r.message == text
    assert r.transaction.status == "processor_declined"
    assert (r.transaction.processor_response_code, r.transaction.processor_response_text) == (
        code, text)
    assert r.errors.deep_errors == []


async def test_three_d_secure_token_is_gateway_rejected(env: Env) -> None:
    r = await env.sale(nonce="tok_3ds")
    assert not r.is_success
    assert r.transaction.status == "gateway_rejected"
    assert r.transaction.gateway_rejection_reason == "three_d_secure"


@pytest.mark.parametrize("nonce", ["fake-valid-nonce", "fake-valid-visa-nonce",
                                   "fake-valid-mastercard-nonce", "tok_mastercard"])
async def test_braintree_test_nonces_approve(env: Env, nonce: str) -> None:
    r = await env.sale(nonce=nonce)
    assert r.is_success and r.transaction.status == "authorized"


async def test_unknown_nonce_and_bad_amount_are_validation_errors(env: Env) -> None:
    r = await env.sale(nonce="nope")
    assert [e.code for e in r.errors.deep_errors] == ["91565"]
    r = await env.sale(amount="1.234")
    assert [e.code for e in r.errors.deep_errors] == ["81503"]
    assert env.sim.transactions == {}


async def test_pending_token_is_authorizing_then_authorized(slow_env: Env) -> None:
    r = await slow_env.sale(nonce="tok_pending", order_id="pay-p")
    assert r.is_success and r.transaction.status == "authorizing"
    txn_id = r.transaction.id
    await wait_for(lambda: slow_env.sim.transactions[txn_id].status == "authorized")
    assert (await slow_env.call(slow_env.gw.transaction.find, txn_id)).status == "authorized"


async def test_refund_before_settlement_is_refused(slow_env: Env) -> None:
    r = await slow_env.sale(submit=True)
    assert r.transaction.status == "submitted_for_settlement"
    ref = await slow_env.call(slow_env.gw.transaction.refund, r.transaction.id, "1.00")
    assert [e.code for e in ref.errors.deep_errors] == ["91506"]
    big = await slow_env.sale(order_id="o-2")
    s = await slow_env.call(slow_env.gw.transaction.submit_for_settlement, big.transaction.id,
                            "10.01")
    assert [e.code for e in s.errors.deep_errors] == ["91522"]


async def test_currency_from_merchant_account(env: Env) -> None:
    r = await env.sale(amount="500", merchant_account_id="acme_jpy")
    assert r.transaction.currency_iso_code == "JPY"
    assert env.sim.charges("o-1")[0].amount == 500
    r = await env.sale(amount="1.234", merchant_account_id="acme_kwd", order_id="o-k")
    assert env.sim.charges("o-k")[0].amount == 1234
    bad = await env.sale(merchant_account_id="nonsense")
    assert [e.code for e in bad.errors.deep_errors] == ["91513"]


async def test_api_request_key_replays_without_acting_again(env: Env) -> None:
    first = await env.sale(order_id="pay-idem", api_request_key="k-1")
    second = await env.sale(order_id="pay-idem", api_request_key="k-1")
    assert first.transaction.id == second.transaction.id
    assert len(env.sim.charges("pay-idem")) == 1
    assert env.sim.requests.count("sale") == 2

    other = await env.sale(order_id="pay-idem", amount="11.00", api_request_key="k-1")
    assert not other.is_success
    assert [e.code for e in other.errors.deep_errors] == ["915232"]
    assert len(env.sim.charges("pay-idem")) == 1

    txn_id = first.transaction.id
    params = {"api_request_key": "cap-1"}
    c1 = await env.call(env.gw.transaction.submit_for_settlement, txn_id, "4.00", params)
    c2 = await env.call(env.gw.transaction.submit_for_settlement, txn_id, "4.00", params)
    assert c1.is_success and c2.is_success  # the replay is not a 91507
    assert c2.transaction.status == "submitted_for_settlement"

    r1 = await env.call(env.gw.transaction.refund, txn_id, {"amount": "1.00",
                                                             "api_request_key": "ref-1"})
    r2 = await env.call(env.gw.transaction.refund, txn_id, {"amount": "1.00",
                                                             "api_request_key": "ref-1"})
    assert r1.transaction.id == r2.transaction.id
    assert env.sim.charges("pay-idem")[0].amount_refunded == 100


async def test_search_by_order_id(env: Env) -> None:
    a = await env.sale(order_id="pay-s1")
    await env.sale(order_id="pay-s2")
    b = await env.sale(order_id="pay-s1")
    search = braintree.TransactionSearch
    found = await env.call(lambda: list(env.gw.transaction.search(
        search.order_id == "pay-s1").items))
    assert sorted(t.id for t in found) == sorted([a.transaction.id, b.transaction.id])
    assert all(isinstance(t.amount, Decimal) for t in found)
    none = await env.call(lambda: list(env.gw.transaction.search(
        search.order_id == "pay-none").items))
    assert none == []


async def test_find_unknown_and_wrong_credentials(env: Env) -> None:
    with pytest.raises(NotFoundError):
        await env.call(env.gw.transaction.find, "doesnotexist")
    bad = sdk_gateway(env.host.port("braintree"), private="wrong")
    with pytest.raises(AuthenticationError):
        await env.call(bad.transaction.sale, {"amount": "1.00", "payment_method_nonce":
                                              "tok_visa"})
    assert env.sim.transactions == {}


async def test_webhook_signature_verifies_and_tampering_fails(aiohttp_server: Any) -> None:
    received: list[dict[str, list[str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(parse_qs((await request.read()).decode()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/braintree", hook)
    server = await aiohttp_server(app)
    sim = BraintreeSimulator(merchant_id=MERCHANT, public_key=PUBLIC, private_key=PRIVATE,
                             webhook_url=str(server.make_url("/webhooks/braintree")))
    async with SimulatorHost([sim], control_port=None) as host:
        env = Env(sim, host, sdk_gateway(host.port("braintree")))
        r = await env.sale(submit=True, order_id="pay-w")
        await wait_for(lambda: len(received) >= 1)
    form = received[0]
    sig, payload = form["bt_signature"][0], form["bt_payload"][0]
    note = env.gw.webhook_notification.parse(sig, payload)
    assert note.kind == braintree.WebhookNotification.Kind.TransactionSettled
    assert note.transaction.id == r.transaction.id
    assert note.transaction.status == "settled"
    assert note.transaction.order_id == "pay-w"

    tampered = payload.replace(payload[10], "A" if payload[10] != "A" else "B", 1)
    with pytest.raises(InvalidSignatureError):
        env.gw.webhook_notification.parse(sig, tampered)
    other = sdk_gateway(1, private="another-private-key")
    with pytest.raises(InvalidSignatureError):
        other.webhook_notification.parse(sig, payload)


# ------------------------------------------------------------------ late faults


def search_order(env: Env, order_id: str) -> Callable[[], list[Any]]:
    return lambda: list(env.gw.transaction.search(
        braintree.TransactionSearch.order_id == order_id).items)


async def test_search_lag_find_at_once_search_after_the_lag(env: Env) -> None:
    lag_s = 0.8
    await env.host.set_faults("braintree", {"search_lag_ms": int(lag_s * 1000)})
    t0 = time.monotonic()
    txn = (await env.sale(order_id="pay-lag")).transaction
    assert (await env.call(env.gw.transaction.find, txn.id)).order_id == "pay-lag"
    early = await env.call(search_order(env, "pay-lag"))
    assert time.monotonic() - t0 < lag_s, "too slow to observe the lag"
    assert early == []
    deadline = time.monotonic() + DEADLINE_S
    while not (found := await env.call(search_order(env, "pay-lag"))):
        assert time.monotonic() < deadline, "never became searchable"
        await asyncio.sleep(0.05)
    assert time.monotonic() - t0 >= lag_s
    assert [t.id for t in found] == [txn.id]
    # the lag applies to new transactions only: an older one is found at once
    await env.host.set_faults("braintree", {"search_lag_ms": 0})
    assert [t.id for t in await env.call(search_order(env, "pay-lag"))] == [txn.id]


async def test_late_process_client_timeout_then_sale_exists_once(env: Env) -> None:
    await env.host.set_faults("braintree", {"mode": "late_process", "late_process_ms": 700})
    impatient = sdk_gateway(env.host.port("braintree"))
    impatient.config.timeout = 0.2
    params = {"amount": "10.00", "payment_method_nonce": "tok_visa", "order_id": "pay-late",
              "api_request_key": "late-1"}
    with pytest.raises(SdkTimeoutError):
        await env.call(impatient.transaction.sale, params)
    assert env.sim.charges("pay-late") == []  # not processed yet
    await wait_for(lambda: len(env.sim.charges("pay-late")) == 1)
    await wait_for(lambda: not env.sim._late)
    assert len(env.sim.charges("pay-late")) == 1
    assert env.sim.requests.count("sale") == 1
    # search lag counts from the (late) processing, not from the request's arrival
    await env.host.set_faults("braintree", {"mode": "normal", "search_lag_ms": 60_000})
    assert await env.call(search_order(env, "pay-late")) == []
    # a retry with the same api_request_key gets the transaction that was created
    again = await env.call(env.gw.transaction.sale, params)
    assert again.is_success and [c.id for c in env.sim.charges("pay-late")] == [
        again.transaction.id]


async def test_late_process_waiting_client_gets_the_answer(env: Env) -> None:
    await env.host.set_faults("braintree", {"mode": "late_process", "late_process_ms": 300})
    t0 = time.monotonic()
    r = await env.sale(order_id="pay-lw")
    assert time.monotonic() - t0 >= 0.3
    assert r.is_success and [c.id for c in env.sim.charges("pay-lw")] == [r.transaction.id]


async def test_error_after_process(env: Env) -> None:
    await env.host.set_faults("braintree", {"error_rate": 1.0, "error_after_process": True})
    with pytest.raises(ServerError):
        await env.sale(order_id="pay-eap", api_request_key="eap-1")
    created = env.sim.charges("pay-eap")
    assert len(created) == 1  # processed; the 500 came after
    await env.host.set_faults("braintree", {"error_rate": 0.0})
    # the api_request_key keeps the real answer: the retry gets the same transaction
    again = await env.sale(order_id="pay-eap", api_request_key="eap-1")
    assert again.is_success and again.transaction.id == created[0].id
    assert env.sim.charges("pay-eap") == created
    # before processing (the default), nothing is created
    await env.host.set_faults("braintree", {"error_rate": 1.0, "error_after_process": False})
    with pytest.raises(ServerError):
        await env.sale(order_id="pay-ebp", api_request_key="ebp-1")
    assert env.sim.charges("pay-ebp") == []


async def test_iso_decimals_come_from_iso4217(env: Env) -> None:
    """Braintree amounts carry the ISO 4217 decimals of the merchant account's currency;
    the simulator reads them from the iso4217 package (not from the adapter)."""
    r = await env.sale(amount="1050", merchant_account_id="acme_isk", order_id="o-isk")
    assert r.is_success and r.transaction.currency_iso_code == "ISK"
    assert env.sim.charges("o-isk")[0].amount == 1050
    r = await env.sale(amount="10.5", merchant_account_id="acme_isk", order_id="o-isk2")
    assert [e.code for e in r.errors.deep_errors] == ["81503"]  # ISK has no decimals
    r = await env.sale(amount="7.00", merchant_account_id="acme_mga", order_id="o-mga")
    assert env.sim.charges("o-mga")[0].amount == 700  # MGA: two decimals in ISO 4217
    bad = await env.sale(merchant_account_id="acme_xts")  # ISO: no minor unit
    assert [e.code for e in bad.errors.deep_errors] == ["91513"]


SIMULATOR_MODULES = ["providers/stripe/simulator.py", "providers/stripe/sim_model.py",
                     "providers/stripe/sim_events.py", "providers/braintree/simulator.py",
                     "providers/braintree/sim_model.py", "providers/adyen/simulator.py",
                     "providers/adyen/sim_model.py", "providers/adyen/sim_notify.py"]
#: the gateway's own conclusions a witness must not borrow
ADAPTER_FACTS = ("providers.amounts", "providers.stripe.amounts", "providers.adyen.amounts",
                 "providers.braintree.amounts", "providers.currency",
                 "providers.adyen.hmac_signature", "providers.stripe.parse",
                 "providers.adyen.parse", "providers.braintree.parse")


def test_simulators_take_no_facts_from_the_adapters() -> None:
    """A simulator is a witness, not a mirror: no import of the adapters' amount tables,
    parsers, signature code or the adapters' currency module."""
    import ast

    root = REPO
    modules = SIMULATOR_MODULES + [str(p.relative_to(root))
                                   for p in (root / "providers" / "simulator").glob("*.py")]
    borrowed = []
    for rel in modules:
        tree = ast.parse((root / rel).read_text(), rel)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            borrowed += [f"{rel}: {n}" for n in names
                         if any(n == f or n.startswith(f + ".") for f in ADAPTER_FACTS)]
    assert borrowed == []
