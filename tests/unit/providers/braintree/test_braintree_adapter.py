"""BraintreeProvider (real SDK, real sockets) against the simulator under a SimulatorHost."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.state_machine import PaymentStatus, RefundStatus
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    NotCreated,
    Outcome,
    PaymentRef,
    ProviderMismatch,
    RejectedSafe,
)
from providers.braintree.adapter import BraintreeProvider
from providers.braintree.simulator import BraintreeSimulator
from providers.simulator.host import SimulatorHost
from tests.lying_proxy import LyingProxy

MERCHANT, PUBLIC, PRIVATE = "merch1", "pub1", "priv1"
ACCOUNTS = {"USD": "acme_usd", "EUR": "acme_eur", "JPY": "acme_jpy", "KWD": "acme_kwd"}


@dataclass
class Env:
    sim: BraintreeSimulator
    host: SimulatorHost
    provider: BraintreeProvider
    make: Callable[..., BraintreeProvider]

    async def faults(self, **settings: Any) -> dict[str, Any]:
        """Through the control API, exactly as tests of the gateway would do it."""
        async with aiohttp.ClientSession() as session, session.post(
            f"{self.host.control_url}/_sim/braintree/faults", json=settings
        ) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body


def req(payment_id: str = "pay-1", amount: int = 1000, currency: str = "USD",
        token: str = "tok_visa", manual: bool = True, key: str | None = None) -> AuthorizeRequest:
    return AuthorizeRequest(payment_id=payment_id, amount=amount, currency=currency,
                            capture_manual=manual, token=token,
                            idempotency_key=key or f"{payment_id}:1:authorize")


def ref_of(r: AuthorizeRequest, reference: str | None) -> PaymentRef:
    return PaymentRef(r.payment_id, reference, r.amount, r.currency, r.capture_manual)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = BraintreeSimulator(merchant_id=MERCHANT, public_key=PUBLIC, private_key=PRIVATE,
                             async_delay_s=3600)
    host = SimulatorHost([sim], control_port=0)
    await host.start()
    made: list[BraintreeProvider] = []

    def make(private_key: str = PRIVATE, timeout_s: float = 5.0, **kw: Any) -> BraintreeProvider:
        p = BraintreeProvider(
            "braintree_test", merchant_id=MERCHANT, public_key=PUBLIC, private_key=private_key,
            base_url=host.base_url("braintree"), currencies=frozenset(ACCOUNTS),
            timeout_s=timeout_s, connect_timeout_s=2.0,
            merchant_account_ids=kw.pop("merchant_account_ids", ACCOUNTS), **kw)
        made.append(p)
        return p

    provider = make()
    await provider.start()
    try:
        yield Env(sim, host, provider, make)
    finally:
        for p in made:
            await p.close()
        await host.stop()


async def test_manual_authorize_capture_refund_lookup(env: Env) -> None:
    p, r = env.provider, req()
    auth = await p.authorize(r)
    assert (auth.outcome, auth.status, auth.raw_status) == (
        Outcome.SUCCEEDED, PaymentStatus.AUTHORIZED, "authorized")
    assert (auth.amount_authorized, auth.amount_captured) == (1000, 0)
    assert auth.provider_reference
    ref = ref_of(r, auth.provider_reference)

    cap = await p.capture(ref, 600, "pay-1:capture")
    assert (cap.outcome, cap.status, cap.amount_captured) == (
        Outcome.SUCCEEDED, PaymentStatus.CAPTURED, 600)

    refund = await p.refund(ref, "re-1", 250, "pay-1:refund:re-1")
    assert (refund.outcome, refund.status) == (Outcome.SUCCEEDED, RefundStatus.SUCCEEDED)
    assert refund.provider_reference and refund.provider_reference != auth.provider_reference
    assert (await p.retrieve_refund(refund.provider_reference)).status is RefundStatus.SUCCEEDED

    look = await p.lookup(ref, None)
    assert (look.status, look.raw_status) == (PaymentStatus.CAPTURED, "settled")
    [charge] = env.sim.charges("pay-1")
    assert (charge.amount, charge.amount_captured, charge.amount_refunded) == (1000, 600, 250)


async def test_auto_capture_and_void(env: Env) -> None:
    auto = await env.provider.authorize(req("pay-auto", manual=False))
    assert (auto.status, auto.amount_captured) == (PaymentStatus.CAPTURED, 1000)
    r = req("pay-void")
    auth = await env.provider.authorize(r)
    void = await env.provider.void(ref_of(r, auth.provider_reference), "pay-void:void")
    assert (void.outcome, void.status) == (Outcome.SUCCEEDED, PaymentStatus.VOIDED)


@pytest.mark.parametrize(("currency", "amount"), [("JPY", 500), ("KWD", 1234), ("EUR", 1050)])
async def test_currency_exponents_on_the_wire(env: Env, currency: str, amount: int) -> None:
    r = req(f"pay-{currency}", amount=amount, currency=currency)
    auth = await env.provider.authorize(r)
    assert auth.amount_authorized == amount
    [charge] = env.sim.charges(r.payment_id)
    assert (charge.amount, charge.currency) == (amount, currency)
    cap = await env.provider.capture(ref_of(r, auth.provider_reference), amount, "k-cap")
    assert cap.amount_captured == amount


async def test_a_currency_without_merchant_account_is_refused_before_sending(
    env: Env
) -> None:
    """Issue #10: JPY 500 was charged as USD 500.00 through the default account."""
    plain = env.make(merchant_account_ids=None)  # default account: USD in the simulator
    with pytest.raises(RejectedSafe) as info:
        await plain.authorize(req("pay-jpy-default", amount=500, currency="JPY"))
    assert info.value.error_code == "currency_not_configured"
    assert env.sim.charges("pay-jpy-default") == []
    assert env.sim.requests.count("sale") == 0


