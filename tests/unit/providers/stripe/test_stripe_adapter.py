"""StripeProvider (official SDK, async) against the Stripe simulator: every outcome."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.state_machine import PaymentStatus, RefundStatus
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    Outcome,
    PaymentRef,
    RejectedSafe,
)
from providers.simulator import SimulatorHost
from providers.stripe.adapter import StripeProvider
from providers.stripe.simulator import StripeSimulator
from tests.lying_proxy import LyingProxy


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHost]:
    host = SimulatorHost([StripeSimulator()], control_port=None)
    await host.start()
    yield host
    await host.stop()


def make_provider(sim: SimulatorHost, **kw: Any) -> StripeProvider:
    args: dict[str, Any] = {"api_key": "sk_test_gateway", "base_url": sim.base_url("stripe"),
                            "currencies": frozenset({"EUR", "USD"}), "timeout_s": 5.0}
    args.update(kw)
    return StripeProvider("stripe_main", **args)


@pytest.fixture
async def provider(sim: SimulatorHost) -> AsyncIterator[StripeProvider]:
    p = make_provider(sim)
    await p.start()
    yield p
    await p.close()


def stripe_sim(sim: SimulatorHost) -> StripeSimulator:
    s = sim.simulator("stripe")
    assert isinstance(s, StripeSimulator)
    return s


def auth_req(pid: str = "pay_1", token: str = "tok_visa", manual: bool = True,
             amount: int = 1250, currency: str = "EUR") -> AuthorizeRequest:
    return AuthorizeRequest(payment_id=pid, amount=amount, currency=currency,
                            capture_manual=manual, token=token,
                            idempotency_key=f"{pid}:1:authorize", reference="order-1",
                            metadata={"cart": "c-77", "gateway_payment_id": "spoofed"})


def ref_of(pid: str, pi_id: str | None, amount: int = 1250) -> PaymentRef:
    return PaymentRef(payment_id=pid, provider_reference=pi_id, amount=amount, currency="EUR")


async def test_success_flow(sim: SimulatorHost, provider: StripeProvider) -> None:
    auth = await provider.authorize(auth_req())
    assert (auth.outcome, auth.status, auth.raw_status) == (
        Outcome.SUCCEEDED, PaymentStatus.AUTHORIZED, "requires_capture")
    assert auth.provider_reference is not None and auth.provider_reference.startswith("pi_")
    assert (auth.amount_authorized, auth.amount_captured) == (1250, 0)
    pi = stripe_sim(sim).intents[auth.provider_reference]
    assert pi.metadata == {"cart": "c-77", "gateway_payment_id": "pay_1", "reference": "order-1"}
    assert pi.currency == "eur" and pi.capture_method == "manual"

    ref = ref_of("pay_1", auth.provider_reference)
    cap = await provider.capture(ref, 1000, "pay_1:capture:1")
    assert (cap.outcome, cap.status, cap.amount_captured) == (
        Outcome.SUCCEEDED, PaymentStatus.CAPTURED, 1000)
    refund = await provider.refund(ref, "ref_1", 400, "ref_1:refund")
    assert (refund.outcome, refund.status, refund.raw_status) == (
        Outcome.SUCCEEDED, RefundStatus.SUCCEEDED, "succeeded")
    assert refund.provider_reference is not None
    assert (await provider.retrieve_refund(refund.provider_reference)).status is \
        RefundStatus.SUCCEEDED
    assert stripe_sim(sim).refunds[refund.provider_reference].metadata == {
        "gateway_refund_id": "ref_1", "gateway_payment_id": "pay_1"}
    looked = await provider.lookup(ref, None)
    assert (looked.status, looked.amount_captured) == (PaymentStatus.CAPTURED, 1000)


async def test_automatic_capture_3ds_and_pending(provider: StripeProvider) -> None:
    auto = await provider.authorize(auth_req("pay_a", manual=False))
    assert (auto.status, auto.amount_captured) == (PaymentStatus.CAPTURED, 1250)
    three_ds = await provider.authorize(auth_req("pay_3", token="tok_3ds"))
    assert three_ds.status is PaymentStatus.REQUIRES_ACTION
    assert three_ds.next_action is not None
    assert three_ds.next_action["type"] == "redirect_to_url"
    pending = await provider.authorize(auth_req("pay_p", token="tok_pending"))
    assert (pending.outcome, pending.status) == (Outcome.SUCCEEDED, PaymentStatus.PROCESSING)


async def test_void_then_capture_is_refused_not_faulted(provider: StripeProvider) -> None:
    auth = await provider.authorize(auth_req("pay_v"))
    ref = ref_of("pay_v", auth.provider_reference)
    void = await provider.void(ref, "pay_v:void")
    assert (void.outcome, void.status) == (Outcome.SUCCEEDED, PaymentStatus.VOIDED)
    cap = await provider.capture(ref, 1250, "pay_v:capture")
    assert (cap.outcome, cap.status) == (Outcome.DECLINED, PaymentStatus.VOIDED)
    assert cap.failure is not None
    assert (cap.failure.code, cap.failure.provider_code) == (
        "invalid_state", "payment_intent_unexpected_state")
    refund = await provider.refund(ref, "ref_v", 100, "ref_v:refund")
    assert (refund.outcome, refund.status) == (Outcome.DECLINED, RefundStatus.FAILED)


async def test_over_refund_is_declined(provider: StripeProvider) -> None:
    auth = await provider.authorize(auth_req("pay_o", manual=False))
    ref = ref_of("pay_o", auth.provider_reference)
    assert (await provider.refund(ref, "r1", 1000, "r1")).status is RefundStatus.SUCCEEDED
    over = await provider.refund(ref, "r2", 251, "r2")
    assert (over.outcome, over.status) == (Outcome.DECLINED, RefundStatus.FAILED)
    assert over.failure is not None and over.failure.provider_code == "amount_too_large"


@pytest.mark.parametrize(("token", "decline_code"), [
    ("tok_decline", "generic_decline"), ("tok_insufficient_funds", "insufficient_funds")])
async def test_decline_is_declined_never_a_fault(sim: SimulatorHost, provider: StripeProvider,
                                                 token: str, decline_code: str) -> None:
    result = await provider.authorize(auth_req("pay_d", token=token))
    assert (result.outcome, result.status) == (Outcome.DECLINED, PaymentStatus.DECLINED)
    assert result.failure is not None
    assert (result.failure.code, result.failure.decline_code, result.failure.provider_code) == (
        "card_declined", decline_code, "card_declined")
    assert result.provider_reference in stripe_sim(sim).intents
    looked = await provider.lookup(ref_of("pay_d", result.provider_reference), None)
    assert (looked.outcome, looked.status) == (Outcome.DECLINED, PaymentStatus.DECLINED)


async def test_invalid_token_is_an_invalid_request_decline(provider: StripeProvider) -> None:
    result = await provider.authorize(auth_req("pay_t", token="tok_unknown"))
    assert (result.outcome, result.status) == (Outcome.DECLINED, PaymentStatus.DECLINED)
    assert result.failure is not None
    assert (result.failure.code, result.failure.provider_code) == (
        "invalid_request", "resource_missing")
    assert result.provider_reference is None


async def test_connection_refused_is_rejected_safe(sim: SimulatorHost,
                                                   provider: StripeProvider) -> None:
    await sim.set_faults("stripe", {"mode": "refuse"})
    with pytest.raises(RejectedSafe) as info:
        await provider.authorize(auth_req("pay_r"))
    assert info.value.error_code == "connection_refused"
    assert stripe_sim(sim).requests.count() == 0 and stripe_sim(sim).charges("pay_r") == []


async def test_read_timeout_is_ambiguous(sim: SimulatorHost) -> None:
    provider = make_provider(sim, timeout_s=0.3)
    await sim.set_faults("stripe", {"mode": "hang"})
    try:
        with pytest.raises(Ambiguous) as info:
            await provider.authorize(auth_req("pay_h"))
        assert info.value.error_code in ("timeout", "read_timeout")
        assert stripe_sim(sim).requests.count("create_payment_intent") == 1
    finally:
        await provider.close()


async def test_process_then_drop_is_ambiguous_and_replay_finds_it(
    sim: SimulatorHost, provider: StripeProvider
) -> None:
    await sim.set_faults("stripe", {"mode": "drop_after_process"})
    req = auth_req("pay_x")
    with pytest.raises(Ambiguous) as info:
        await provider.authorize(req)
    assert info.value.error_code == "connection_lost"
    held = stripe_sim(sim).charges("pay_x")
    assert len(held) == 1 and held[0].status == "requires_capture"
    await sim.set_faults("stripe", {"mode": "normal"})
    found = await provider.lookup(ref_of("pay_x", None), req)
    assert (found.outcome, found.status) == (Outcome.SUCCEEDED, PaymentStatus.AUTHORIZED)
    assert found.provider_reference == held[0].id
    retried = await provider.authorize(req)  # the retry of the same attempt: same key
    assert retried.provider_reference == held[0].id
    assert len(stripe_sim(sim).charges("pay_x")) == 1


async def test_lookup_by_replay_reflects_later_changes(sim: SimulatorHost,
                                                       provider: StripeProvider) -> None:
    req = auth_req("pay_l")
    auth = await provider.authorize(req)
    await provider.capture(ref_of("pay_l", auth.provider_reference), 1250, "cap")
    found = await provider.lookup(ref_of("pay_l", None), req)
    assert (found.status, found.provider_reference) == (PaymentStatus.CAPTURED,
                                                        auth.provider_reference)


@pytest.mark.parametrize(("faults", "fault_type", "code"), [
    ({"rate_limit_rate": 1.0}, RejectedSafe, "rate_limited"),
    ({"error_rate": 1.0, "error_status": 500}, Ambiguous, "http_500"),
    ({"error_rate": 1.0, "error_status": 503}, Ambiguous, "http_503"),
])
async def test_http_faults(sim: SimulatorHost, provider: StripeProvider, faults: dict[str, Any],
                           fault_type: type[Exception], code: str) -> None:
    await sim.set_faults("stripe", faults)
    with pytest.raises(fault_type) as info:
        await provider.authorize(auth_req("pay_f"))
    assert getattr(info.value, "error_code", None) == code
    assert stripe_sim(sim).charges("pay_f") == []


async def test_wrong_key_is_rejected_safe(sim: SimulatorHost) -> None:
    provider = make_provider(sim, api_key="sk_live_wrong")
    try:
        with pytest.raises(RejectedSafe) as info:
            await provider.authorize(auth_req("pay_k"))
        assert (info.value.error_code, info.value.http_status) == ("provider_auth_error", 401)
    finally:
        await provider.close()


async def test_idempotency_conflicts_are_ambiguous(sim: SimulatorHost,
                                                   provider: StripeProvider) -> None:
    req = auth_req("pay_i")
    await provider.authorize(req)
    with pytest.raises(Ambiguous) as info:  # same key, other parameters
        await provider.authorize(auth_req("pay_i", amount=999))
    assert info.value.error_code == "idempotency_key_mismatch"
    stripe_sim(sim).processing_delay_s = 0.3
    results = await asyncio.gather(provider.authorize(auth_req("pay_j")),
                                   provider.authorize(auth_req("pay_j")),
                                   return_exceptions=True)
    faults = [r for r in results if isinstance(r, BaseException)]
    assert len(faults) == 1 and isinstance(faults[0], Ambiguous)
    assert faults[0].error_code == "idempotency_conflict"


async def test_lookup_edges(provider: StripeProvider) -> None:
    with pytest.raises(RejectedSafe) as info:
        await provider.lookup(ref_of("pay_n", "pi_doesnotexist"), None)
    assert info.value.error_code == "not_found"
    with pytest.raises(Ambiguous):
        await provider.lookup(ref_of("pay_n", None), None)
    with pytest.raises(RejectedSafe) as info:
        await provider.capture(ref_of("pay_n", None), 100, "k")
    assert info.value.error_code == "missing_provider_reference"


async def test_lifecycle_and_repr(sim: SimulatorHost) -> None:
    provider = make_provider(sim)
    assert provider.type == "stripe" and provider.currencies == frozenset({"EUR", "USD"})
    assert "sk_test" not in repr(provider)
    result = await provider.authorize(auth_req("pay_z"))  # starts lazily
    assert result.status is PaymentStatus.AUTHORIZED
    await provider.close()
    await provider.close()


async def test_refuse_after_traffic_is_still_rejected_safe(sim: SimulatorHost,
                                                           provider: StripeProvider) -> None:
    """Pooled keep-alive connections die with the port: the next call is refused."""
    assert (await provider.authorize(auth_req("pay_w1"))).status is PaymentStatus.AUTHORIZED
    await sim.set_faults("stripe", {"mode": "refuse"})
    with pytest.raises(RejectedSafe) as info:
        await provider.authorize(auth_req("pay_w2"))
    assert info.value.error_code == "connection_refused"
    assert stripe_sim(sim).charges("pay_w2") == []



@pytest.mark.parametrize(("suffix", "key", "call"), [
    ("/capture", "id", "capture"),
    ("/cancel", "id", "void"),
    ("/v1/refunds", "payment_intent", "refund"),
    ("", "id", "lookup"),  # GET /v1/payment_intents/{id}
])
async def test_an_answer_about_another_payment_intent_is_an_integration_fault(
    sim: SimulatorHost, suffix: str, key: str, call: str,
) -> None:
    """Stripe answering a follow-up or a retrieve about another PaymentIntent (a proxy's or
    the SDK's mix-up) proves nothing about ours: Ambiguous ``invalid_response``, never a
    status read off someone else's payment."""
    proxy = LyingProxy(sim.base_url("stripe"))
    await proxy.start()
    provider = make_provider(sim, base_url=proxy.url)
    await provider.start()
    try:
        manual = call != "refund"
        auth = await provider.authorize(auth_req(f"pay_lie_{call}", manual=manual))
        ref = ref_of(f"pay_lie_{call}", auth.provider_reference)
        assert auth.provider_reference is not None
        tail = suffix or auth.provider_reference

        def other(text: str) -> str:
            return json.dumps({**json.loads(text), key: "pi_someone_else"})

        proxy.lie = (lambda path: path.endswith(tail), other)
        with pytest.raises(Ambiguous) as info:
            if call == "capture":
                await provider.capture(ref, 1250, "k-cap")
            elif call == "void":
                await provider.void(ref, "k-void")
            elif call == "refund":
                await provider.refund(ref, "ref_lie", 100, "k-ref")
            else:
                await provider.lookup(ref, None)
        assert info.value.error_code == "invalid_response", info.value
        assert auth.provider_reference in str(info.value) and proxy.lies_told == 1
        proxy.lie = None  # the truth is still there, unchanged by the lie
        now = await provider.lookup(ref, None)
        assert now.provider_reference == auth.provider_reference
    finally:
        await provider.close()
        await proxy.stop()
