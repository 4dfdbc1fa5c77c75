"""AdyenProvider (real SDK in its thread pool) against the Adyen simulator on real sockets."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.state_machine import PaymentStatus, RefundStatus
from providers.adyen.adapter import AdyenProvider
from providers.adyen.simulator import AdyenSimulator
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    Outcome,
    PaymentRef,
    RejectedSafe,
)
from providers.simulator import SimulatorHost
from tests.lying_proxy import LyingProxy

API_KEY = "AQE_adapter_key"
MERCHANT = "AcmeECOM"
P = PaymentStatus


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHost]:
    host = SimulatorHost([AdyenSimulator(api_key=API_KEY, merchant_account=MERCHANT)],
                         control_port=0)
    await host.start()
    yield host
    await host.stop()


def make_provider(host: SimulatorHost, *, api_key: str = API_KEY, timeout_s: float = 5.0,
                  path: str = "/checkout/v71", merchant: str = MERCHANT) -> AdyenProvider:
    return AdyenProvider("adyen_eu", api_key=api_key, merchant_account=merchant,
                         base_url=f"{host.base_url('adyen')}{path}",
                         currencies=frozenset({"EUR"}), timeout_s=timeout_s,
                         connect_timeout_s=1.0)


@pytest.fixture
async def provider(sim: SimulatorHost) -> AsyncIterator[AdyenProvider]:
    p = make_provider(sim)
    await p.start()
    yield p
    await p.close()


def auth_req(payment_id: str = "pay_1", token: str = "tok_visa", manual: bool = True,
             amount: int = 1000, attempt: int = 1) -> AuthorizeRequest:
    return AuthorizeRequest(payment_id=payment_id, amount=amount, currency="EUR",
                            capture_manual=manual, token=token,
                            idempotency_key=f"{payment_id}:{attempt}:authorize",
                            reference="order-1")


def ref_of(payment_id: str, psp: str | None, amount: int = 1000) -> PaymentRef:
    return PaymentRef(payment_id=payment_id, provider_reference=psp, amount=amount,
                      currency="EUR")


def sim_of(host: SimulatorHost) -> AdyenSimulator:
    s = host.simulator("adyen")
    assert isinstance(s, AdyenSimulator)
    return s


def charges(host: SimulatorHost, reference: str) -> list[dict[str, Any]]:
    return [c.to_dict() for c in sim_of(host).charges(reference)]


# ------------------------------------------------------------------ definite answers


async def test_authorize_manual(provider: AdyenProvider, sim: SimulatorHost) -> None:
    result = await provider.authorize(auth_req())
    assert (result.outcome, result.status, result.raw_status) == (
        Outcome.SUCCEEDED, P.AUTHORIZED, "Authorised")
    assert result.amount_authorized == 1000 and result.amount_captured is None
    [charge] = charges(sim, "pay_1")
    assert charge["id"] == result.provider_reference


async def test_authorize_auto_capture(provider: AdyenProvider, sim: SimulatorHost) -> None:
    result = await provider.authorize(auth_req("pay_auto", manual=False))
    assert (result.status, result.amount_captured) == (P.CAPTURED, 1000)
    assert charges(sim, "pay_auto")[0]["amount_captured"] == 1000


@pytest.mark.parametrize(("token", "decline_code", "provider_code"), [
    ("tok_insufficient_funds", "insufficient_funds", "12"), ("tok_decline", "generic_decline",
                                                             "2")])
async def test_decline_is_a_result_never_a_fault(
    provider: AdyenProvider, token: str, decline_code: str, provider_code: str
) -> None:
    result = await provider.authorize(auth_req("pay_d", token=token))
    assert (result.outcome, result.status) == (Outcome.DECLINED, P.DECLINED)
    assert result.failure is not None
    assert (result.failure.code, result.failure.decline_code, result.failure.provider_code) == (
        "card_declined", decline_code, provider_code)


async def test_3ds_and_pending(provider: AdyenProvider) -> None:
    three_ds = await provider.authorize(auth_req("pay_3", token="tok_3ds"))
    assert three_ds.status is P.REQUIRES_ACTION
    assert three_ds.next_action is not None
    assert three_ds.next_action["type"] == "redirect_to_url"  # normalized, not Adyen's own
    assert "/_sim/3ds/" in three_ds.next_action["redirect_to_url"]["url"]
    pending = await provider.authorize(auth_req("pay_p", token="tok_pending"))
    assert (pending.outcome, pending.status) == (Outcome.SUCCEEDED, P.PROCESSING)


async def test_invalid_token_is_invalid_request(provider: AdyenProvider) -> None:
    result = await provider.authorize(auth_req("pay_bad", token="tok_unknown"))
    assert (result.outcome, result.status) == (Outcome.DECLINED, P.DECLINED)
    assert result.failure is not None and result.failure.code == "invalid_request"


async def test_capture_void_refund_are_pending(provider: AdyenProvider,
                                               sim: SimulatorHost) -> None:
    auth = await provider.authorize(auth_req("pay_m"))
    psp = auth.provider_reference
    cap = await provider.capture(ref_of("pay_m", psp), 600, "pay_m:capture")
    assert (cap.outcome, cap.status, cap.provider_reference) == (
        Outcome.SUCCEEDED, P.CAPTURE_PENDING, psp)
    refund = await provider.refund(ref_of("pay_m", psp), "ref_1", 200, "pay_m:refund:ref_1")
    assert (refund.outcome, refund.status) == (Outcome.SUCCEEDED, RefundStatus.PENDING)
    assert refund.provider_reference and refund.provider_reference != psp
    assert refund.provider_reference in sim_of(sim).payments[psp or ""].modifications

    other = await provider.authorize(auth_req("pay_v"))
    void = await provider.void(ref_of("pay_v", other.provider_reference), "pay_v:void")
    assert (void.outcome, void.status) == (Outcome.SUCCEEDED, P.VOID_PENDING)
    assert charges(sim, "pay_v")[0]["status"] == "Cancelled"


async def test_refused_modifications_are_declined_not_faults(provider: AdyenProvider) -> None:
    auth = await provider.authorize(auth_req("pay_x"))
    over = await provider.capture(ref_of("pay_x", auth.provider_reference), 5000, "x:cap")
    assert (over.outcome, over.status) == (Outcome.DECLINED, P.AUTHORIZED)
    assert over.failure is not None and over.failure.code == "invalid_state"
    refund = await provider.refund(ref_of("pay_x", auth.provider_reference), "r", 10, "x:ref")
    assert (refund.outcome, refund.status) == (Outcome.DECLINED, RefundStatus.FAILED)
    assert refund.failure is not None and refund.failure.code == "invalid_state"
    with pytest.raises(RejectedSafe) as info:
        await provider.capture(ref_of("pay_x", None), 100, "x:cap2")
    assert info.value.error_code == "missing_provider_reference"


async def test_idempotent_authorize_and_concurrency(provider: AdyenProvider,
                                                    sim: SimulatorHost) -> None:
    first = await provider.authorize(auth_req("pay_i"))
    again = await provider.authorize(auth_req("pay_i"))
    assert again == first
    results = await asyncio.gather(*(provider.authorize(auth_req(f"pay_c{i}"))
                                     for i in range(12)))
    assert {r.status for r in results} == {P.AUTHORIZED}
    assert len({r.provider_reference for r in results}) == 12
    assert len(charges(sim, "pay_i")) == 1


async def test_sdk_runs_off_the_event_loop(provider: AdyenProvider) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = provider._in_thread

    def spy(call: Any) -> Any:
        seen.append(threading.get_ident())
        return original(call)

    provider._in_thread = spy  # type: ignore[method-assign]
    await provider.authorize(auth_req("pay_t"))
    assert seen and loop_thread not in seen


# ------------------------------------------------------------------ faults


async def test_connection_refused_is_rejected_safe(provider: AdyenProvider,
                                                   sim: SimulatorHost) -> None:
    await sim.set_faults("adyen", {"mode": "refuse"})
    with pytest.raises(RejectedSafe) as info:
        await provider.authorize(auth_req("pay_refused"))
    assert info.value.error_code == "connection_refused"
    await sim.set_faults("adyen", {"mode": "normal"})
    assert sim_of(sim).requests.count() == 0
    assert charges(sim, "pay_refused") == []


async def test_hang_is_ambiguous_read_timeout(sim: SimulatorHost) -> None:
    provider = make_provider(sim, timeout_s=0.3)
    await provider.start()
    try:
        await sim.set_faults("adyen", {"mode": "hang"})
        with pytest.raises(Ambiguous) as info:
            await provider.authorize(auth_req("pay_hang"))
        assert info.value.error_code == "read_timeout"
    finally:
        await sim.set_faults("adyen", {"mode": "normal"})
        await provider.close()


async def test_process_then_drop_resolved_by_replay(provider: AdyenProvider,
                                                    sim: SimulatorHost) -> None:
    req = auth_req("pay_drop")
    await sim.set_faults("adyen", {"mode": "drop_after_process"})
    with pytest.raises(Ambiguous) as info:
        await provider.authorize(req)
    assert info.value.error_code == "connection_lost"
    [charge] = charges(sim, "pay_drop")
    await sim.set_faults("adyen", {"mode": "normal"})
    found = await provider.lookup(ref_of("pay_drop", None), req)
    assert (found.outcome, found.status, found.provider_reference) == (
        Outcome.SUCCEEDED, P.AUTHORIZED, charge["id"])
    assert len(charges(sim, "pay_drop")) == 1
    with pytest.raises(Ambiguous):
        await provider.lookup(ref_of("pay_drop", None), None)


@pytest.mark.parametrize(("faults", "kind", "code"), [
    ({"rate_limit_rate": 1.0}, RejectedSafe, "rate_limited"),
    ({"error_rate": 1.0, "error_status": 500}, Ambiguous, "http_500"),
    ({"error_rate": 1.0, "error_status": 503}, Ambiguous, "http_503"),
])
async def test_http_faults(provider: AdyenProvider, sim: SimulatorHost,
                           faults: dict[str, Any], kind: type, code: str) -> None:
    await sim.set_faults("adyen", faults)
    with pytest.raises(kind) as info:
        await provider.authorize(auth_req("pay_f"))
    assert isinstance(info.value, RejectedSafe | Ambiguous)
    assert info.value.error_code == code
    assert charges(sim, "pay_f") == []


async def test_wrong_key_and_merchant_are_rejected_safe(sim: SimulatorHost) -> None:
    for provider in (make_provider(sim, api_key="wrong"),
                     make_provider(sim, merchant="SomeoneElse")):
        await provider.start()
        try:
            with pytest.raises(RejectedSafe) as info:
                await provider.authorize(auth_req("pay_k"))
            assert info.value.error_code == "provider_auth_error"
        finally:
            await provider.close()
    assert charges(sim, "pay_k") == []


async def test_wrong_base_path_is_config_error(sim: SimulatorHost) -> None:
    provider = make_provider(sim, path="/wrong/v71")
    await provider.start()
    try:
        with pytest.raises(RejectedSafe) as info:
            await provider.authorize(auth_req("pay_404"))
        assert info.value.error_code == "provider_config_error"
    finally:
        await provider.close()


async def test_given_executor_is_used_and_not_shut_down(sim: SimulatorHost) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="given")
    try:
        provider = AdyenProvider("a", api_key=API_KEY, merchant_account=MERCHANT,
                                 base_url=f"{sim.base_url('adyen')}/checkout/v71",
                                 currencies=frozenset({"eur"}), executor=pool)
        await provider.start()
        result = await provider.authorize(auth_req("pay_g"))
        await provider.close()
        assert result.status is P.AUTHORIZED
        assert provider.currencies == frozenset({"EUR"})
        assert pool.submit(lambda: 1).result(timeout=5) == 1  # still usable
        assert "api_key" not in repr(provider) and API_KEY not in repr(provider)
    finally:
        pool.shutdown()


# ------------------------------------------------------------------ keep-alive


async def test_the_sdk_keeps_one_connection_for_many_calls(sim: SimulatorHost) -> None:
    """The unmodified SDK sends through providers.adyen.keepalive: five payments on one
    thread open one connection to the simulator (the SDK alone opens one per call), and
    the answers are the SDK's own objects, as before."""
    import Adyen

    from providers.adyen import keepalive

    sdk = Adyen.Adyen(xapikey=API_KEY, platform="test", http_timeout=5,
                      http_force="requests")
    transport = keepalive.install(sdk)
    base = f"{sim.base_url('adyen')}/checkout/v71"
    sdk.checkout.payments_api.baseUrl = base

    def five_payments() -> list[str]:
        codes = []
        for n in range(5):
            result = sdk.checkout.payments_api.payments(
                {"amount": {"value": 1000, "currency": "EUR"}, "reference": f"pay_ka{n}",
                 "merchantAccount": MERCHANT,
                 "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "tok_visa"},
                 "returnUrl": "https://example.test/return"},
                idempotency_key=f"pay_ka{n}:1:authorize")
            codes.append(result.message["resultCode"])
        return codes

    assert await asyncio.to_thread(five_payments) == ["Authorised"] * 5
    pools = transport.session.get_adapter(base).poolmanager.pools
    opened = [pools[key].num_connections for key in pools.keys()]
    assert opened == [1], opened
    assert transport.user_agent.startswith("adyen-python-api-library/")
    transport.close()