async def test_a_sale_answered_in_another_currency_is_voided_never_a_success(
    env: Env
) -> None:
    """default_currency declared as JPY while the account really charges USD: the sale
    comes back in USD, so the adapter voids it and reports a mismatch."""
    wrong = env.make(merchant_account_ids=None, default_currency="JPY")
    with pytest.raises(ProviderMismatch) as info:
        await wrong.authorize(req("pay-jpy-usd", amount=500, currency="JPY"))
    assert info.value.released is True
    assert "USD" in info.value.message
    [charge] = env.sim.charges("pay-jpy-usd")
    assert (charge.currency, charge.status) == ("USD", "voided")
    assert info.value.provider_reference == charge.id


async def test_the_declared_default_currency_charges_through_the_default_account(
    env: Env
) -> None:
    right = env.make(merchant_account_ids=None, default_currency="USD")
    got = await right.authorize(req("pay-usd-default", amount=1050, currency="USD"))
    assert (got.status, got.amount_authorized) == (PaymentStatus.AUTHORIZED, 1050)
    [charge] = env.sim.charges("pay-usd-default")
    assert (charge.amount, charge.currency) == (1050, "USD")


async def test_decline_is_a_result_never_a_fault(env: Env) -> None:
    got = await env.provider.authorize(req("pay-d", token="tok_insufficient_funds"))
    assert (got.outcome, got.status, got.raw_status) == (
        Outcome.DECLINED, PaymentStatus.DECLINED, "processor_declined")
    assert got.failure is not None
    assert (got.failure.code, got.failure.decline_code, got.failure.provider_code,
            got.failure.message) == ("card_declined", "insufficient_funds", "2001",
                                     "Insufficient Funds")
    rejected = await env.provider.authorize(req("pay-3ds", token="tok_3ds"))
    assert rejected.outcome is Outcome.DECLINED
    assert rejected.failure is not None and rejected.failure.code == "gateway_rejected"
    assert rejected.failure.decline_code == "three_d_secure"


async def test_invalid_token_is_invalid_request(env: Env) -> None:
    got = await env.provider.authorize(req("pay-x", token="tok_unknown"))
    assert (got.outcome, got.status) == (Outcome.DECLINED, PaymentStatus.DECLINED)
    assert got.failure is not None
    assert (got.failure.code, got.failure.provider_code) == ("invalid_request", "91565")
    assert env.sim.charges("pay-x") == []


async def test_follow_up_refusals_are_declines_with_codes(env: Env) -> None:
    p, r = env.provider, req("pay-f")
    auth = await p.authorize(r)
    ref = ref_of(r, auth.provider_reference)
    env.sim.settle_delay_s = 3600  # keep the capture in submitted_for_settlement
    too_big = await p.capture(ref, 1001, "k-big")
    assert too_big.outcome is Outcome.DECLINED and too_big.failure is not None
    assert too_big.failure.code == "amount_too_large"
    assert too_big.status is PaymentStatus.AUTHORIZED
    assert (await p.capture(ref, 1000, "k-cap")).status is PaymentStatus.CAPTURED
    early = await p.refund(ref, "re-1", 100, "k-ref")
    assert (early.outcome, early.status) == (Outcome.DECLINED, RefundStatus.FAILED)
    assert early.failure is not None
    assert (early.failure.code, early.failure.provider_code) == ("invalid_state", "91506")
    twice = await p.capture(ref, 1000, "k-cap-2")
    assert twice.failure is not None and twice.failure.code == "invalid_state"

    v = req("pay-v")
    vref = ref_of(v, (await p.authorize(v)).provider_reference)
    assert (await p.void(vref, "k-v1")).status is PaymentStatus.VOIDED
    again = await p.void(vref, "k-v2")
    assert again.outcome is Outcome.DECLINED and again.failure is not None
    assert (again.failure.code, again.failure.provider_code) == ("invalid_state", "91504")


