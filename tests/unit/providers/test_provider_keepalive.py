"""Connection reuse by the three adapters (unmodified SDKs, real sockets), counted by the
simulator (issue #15 item 3): many calls on one caller travel over one kept connection;
a kept connection the provider's side closed while idle is replaced and the next call
succeeds; one closed just as it is reused (nothing read, nothing processed) is an
integration fault -- never a decline -- and the retry with the same idempotency key
charges once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.state_machine import PaymentStatus
from providers.adyen.adapter import AdyenProvider
from providers.adyen.simulator import AdyenSimulator
from providers.base import Ambiguous, AuthorizeRequest, ProviderResult
from providers.braintree.adapter import BraintreeProvider
from providers.braintree.simulator import BraintreeSimulator
from providers.simulator.host import SimulatorHost
from providers.stripe.adapter import StripeProvider
from providers.stripe.simulator import StripeSimulator

ADYEN_KEY, ADYEN_MERCHANT = "AQE_keepalive_key", "AcmeECOM"
BT_MERCHANT, BT_PUBLIC, BT_PRIVATE = "merch1", "pub1", "priv1"
#: the provider side closes a connection idle this long
IDLE_CLOSE_S = 0.3


@dataclass
class Env:
    host: SimulatorHost
    make: Callable[[str], Any]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    host = SimulatorHost(
        [StripeSimulator(), AdyenSimulator(api_key=ADYEN_KEY, merchant_account=ADYEN_MERCHANT),
         BraintreeSimulator(merchant_id=BT_MERCHANT, public_key=BT_PUBLIC,
                            private_key=BT_PRIVATE, async_delay_s=3600)],
        control_port=None, keepalive_timeout_s=IDLE_CLOSE_S)
    await host.start()
    made: list[Any] = []
    # one SDK thread: the thread-bound SDKs (Braintree, Adyen) then have one session
    one_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def make(kind: str) -> Any:
        provider: Any
        if kind == "stripe":
            provider = StripeProvider("stripe_ka", api_key="sk_test_keepalive",
                                      base_url=host.base_url("stripe"),
                                      currencies=frozenset({"EUR"}), timeout_s=5.0)
        elif kind == "adyen":
            provider = AdyenProvider("adyen_ka", api_key=ADYEN_KEY,
                                     merchant_account=ADYEN_MERCHANT,
                                     base_url=f"{host.base_url('adyen')}/checkout/v71",
                                     currencies=frozenset({"EUR"}), timeout_s=5.0,
                                     connect_timeout_s=1.0, executor=one_thread)
        else:
            provider = BraintreeProvider(
                "braintree_ka", merchant_id=BT_MERCHANT, public_key=BT_PUBLIC,
                private_key=BT_PRIVATE, base_url=host.base_url("braintree"),
                currencies=frozenset({"EUR"}), timeout_s=5.0, connect_timeout_s=1.0,
                executor=one_thread, merchant_account_ids={"EUR": "acme_eur"})
        made.append(provider)
        return provider

    yield Env(host, make)
    for p in made:
        await p.close()
    one_thread.shutdown(wait=True)
    await host.stop()


KINDS = ("stripe", "braintree", "adyen")


def req(kind: str, n: int | str) -> AuthorizeRequest:
    pid = f"pay_ka_{kind}_{n}_{time.time_ns()}"
    return AuthorizeRequest(payment_id=pid, amount=1000, currency="EUR", capture_manual=True,
                            token="tok_visa", idempotency_key=f"{pid}:1:authorize")


async def authorize(provider: Any, r: AuthorizeRequest) -> ProviderResult:
    result: ProviderResult = await provider.authorize(r)
    return result


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
async def test_calls_reuse_one_kept_connection(env: Env, kind: str) -> None:
    """Six authorizations one after the other (one caller, one SDK thread) reach the
    simulator over one connection: no per-call connection or client."""
    provider = env.make(kind)
    await provider.start()
    results = [await authorize(provider, req(kind, n)) for n in range(6)]
    assert [r.status for r in results] == [PaymentStatus.AUTHORIZED] * 6
    assert env.host.connections_seen(kind) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_connection_the_provider_closed_while_idle_is_replaced(env: Env,
                                                                      kind: str) -> None:
    """The provider closes the kept connection after IDLE_CLOSE_S idle (as a load balancer
    does); the next call notices, opens a new one and succeeds -- no fault, no decline."""
    provider = env.make(kind)
    await provider.start()
    first = await authorize(provider, req(kind, "before"))
    assert first.status is PaymentStatus.AUTHORIZED
    assert env.host.connections_seen(kind) == 1
    await wait_for(lambda: env.host.open_connections(kind) == 0)  # closed by the provider
    await asyncio.sleep(0.05)  # the client has read the FIN
    second = await authorize(provider, req(kind, "after"))
    assert second.status is PaymentStatus.AUTHORIZED, second
    assert env.host.connections_seen(kind) == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_a_kept_connection_closed_as_it_is_reused_is_a_fault_not_a_decline(
        env: Env, kind: str) -> None:
    """The provider side closes the kept connection just as the next request arrives
    (nothing read, nothing processed). The call fails as Ambiguous (no answer: for all the
    client knows it was processed) -- never a DECLINED result -- and the same request
    again (same idempotency key, as the gateway's retry or resolution sends it)
    authorizes once."""
    provider = env.make(kind)
    await provider.start()
    warm = await authorize(provider, req(kind, "warm"))
    assert warm.status is PaymentStatus.AUTHORIZED
    env.host.drop_unprocessed(kind)
    r = req(kind, "dropped")
    with pytest.raises(Ambiguous):  # unanswered: the client cannot know it was not processed
        await authorize(provider, r)
    again = await authorize(provider, r)
    assert again.status is PaymentStatus.AUTHORIZED, again
    sim = env.host.simulator(kind)
    assert len(sim.charges(r.payment_id)) == 1