@pytest.mark.parametrize(("call", "suffix"), [
    ("capture", "/captures"), ("void", "/cancels"), ("refund", "/refunds")])
async def test_a_modification_answered_about_another_payment_is_an_integration_fault(
    sim: SimulatorHost, call: str, suffix: str,
) -> None:
    """Adyen's modification answer names the payment it modifies
    (``paymentPspReference``); one about another payment (a proxy's or the SDK's mix-up)
    proves nothing about ours: Ambiguous ``invalid_response``, never ``*_pending``."""
    proxy = LyingProxy(sim.base_url("adyen"))
    await proxy.start()
    liar = AdyenProvider("adyen_eu", api_key=API_KEY, merchant_account=MERCHANT,
                         base_url=f"{proxy.url}/checkout/v71", currencies=frozenset({"EUR"}),
                         timeout_s=5.0, connect_timeout_s=1.0)
    await liar.start()
    try:
        auth = await liar.authorize(auth_req(f"pay_lie_{call}", manual=call != "refund"))
        psp = auth.provider_reference
        assert psp
        proxy.lie = (lambda path: path.endswith(suffix),
                     lambda text: json.dumps({**json.loads(text),
                                              "paymentPspReference": "SOMEONEELSE"}))
        ref = ref_of(f"pay_lie_{call}", psp)
        with pytest.raises(Ambiguous) as info:
            if call == "capture":
                await liar.capture(ref, 1000, "k-cap")
            elif call == "void":
                await liar.void(ref, "k-void")
            else:
                await liar.refund(ref, "ref_lie", 100, "k-ref")
        assert info.value.error_code == "invalid_response", info.value
        assert psp in str(info.value) and proxy.lies_told == 1
    finally:
        await liar.close()
        await proxy.stop()