async def test_connection_refused_is_rejected_safe(env: Env) -> None:
    await env.provider.authorize(req("pay-warm"))  # a pooled keep-alive connection exists
    await env.faults(mode="refuse")
    assert not env.host.is_listening("braintree")
    env.sim.requests.clear()
    with pytest.raises(RejectedSafe) as info:
        await env.provider.authorize(req("pay-r"))
    assert info.value.error_code == "connection_refused"
    assert env.sim.requests.count() == 0
    await env.faults(mode="normal")
    assert (await env.provider.authorize(req("pay-r"))).status is PaymentStatus.AUTHORIZED


async def test_read_timeout_is_ambiguous(env: Env) -> None:
    fast = env.make(timeout_s=0.3)
    await env.faults(mode="hang")
    with pytest.raises(Ambiguous) as info:
        await fast.authorize(req("pay-h"))
    assert info.value.error_code == "read_timeout"
    assert env.sim.requests.count("sale") == 1
    assert env.sim.charges("pay-h") == []  # hang: read, never processed


async def test_process_then_drop_is_ambiguous_and_lookup_finds_the_one_charge(env: Env) -> None:
    r = req("pay-drop")
    await env.faults(mode="drop_after_process")
    with pytest.raises(Ambiguous) as info:
        await env.provider.authorize(r)
    assert info.value.error_code == "connection_lost"
    assert len(env.sim.charges("pay-drop")) == 1
    await env.faults(mode="normal")

    found = await env.provider.lookup(ref_of(r, None), r)
    assert (found.outcome, found.status) == (Outcome.SUCCEEDED, PaymentStatus.AUTHORIZED)
    assert found.provider_reference == env.sim.charges("pay-drop")[0].id
    assert env.sim.requests.count("search_ids") == 1

    replay = await env.provider.authorize(r)  # same api_request_key: replayed, not re-run
    assert replay.provider_reference == found.provider_reference
    assert len(env.sim.charges("pay-drop")) == 1


async def test_an_empty_search_proves_nothing_until_the_sale_can_no_longer_run(
    env: Env
) -> None:
    """SPEC 5.1: a search that finds nothing while the sale may still be processed is not
    proof; only one made lookup_proof_after_s after the sale was sent is."""
    r = req("pay-none")
    proof_after = env.provider.lookup_proof_after_s
    for sent_at in (None, time.time(), time.time() - proof_after + 5):
        with pytest.raises(Ambiguous) as pending:
            await env.provider.lookup(ref_of(r, None), r, sent_at=sent_at)
        assert pending.value.error_code == "not_visible_yet"
    with pytest.raises(NotCreated) as proven:
        await env.provider.lookup(ref_of(r, None), r, sent_at=time.time() - proof_after - 1)
    assert proven.value.error_code == "not_created"


async def test_a_found_sale_answers_whenever_it_was_sent(env: Env) -> None:
    r = req("pay-found")
    made = await env.provider.authorize(r)
    found = await env.provider.lookup(ref_of(r, None), r, sent_at=time.time())
    assert found.provider_reference == made.provider_reference


async def test_lookup_by_unknown_id_is_not_found_but_no_proof(env: Env) -> None:
    r = req("pay-none")
    with pytest.raises(RejectedSafe) as info:
        await env.provider.lookup(ref_of(r, "nosuchtx"), r)
    assert info.value.error_code == "not_found"


async def test_lookup_with_several_transactions_is_ambiguous(env: Env) -> None:
    await env.provider.authorize(req("pay-2x", key="a"))
    await env.provider.authorize(req("pay-2x", key="b"))
    r = req("pay-2x")
    with pytest.raises(Ambiguous) as info:
        await env.provider.lookup(ref_of(r, None), r)
    assert info.value.error_code == "multiple_transactions"


async def test_lookup_of_pending_is_processing(env: Env) -> None:
    r = req("pay-p", token="tok_pending")
    got = await env.provider.authorize(r)
    assert (got.outcome, got.status) == (Outcome.SUCCEEDED, PaymentStatus.PROCESSING)
    assert (await env.provider.lookup(ref_of(r, None), r)).status is PaymentStatus.PROCESSING


