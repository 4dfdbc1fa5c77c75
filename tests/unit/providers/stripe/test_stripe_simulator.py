"""The unmodified stripe SDK against the Stripe simulator, on real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import stripe
from aiohttp import web

from providers.simulator import SimulatorHost
from providers.stripe.form import FormError, decode_form, parse_pairs
from providers.stripe.simulator import StripeSimulator

SECRET = "whsec_test_secret"


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHost]:
    host = SimulatorHost([StripeSimulator(async_delay_s=0.1, webhook_secret=SECRET)],
                         control_port=0)
    await host.start()
    yield host
    await host.stop()


@pytest.fixture
async def client(sim: SimulatorHost) -> AsyncIterator[stripe.StripeClient]:
    stripe.enable_telemetry = False
    http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=5))
    yield stripe.StripeClient("sk_test_123", base_addresses={"api": sim.base_url("stripe")},
                              http_client=http, max_network_retries=0)
    await http.close_async()


def stripe_sim(host: SimulatorHost) -> StripeSimulator:
    sim = host.simulator("stripe")
    assert isinstance(sim, StripeSimulator)
    return sim


async def charges(host: SimulatorHost, reference: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{host.control_url}/_sim/stripe/charges",
                         params={"reference": reference}) as resp:
            assert resp.status == 200
            body = await resp.json()
            return list(body["charges"])


def create_params(token: str = "tok_visa", manual: bool = True, ref: str = "pay_1",
                  amount: int = 1000) -> Any:
    return {"amount": amount, "currency": "eur", "capture_method":
            "manual" if manual else "automatic", "confirm": True, "payment_method": token,
            "payment_method_types": ["card"], "metadata": {"gateway_payment_id": ref}}


# ------------------------------------------------------------------ form decoding


def test_decode_form_brackets() -> None:
    pairs = parse_pairs(b"amount=10&metadata[order_id]=o-1&metadata[empty]=&"
                        b"payment_method_types[0]=card&payment_method_types[1]=sepa&"
                        b"expand[]=a&expand[]=b&a[b][c]=d")
    assert decode_form(pairs) == {
        "amount": "10", "metadata": {"order_id": "o-1", "empty": ""},
        "payment_method_types": ["card", "sepa"], "expand": ["a", "b"],
        "a": {"b": {"c": "d"}}}
    with pytest.raises(FormError):
        decode_form([("metadata", "x"), ("metadata[a]", "y")])
    with pytest.raises(FormError):
        decode_form([("a[b", "x")])


# ------------------------------------------------------------------ flows


async def test_manual_partial_capture_and_partial_refunds(
    sim: SimulatorHost, client: stripe.StripeClient
) -> None:
    pis = client.v1.payment_intents
    pi = await pis.create_async(create_params(), {"idempotency_key": "k-auth"})
    assert pi.object == "payment_intent" and pi.id.startswith("pi_")
    assert (pi.status, pi.amount_capturable, pi.amount_received) == ("requires_capture", 1000, 0)
    assert pi.metadata["gateway_payment_id"] == "pay_1" and pi.currency == "eur"
    assert pi.latest_charge is not None and pi.latest_charge.startswith("ch_")

    pi = await pis.capture_async(pi.id, {"amount_to_capture": 600})
    assert (pi.status, pi.amount_received, pi.amount_capturable) == ("succeeded", 600, 0)
    r1 = await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 200})
    r2 = await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 300})
    assert (r1.object, r1.status, r1.amount, r1.payment_intent) == ("refund", "succeeded", 200,
                                                                    pi.id)
    assert r2.amount == 300 and r1.id != r2.id
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 101})
    assert info.value.code == "amount_too_large" and info.value.http_status == 400
    assert (await client.v1.refunds.retrieve_async(r1.id)).amount == 200
    assert await charges(sim, "pay_1") == [{
        "id": pi.id, "amount": 1000, "currency": "EUR", "status": "succeeded",
        "amount_captured": 600, "amount_refunded": 500}]
    assert (await pis.retrieve_async(pi.id)).amount_received == 600


async def test_automatic_capture_and_full_refund(client: stripe.StripeClient) -> None:
    pi = await client.v1.payment_intents.create_async(create_params("pm_card_mastercard",
                                                                    manual=False))
    assert (pi.status, pi.amount_received, pi.amount_capturable) == ("succeeded", 1000, 0)
    refund = await client.v1.refunds.create_async({"payment_intent": pi.id})
    assert refund.amount == 1000
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 1})
    assert info.value.code == "charge_already_refunded"


@pytest.mark.parametrize(("token", "decline_code"), [
    ("tok_decline", "generic_decline"),
    ("pm_card_chargeDeclined", "generic_decline"),
    ("tok_insufficient_funds", "insufficient_funds"),
    ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
])
async def test_decline_is_a_402_card_error(sim: SimulatorHost, client: stripe.StripeClient,
                                           token: str, decline_code: str) -> None:
    with pytest.raises(stripe.CardError) as info:
        await client.v1.payment_intents.create_async(create_params(token, ref="pay_d"))
    err = info.value
    assert err.http_status == 402 and err.code == "card_declined"
    assert err.error is not None and err.error.decline_code == decline_code
    pi = err.error.payment_intent
    assert pi is not None and pi.status == "requires_payment_method"
    assert pi.last_payment_error is not None
    assert pi.last_payment_error.decline_code == decline_code
    fetched = await client.v1.payment_intents.retrieve_async(pi.id)
    assert fetched.status == "requires_payment_method"
    assert [c["status"] for c in await charges(sim, "pay_d")] == ["requires_payment_method"]


async def test_3ds_next_action_and_completion(sim: SimulatorHost,
                                              client: stripe.StripeClient) -> None:
    pis = client.v1.payment_intents
    ok = await pis.create_async(create_params("tok_3ds"))
    assert ok.status == "requires_action" and ok.next_action is not None
    assert ok.next_action.type == "redirect_to_url"
    url = ok.next_action.redirect_to_url.url
    assert url.startswith(sim.base_url("stripe")) and ok.id in url
    bad = await pis.create_async(create_params("pm_card_threeDSecure2Required"))
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            assert resp.status == 200
        async with s.get(bad.next_action.redirect_to_url.url, params={"result": "fail"}) as resp:
            assert resp.status == 200
    assert (await pis.retrieve_async(ok.id)).status == "requires_capture"
    failed = await pis.retrieve_async(bad.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error.code == "payment_intent_authentication_failure"


async def test_3ds_page_returns_the_customer_to_return_url(
        client: stripe.StripeClient) -> None:
    """Like Stripe: the challenge page finishes the PaymentIntent and redirects to the
    return_url with payment_intent, payment_intent_client_secret and redirect_status."""
    pis = client.v1.payment_intents
    params = {**create_params("tok_3ds", ref="pay_r"), "return_url": "https://shop.test/back?o=1"}
    pi = await pis.create_async(params)
    assert pi.next_action.redirect_to_url.return_url == "https://shop.test/back?o=1"
    async with aiohttp.ClientSession() as s, s.get(
            pi.next_action.redirect_to_url.url, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert location.startswith("https://shop.test/back?o=1&")
    assert query["payment_intent"] == [pi.id]
    assert query["payment_intent_client_secret"] == [pi.client_secret]
    assert query["redirect_status"] == ["succeeded"]
    assert (await pis.retrieve_async(pi.id)).status == "requires_capture"
    failed = await pis.create_async({**params, "metadata": {"gateway_payment_id": "pay_rf"}})
    async with aiohttp.ClientSession() as s, s.get(
            failed.next_action.redirect_to_url.url, params={"result": "fail"},
            allow_redirects=False) as resp:
        assert parse_qs(urlsplit(resp.headers["Location"]).query)["redirect_status"] == [
            "failed"]


async def test_pending_token_settles_later(client: stripe.StripeClient) -> None:
    pi = await client.v1.payment_intents.create_async(create_params("tok_pending"))
    assert pi.status == "processing"

    async def settled() -> bool:
        current = await client.v1.payment_intents.retrieve_async(pi.id)
        return bool(current.status == "requires_capture")

    await eventually(settled)


async def test_idempotent_replay(sim: SimulatorHost, client: stripe.StripeClient) -> None:
    opts: Any = {"idempotency_key": "same-key"}
    first = await client.v1.payment_intents.create_async(create_params(ref="pay_i"), opts)
    again = await client.v1.payment_intents.create_async(create_params(ref="pay_i"), opts)
    assert again.id == first.id
    assert first.last_response.headers.get("Idempotent-Replayed") is None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.body == first.last_response.body
    assert len(await charges(sim, "pay_i")) == 1
    with pytest.raises(stripe.IdempotencyError):
        await client.v1.payment_intents.create_async(create_params(ref="pay_i", amount=999), opts)
    # a decline is remembered too: the replay is the same 402 with the same intent
    dopts: Any = {"idempotency_key": "decline-key"}
    ids = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as info:
            await client.v1.payment_intents.create_async(create_params("tok_decline",
                                                                       ref="pay_j"), dopts)
        assert info.value.error is not None and info.value.error.payment_intent is not None
        ids.append(info.value.error.payment_intent.id)
    assert ids[0] == ids[1] and len(await charges(sim, "pay_j")) == 1
    requests = stripe_sim(sim).requests.snapshot()
    assert requests["by_operation"]["create_payment_intent"] == 5


async def test_concurrent_same_key_is_409(sim: SimulatorHost,
                                          client: stripe.StripeClient) -> None:
    stripe_sim(sim).processing_delay_s = 0.3
    opts: Any = {"idempotency_key": "busy"}
    results = await asyncio.gather(
        client.v1.payment_intents.create_async(create_params(ref="pay_c"), opts),
        client.v1.payment_intents.create_async(create_params(ref="pay_c"), opts),
        return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], stripe.APIError)
    assert errors[0].http_status == 409
    assert len(await charges(sim, "pay_c")) == 1


async def test_faults_not_cached(sim: SimulatorHost, client: stripe.StripeClient) -> None:
    opts: Any = {"idempotency_key": "flaky"}
    await sim.set_faults("stripe", {"rate_limit_rate": 1.0})
    with pytest.raises(stripe.RateLimitError):
        await client.v1.payment_intents.create_async(create_params(ref="pay_f"), opts)
    await sim.set_faults("stripe", {"rate_limit_rate": 0.0, "error_rate": 1.0})
    with pytest.raises(stripe.APIError) as info:
        await client.v1.payment_intents.create_async(create_params(ref="pay_f"), opts)
    assert info.value.http_status == 500
    await sim.set_faults("stripe", {"error_rate": 0.0})
    pi = await client.v1.payment_intents.create_async(create_params(ref="pay_f"), opts)
    assert pi.last_response.headers.get("Idempotent-Replayed") is None
    assert len(await charges(sim, "pay_f")) == 1


async def test_cancel_and_invalid_state(client: stripe.StripeClient) -> None:
    pis = client.v1.payment_intents
    pi = await pis.create_async(create_params())
    canceled = await pis.cancel_async(pi.id, {"cancellation_reason": "requested_by_customer"})
    assert (canceled.status, canceled.cancellation_reason) == ("canceled",
                                                               "requested_by_customer")
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.capture_async(pi.id)
    assert info.value.code == "payment_intent_unexpected_state"
    assert info.value.error is not None and info.value.error.payment_intent.status == "canceled"
    captured = await pis.create_async(create_params(manual=False))
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.cancel_async(captured.id)
    assert info.value.code == "payment_intent_unexpected_state"
    manual = await pis.create_async(create_params())
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.capture_async(manual.id, {"amount_to_capture": 1001})
    assert info.value.code == "amount_too_large"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.refunds.create_async({"payment_intent": manual.id})
    assert info.value.code == "charge_not_refundable"


async def test_invalid_requests(sim: SimulatorHost, client: stripe.StripeClient) -> None:
    pis = client.v1.payment_intents
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.create_async(create_params("tok_bogus", ref="pay_x"))
    assert (info.value.code, info.value.param) == ("resource_missing", "payment_method")
    assert await charges(sim, "pay_x") == []
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.create_async({**create_params(), "colour": "red"})
    assert (info.value.code, info.value.param) == ("parameter_unknown", "colour")
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.retrieve_async("pi_missing")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.create_async({"currency": "eur"})
    assert info.value.param == "amount"


async def test_api_key_checks(sim: SimulatorHost) -> None:
    stripe.enable_telemetry = False
    for key in ("sk_live_nope", "rk_test_1"):
        http = stripe.AIOHTTPClient()
        bad = stripe.StripeClient(key, base_addresses={"api": sim.base_url("stripe")},
                                  http_client=http)
        with pytest.raises(stripe.AuthenticationError) as info:
            await bad.v1.payment_intents.create_async(create_params())
        assert info.value.http_status == 401 and "Invalid API Key" in str(info.value)
        await http.close_async()
    stripe_sim(sim).api_key = "sk_test_exact"
    http = stripe.AIOHTTPClient()
    other = stripe.StripeClient("sk_test_other", base_addresses={"api": sim.base_url("stripe")},
                                http_client=http)
    with pytest.raises(stripe.AuthenticationError):
        await other.v1.payment_intents.retrieve_async("pi_1")
    await http.close_async()


async def test_signed_webhooks(sim: SimulatorHost, client: stripe.StripeClient) -> None:
    received: list[stripe.Event] = []

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        received.append(stripe.Webhook.construct_event(
            raw.decode(), request.headers["Stripe-Signature"], SECRET))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        stripe_sim(sim).webhooks.url = f"http://127.0.0.1:{site.port}/hooks"
        pi = await client.v1.payment_intents.create_async(create_params(),
                                                          {"idempotency_key": "wh-1"})
        await client.v1.payment_intents.capture_async(pi.id)

        async def all_arrived() -> bool:
            return len(received) >= 3

        await eventually(all_arrived)
        types = [e.type for e in received]
        assert types == ["payment_intent.created", "payment_intent.amount_capturable_updated",
                         "payment_intent.succeeded"]
        assert all(e.data.object.id == pi.id for e in received)
        assert received[0].request.idempotency_key == "wh-1"
        assert len({e.id for e in received}) == 3
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ late_process


async def short_client(host: SimulatorHost, timeout_s: float
                       ) -> tuple[stripe.StripeClient, stripe.AIOHTTPClient]:
    http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_s))
    return stripe.StripeClient("sk_test_123", base_addresses={"api": host.base_url("stripe")},
                               http_client=http, max_network_retries=0), http


async def test_late_process_client_timeout_then_charged_once(sim: SimulatorHost) -> None:
    # 2.5 s of late processing against a 0.2 s client: wide enough that the "not yet"
    # check below still runs before it on a loaded machine
    await sim.set_faults("stripe", {"mode": "late_process", "late_process_ms": 2500})
    impatient, http = await short_client(sim, 0.2)
    try:
        with pytest.raises(stripe.APIConnectionError):
            await impatient.v1.payment_intents.create_async(create_params(ref="pay_late"),
                                                            {"idempotency_key": "late-1"})
    finally:
        await http.close_async()
    assert await charges(sim, "pay_late") == []  # the provider has not processed it yet

    async def charged() -> bool:
        return len(await charges(sim, "pay_late")) == 1

    await eventually(charged)

    async def no_pending() -> bool:
        return not stripe_sim(sim)._late

    await eventually(no_pending)
    assert len(await charges(sim, "pay_late")) == 1
    assert stripe_sim(sim).requests.count("create_payment_intent") == 1
    # the key was claimed by the late processing: a retry gets its stored answer
    await sim.set_faults("stripe", {"mode": "normal"})
    patient, http = await short_client(sim, 5)
    try:
        again = await patient.v1.payment_intents.create_async(create_params(ref="pay_late"),
                                                              {"idempotency_key": "late-1"})
    finally:
        await http.close_async()
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert [c["id"] for c in await charges(sim, "pay_late")] == [again.id]


async def test_late_process_waiting_client_gets_the_answer(sim: SimulatorHost,
                                                           client: stripe.StripeClient) -> None:
    await sim.set_faults("stripe", {"mode": "late_process", "late_process_ms": 300})
    t0 = time.monotonic()
    pi = await client.v1.payment_intents.create_async(create_params(ref="pay_lw"))
    assert time.monotonic() - t0 >= 0.3
    assert pi.status == "requires_capture"
    assert [c["id"] for c in await charges(sim, "pay_lw")] == [pi.id]


# ------------------------------------------------------------------ search


def by_ref(ref: str, quote: str = "'") -> dict[str, Any]:
    return {"query": f"metadata[{quote}gateway_payment_id{quote}]:{quote}{ref}{quote}"}


async def test_search_by_metadata(sim: SimulatorHost, client: stripe.StripeClient) -> None:
    pis = client.v1.payment_intents
    first = await pis.create_async(create_params(ref="pay_s1"))
    other = await pis.create_async(create_params(ref="pay_s2", amount=2000))
    for quote in ("'", '"'):
        found = await pis.search_async(by_ref("pay_s1", quote))
        assert found.object == "search_result" and [p.id for p in found.data] == [first.id]
        assert found.has_more is False and found.next_page is None
        assert found.url == "/v1/payment_intents/search"
    assert (await pis.search_async(by_ref("pay_nobody"))).data == []
    both = await pis.search_async({"query": "metadata['gateway_payment_id']:'pay_s1' OR "
                                            "metadata['gateway_payment_id']:'pay_s2'"})
    assert [p.id for p in both.data] == [other.id, first.id]  # newest first
    assert [p.id for p in (await pis.search_async(
        {"query": "amount>1500 AND status:'requires_capture'"})).data] == [other.id]
    # pagination: limit + next_page
    page1 = await pis.search_async({"query": "currency:'eur'", "limit": 1})
    assert page1.has_more is True and page1.next_page
    page2 = await pis.search_async({"query": "currency:'eur'", "limit": 1,
                                    "page": page1.next_page})
    assert [p.id for p in page1.data + page2.data] == [other.id, first.id]
    assert page2.has_more is False and page2.next_page is None
    raw = stripe_sim(sim).requests.count("search_payment_intents")
    assert raw == 7


async def test_search_lag(sim: SimulatorHost, client: stripe.StripeClient) -> None:
    lag_s = 0.8
    await sim.set_faults("stripe", {"search_lag_ms": int(lag_s * 1000)})
    pis = client.v1.payment_intents
    t0 = time.monotonic()
    pi = await pis.create_async(create_params(ref="pay_lag"))
    assert (await pis.retrieve_async(pi.id)).id == pi.id  # by id: immediate
    early = await pis.search_async(by_ref("pay_lag"))
    assert time.monotonic() - t0 < lag_s, "too slow to observe the lag"
    assert early.data == []

    async def found() -> bool:
        return [p.id for p in (await pis.search_async(by_ref("pay_lag"))).data] == [pi.id]

    await eventually(found)
    assert time.monotonic() - t0 >= lag_s


@pytest.mark.parametrize("query", [
    "gateway_payment_id:'pay_1'",  # unsupported field
    "metadata['gateway_payment_id']",  # no value
    "metadata[gateway_payment_id]:'pay_1'",  # unquoted key
    "metadata['gateway_payment_id']:pay_1",  # unquoted value
    "metadata['gateway_payment_id']:'pay_1",  # unterminated string
    "metadata['a']:'1' AND metadata['b']:'2' OR metadata['c']:'3'",  # AND mixed with OR
    "metadata['a']:'1' metadata['b']:'2'",  # no operator between clauses
])
async def test_search_malformed_query_is_400(client: stripe.StripeClient, query: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.search_async({"query": query})
    err = info.value
    assert err.http_status == 400 and err.param == "query"
    assert err.json_body is not None
    assert err.json_body["error"]["type"] == "invalid_request_error"


async def test_search_parameter_errors(client: stripe.StripeClient) -> None:
    pis = client.v1.payment_intents
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.search_async({"query": ""})
    assert info.value.param == "query" and info.value.code == "parameter_missing"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.search_async({"query": "currency:'eur'", "limit": 101})
    assert info.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await pis.search_async({"query": "currency:'eur'", "page": "bogus"})
    assert info.value.param == "page"


# ------------------------------------------------------------------ error_after_process


async def test_error_after_process_500_is_stored_and_replayed(
    sim: SimulatorHost, client: stripe.StripeClient
) -> None:
    pis = client.v1.payment_intents
    await sim.set_faults("stripe", {"error_rate": 1.0, "error_after_process": True})
    with pytest.raises(stripe.APIError) as first:
        await pis.create_async(create_params(ref="pay_eap"), {"idempotency_key": "eap-1"})
    assert first.value.http_status == 500
    created = await charges(sim, "pay_eap")
    assert len(created) == 1  # the PaymentIntent exists although the answer was a 500
    await sim.set_faults("stripe", {"error_rate": 0.0})  # a new 500 could only be a replay
    with pytest.raises(stripe.APIError) as again:
        await pis.create_async(create_params(ref="pay_eap"), {"idempotency_key": "eap-1"})
    assert again.value.http_status == 500
    assert again.value.http_body == first.value.http_body
    assert again.value.headers is not None
    assert again.value.headers["Idempotent-Replayed"] == "true"
    assert await charges(sim, "pay_eap") == created  # no second PaymentIntent
    fresh = await pis.create_async(create_params(ref="pay_eap"), {"idempotency_key": "eap-2"})
    assert fresh.status == "requires_capture"
    assert [c["id"] for c in await charges(sim, "pay_eap")] == [created[0]["id"], fresh.id]


async def test_error_before_process_is_not_stored(sim: SimulatorHost,
                                                  client: stripe.StripeClient) -> None:
    pis = client.v1.payment_intents
    await sim.set_faults("stripe", {"error_rate": 1.0, "error_status": 503})
    with pytest.raises(stripe.APIError) as info:
        await pis.create_async(create_params(ref="pay_ebp"), {"idempotency_key": "ebp"})
    assert info.value.http_status == 503
    assert await charges(sim, "pay_ebp") == []
    await sim.set_faults("stripe", {"error_rate": 0.0})
    pi = await pis.create_async(create_params(ref="pay_ebp"), {"idempotency_key": "ebp"})
    assert pi.last_response.headers.get("Idempotent-Replayed") is None
    assert [c["id"] for c in await charges(sim, "pay_ebp")] == [pi.id]