async def test_rate_limit_is_rejected_safe(env: Env) -> None:
    await env.faults(rate_limit_rate=1.0)
    with pytest.raises(RejectedSafe) as info:
        await env.provider.authorize(req("pay-429"))
    assert (info.value.error_code, info.value.http_status) == ("rate_limited", 429)
    assert env.sim.charges("pay-429") == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_ambiguous(env: Env, status: int) -> None:
    await env.faults(error_rate=1.0, error_status=status)
    with pytest.raises(Ambiguous) as info:
        await env.provider.authorize(req("pay-5xx"))
    assert info.value.error_code == f"http_{status}"
    assert info.value.http_status == status


async def test_wrong_key_is_rejected_safe(env: Env) -> None:
    wrong = env.make(private_key="not-the-key")
    with pytest.raises(RejectedSafe) as info:
        await wrong.authorize(req("pay-401"))
    assert (info.value.error_code, info.value.http_status) == ("provider_auth_error", 401)
    assert env.sim.charges("pay-401") == []


async def test_currency_without_merchant_account_is_rejected_before_sending(env: Env) -> None:
    env.sim.requests.clear()
    with pytest.raises(RejectedSafe) as info:
        await env.provider.authorize(req("pay-gbp", currency="GBP"))
    assert info.value.error_code == "currency_not_configured"
    assert env.sim.requests.count() == 0


async def test_sdk_runs_in_the_given_executor_off_the_event_loop(env: Env) -> None:
    threads: list[str] = []

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            def run() -> Any:
                threads.append(threading.current_thread().name)
                return fn(*args, **kwargs)
            return super().submit(run)

    pool = Recording(max_workers=2, thread_name_prefix="given")
    try:
        p = env.make(executor=pool)
        await p.start()
        await p.authorize(req("pay-exec"))
        await p.close()
        assert threads and all(t.startswith("given") for t in threads)
        assert threading.current_thread().name not in threads
        await p.authorize(req("pay-exec2"))  # a given executor survives close()
    finally:
        pool.shutdown(wait=True)


async def test_own_executor_is_created_and_shut_down(env: Env) -> None:
    p = env.make()
    await p.start()
    pool = p._pool._own
    assert pool is not None
    await p.authorize(req("pay-own"))
    await p.close()
    assert p._pool._own is None
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


@pytest.mark.parametrize(("call", "suffix", "tag"), [
    ("capture", "/submit_for_settlement", "id"),
    ("void", "/void", "id"),
    ("refund", "/refund", "refunded-transaction-id"),
    ("lookup", "", "id"),  # GET /merchants/{m}/transactions/{id}
])
async def test_an_answer_about_another_transaction_is_an_integration_fault(
    env: Env, call: str, suffix: str, tag: str,
) -> None:
    """Braintree answering about another transaction than the one named (a proxy's or
    the SDK's mix-up) proves nothing about ours: Ambiguous ``invalid_response``, never a
    status read off someone else's payment."""
    proxy = LyingProxy(env.host.base_url("braintree"))
    await proxy.start()
    liar = BraintreeProvider(
        "braintree_test", merchant_id=MERCHANT, public_key=PUBLIC, private_key=PRIVATE,
        base_url=proxy.url, currencies=frozenset(ACCOUNTS), timeout_s=5.0,
        connect_timeout_s=2.0, merchant_account_ids=ACCOUNTS)
    await liar.start()
    try:
        r = req(f"pay-lie-{call}")
        auth = await liar.authorize(r)
        txn_id = auth.provider_reference
        assert txn_id is not None
        ref = ref_of(r, txn_id)
        if call == "refund":
            await liar.capture(ref, r.amount, "k-cap0")
        tail = suffix or txn_id
        proxy.lie = (lambda path: path.endswith(tail),
                     lambda text: text.replace(f"<{tag}>{txn_id}</{tag}>",
                                               f"<{tag}>someoneelse</{tag}>"))
        with pytest.raises(Ambiguous) as info:
            if call == "capture":
                await liar.capture(ref, r.amount, "k-cap")
            elif call == "void":
                await liar.void(ref, "k-void")
            elif call == "refund":
                await liar.refund(ref, "ref_lie", 100, "k-ref")
            else:
                await liar.lookup(ref, None)
        assert info.value.error_code == "invalid_response", info.value
        assert txn_id in str(info.value) and proxy.lies_told == 1
        proxy.lie = None
        assert (await liar.lookup(ref, None)).provider_reference == txn_id
    finally:
        await liar.close()
        await proxy.stop()
