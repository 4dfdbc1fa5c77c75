"""The unmodified Adyen SDK against the Adyen simulator, on real sockets."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import Adyen
import aiohttp
import pytest
import requests
from Adyen.exceptions import AdyenAPIResponseError
from aiohttp import web

from providers.adyen.simulator import AdyenSimulator
from providers.simulator import SimulatorHost

HMAC_KEY = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF"
API_KEY = "AQE_test_key"
MERCHANT = "AcmeECOM"
T = TypeVar("T")


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


class Receiver:
    """A local webhook endpoint collecting Adyen notification bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        return web.Response(text="[accepted]")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/adyen", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site.port}/webhooks/adyen"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def items(self, event_code: str | None = None) -> list[dict[str, Any]]:
        out = [i["NotificationRequestItem"] for b in self.bodies for i in b["notificationItems"]]
        return [i for i in out if event_code is None or i["eventCode"] == event_code]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def sim(receiver: Receiver) -> AsyncIterator[SimulatorHost]:
    simulator = AdyenSimulator(api_key=API_KEY, merchant_account=MERCHANT,
                               webhook_secret=HMAC_KEY, webhook_url=receiver.url,
                               async_delay_s=0.1)
    host = SimulatorHost([simulator], control_port=0)
    await host.start()
    yield host
    await host.stop()


def sdk(host: SimulatorHost, api_key: str = API_KEY, http_timeout: float = 5) -> Adyen.Adyen:
    client = Adyen.Adyen(xapikey=api_key, platform="test", http_timeout=http_timeout)
    base = f"{host.base_url('adyen')}/checkout/v71"
    client.checkout.payments_api.baseUrl = base
    client.checkout.modifications_api.baseUrl = base
    return client


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking SDK call off the event loop (the simulator runs on it)."""
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs))


def payment(token: str = "tok_visa", ref: str = "pay_1", amount: int = 1000,
            manual: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "merchantAccount": MERCHANT, "reference": ref,
        "amount": {"value": amount, "currency": "EUR"},
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": token},
        "returnUrl": "https://example.test/return"}
    if manual:
        body["additionalData"] = {"manualCapture": "true"}
    return body


async def control(host: SimulatorHost, method: str, path: str, **kw: Any) -> Any:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"{host.control_url}/_sim/adyen/{path}", **kw) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def charges(host: SimulatorHost, reference: str) -> list[dict[str, Any]]:
    body = await control(host, "GET", "charges", params={"reference": reference})
    return list(body["charges"])


# ------------------------------------------------------------------ happy path


async def test_manual_payment_capture_refund_with_signed_webhooks(
    sim: SimulatorHost, receiver: Receiver
) -> None:
    client = sdk(sim)
    api, mods = client.checkout.payments_api, client.checkout.modifications_api
    auth = await call(api.payments, payment(), idempotency_key="pay_1:1:authorize")
    assert auth.status_code == 200
    assert auth.message["resultCode"] == "Authorised"
    psp = auth.psp
    assert psp and len(psp) == 16 and auth.message["merchantReference"] == "pay_1"

    cap = await call(mods.capture_authorised_payment, {
        "merchantAccount": MERCHANT, "amount": {"value": 600, "currency": "EUR"},
        "reference": "pay_1"}, psp, idempotency_key="pay_1:capture")
    assert cap.status_code == 201
    assert cap.message["status"] == "received"
    assert cap.message["paymentPspReference"] == psp
    assert cap.message["pspReference"] != psp
    assert cap.message["amount"] == {"currency": "EUR", "value": 600}

    ref = await call(mods.refund_captured_payment, {
        "merchantAccount": MERCHANT, "amount": {"value": 250, "currency": "EUR"},
        "reference": "ref_1"}, psp, idempotency_key="pay_1:refund:ref_1")
    assert ref.status_code == 201 and ref.message["status"] == "received"

    assert await charges(sim, "pay_1") == [{
        "id": psp, "amount": 1000, "currency": "EUR", "status": "PartiallyRefunded",
        "amount_captured": 600, "amount_refunded": 250}]

    await eventually(lambda: len(receiver.items()) == 3)
    assert [i["eventCode"] for i in receiver.items()] == ["AUTHORISATION", "CAPTURE", "REFUND"]
    for body in receiver.bodies:
        assert body["live"] == "false"
        assert Adyen.util.is_valid_hmac_notification(body, HMAC_KEY) is True
    capture_item = receiver.items("CAPTURE")[0]
    assert capture_item["originalReference"] == psp
    assert capture_item["pspReference"] == cap.message["pspReference"]
    assert capture_item["success"] == "true"
    assert capture_item["amount"] == {"currency": "EUR", "value": 600}
    refund_item = receiver.items("REFUND")[0]
    assert refund_item["merchantReference"] == "ref_1"
    assert refund_item["pspReference"] == ref.message["pspReference"]

    counts = await control(sim, "GET", "requests")
    assert counts["by_operation"] == {"captures": 1, "payments": 1, "refunds": 1}


async def test_tampered_or_wrong_key_notification_fails(
    sim: SimulatorHost, receiver: Receiver
) -> None:
    await call(sdk(sim).checkout.payments_api.payments, payment(), idempotency_key="k1")
    await eventually(lambda: len(receiver.bodies) == 1)
    body = receiver.bodies[0]
    assert Adyen.util.is_valid_hmac_notification(body, HMAC_KEY) is True
    assert Adyen.util.is_valid_hmac_notification(body, "AB" * 32) is False
    for field, value in [("success", "false"), ("merchantReference", "pay_2"),
                         ("pspReference", "X" * 16)]:
        tampered = copy.deepcopy(body)
        tampered["notificationItems"][0]["NotificationRequestItem"][field] = value
        assert Adyen.util.is_valid_hmac_notification(tampered, HMAC_KEY) is False


async def test_cancel_emits_cancellation(sim: SimulatorHost, receiver: Receiver) -> None:
    client = sdk(sim)
    auth = await call(client.checkout.payments_api.payments, payment(ref="pay_c"),
                      idempotency_key="c1")
    res = await call(client.checkout.modifications_api.cancel_authorised_payment_by_psp_reference,
                     {"merchantAccount": MERCHANT, "reference": "pay_c"}, auth.psp,
                     idempotency_key="c2")
    assert res.status_code == 201 and res.message["status"] == "received"
    assert "amount" not in res.message
    await eventually(lambda: len(receiver.items("CANCELLATION")) == 1)
    assert (await charges(sim, "pay_c"))[0]["status"] == "Cancelled"
    # a capture after the cancel is refused
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity) as info:
        await call(client.checkout.modifications_api.capture_authorised_payment, {
            "merchantAccount": MERCHANT, "amount": {"value": 100, "currency": "EUR"}},
            auth.psp, idempotency_key="c3")
    assert info.value.status_code == 422


async def test_automatic_capture(sim: SimulatorHost) -> None:
    auth = await call(sdk(sim).checkout.payments_api.payments,
                      payment(ref="pay_auto", manual=False), idempotency_key="a1")
    assert auth.message["resultCode"] == "Authorised"
    assert (await charges(sim, "pay_auto"))[0]["amount_captured"] == 1000


# ------------------------------------------------------------------ idempotency


async def test_same_key_replays_identical_response(sim: SimulatorHost) -> None:
    api = sdk(sim).checkout.payments_api
    first = await call(api.payments, payment(ref="pay_i"), idempotency_key="same")
    second = await call(api.payments, payment(ref="pay_i"), idempotency_key="same")
    assert second.raw_response == first.raw_response
    assert second.psp == first.psp
    assert len(await charges(sim, "pay_i")) == 1
    third = await call(api.payments, payment(ref="pay_i"), idempotency_key="other")
    assert third.psp != first.psp
    assert len(await charges(sim, "pay_i")) == 2


async def test_same_key_different_body_is_an_error(sim: SimulatorHost) -> None:
    api = sdk(sim).checkout.payments_api
    await call(api.payments, payment(ref="pay_m"), idempotency_key="k")
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity) as info:
        await call(api.payments, payment(ref="pay_m", amount=2000), idempotency_key="k")
    assert info.value.status_code == 422
    assert info.value.error_code == "704"
    assert len(await charges(sim, "pay_m")) == 1


async def test_rate_limit_is_not_cached(sim: SimulatorHost) -> None:
    api = sdk(sim).checkout.payments_api
    await sim.set_faults("adyen", {"rate_limit_rate": 1.0})
    with pytest.raises(AdyenAPIResponseError) as info:
        await call(api.payments, payment(ref="pay_r"), idempotency_key="r")
    assert info.value.status_code == 429
    assert info.value.message["status"] == 429
    await sim.set_faults("adyen", {"rate_limit_rate": 0.0})
    ok = await call(api.payments, payment(ref="pay_r"), idempotency_key="r")
    assert ok.message["resultCode"] == "Authorised"
    assert len(await charges(sim, "pay_r")) == 1


async def test_validation_errors_are_stored_and_replayed(sim: SimulatorHost) -> None:
    api = sdk(sim).checkout.payments_api
    for _ in range(2):
        with pytest.raises(Adyen.AdyenAPIUnprocessableEntity) as info:
            await call(api.payments, payment(token="tok_nope", ref="pay_v"),
                       idempotency_key="v")
        assert info.value.message["errorCode"] == "800"
        assert info.value.message["errorType"] == "validation"
    assert await charges(sim, "pay_v") == []


# ------------------------------------------------------------------ tokens & errors


@pytest.mark.parametrize(("token", "reason", "code"), [
    ("tok_decline", "Refused", "2"), ("tok_insufficient_funds", "Not enough balance", "12")])
async def test_refusals_are_200_answers(
    sim: SimulatorHost, receiver: Receiver, token: str, reason: str, code: str
) -> None:
    res = await call(sdk(sim).checkout.payments_api.payments, payment(token=token, ref="p"),
                     idempotency_key=token)
    assert res.status_code == 200
    assert (res.message["resultCode"], res.message["refusalReason"],
            res.message["refusalReasonCode"]) == ("Refused", reason, code)
    await eventually(lambda: len(receiver.items("AUTHORISATION")) == 1)
    item = receiver.items("AUTHORISATION")[0]
    assert item["success"] == "false"
    assert Adyen.util.is_valid_hmac_notification(receiver.bodies[0], HMAC_KEY) is True


async def test_3ds_redirect_then_completion(sim: SimulatorHost, receiver: Receiver) -> None:
    res = await call(sdk(sim).checkout.payments_api.payments, payment(token="tok_3ds",
                                                                      ref="pay_3"),
                     idempotency_key="3ds")
    assert res.message["resultCode"] == "RedirectShopper"
    action = res.message["action"]
    assert action["type"] == "redirect" and action["method"] == "GET"
    assert receiver.items() == []
    async with aiohttp.ClientSession() as s, s.get(action["url"],
                                                   allow_redirects=False) as resp:
        # back to the request's returnUrl with redirectResult (Checkout v71 redirect flow)
        assert resp.status == 302
        back = resp.headers["Location"]
    assert back.startswith("https://example.test/return?redirectResult=")
    redirect_result = parse_qs(urlsplit(back).query)["redirectResult"][0]
    await eventually(lambda: len(receiver.items("AUTHORISATION")) == 1)
    assert receiver.items("AUTHORISATION")[0]["success"] == "true"
    details = await call(sdk(sim).checkout.payments_api.payments_details,
                         {"details": {"redirectResult": redirect_result}},
                         idempotency_key="3ds-details")
    assert details.message["resultCode"] == "Authorised"
    assert details.message["pspReference"] == res.message["pspReference"]
    assert details.message["merchantReference"] == "pay_3"
    assert details.message["amount"] == {"currency": "EUR", "value": 1000}
    with pytest.raises(AdyenAPIResponseError) as bad:  # a redirectResult it never issued
        await call(sdk(sim).checkout.payments_api.payments_details,
                   {"details": {"redirectResult": "forged"}})
    assert bad.value.status_code == 422


async def test_3ds_failed_challenge_is_refused(sim: SimulatorHost) -> None:
    res = await call(sdk(sim).checkout.payments_api.payments, payment(token="tok_3ds",
                                                                      ref="pay_3f"))
    url = res.message["action"]["url"]
    async with aiohttp.ClientSession() as s, s.get(url, params={"result": "fail"},
                                                   allow_redirects=False) as resp:
        back = resp.headers["Location"]
    redirect_result = parse_qs(urlsplit(back).query)["redirectResult"][0]
    details = await call(sdk(sim).checkout.payments_api.payments_details,
                         {"details": {"redirectResult": redirect_result}})
    assert (details.message["resultCode"], details.message["refusalReasonCode"]) == (
        "Refused", "11")
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as resp:
        assert resp.status == 404  # the challenge is over


async def test_adyen_test_card_number(sim: SimulatorHost) -> None:
    body = payment(ref="pay_card")
    body["paymentMethod"] = {"type": "scheme", "encryptedCardNumber": "test_4111111145551142",
                             "encryptedExpiryMonth": "test_03",
                             "encryptedExpiryYear": "test_2030",
                             "encryptedSecurityCode": "test_737"}
    res = await call(sdk(sim).checkout.payments_api.payments, body, idempotency_key="card")
    assert res.message["resultCode"] == "Authorised"
    assert res.message["additionalData"]["cardSummary"] == "1142"


async def test_pending_then_authorisation_webhook(sim: SimulatorHost,
                                                  receiver: Receiver) -> None:
    res = await call(sdk(sim).checkout.payments_api.payments,
                     payment(token="tok_pending", ref="pay_p"), idempotency_key="p")
    assert res.message["resultCode"] == "Received"
    await eventually(lambda: len(receiver.items("AUTHORISATION")) == 1)
    assert (await charges(sim, "pay_p"))[0]["status"] == "Authorised"


async def test_wrong_api_key_is_401_adyen_body(sim: SimulatorHost) -> None:
    with pytest.raises(Adyen.AdyenAPIAuthenticationError) as info:
        await call(sdk(sim, "wrong").checkout.payments_api.payments, payment(),
                   idempotency_key="x")
    assert info.value.status_code == 401
    assert info.value.message == {"status": 401, "errorCode": "000", "message":
                                  "HTTP Status Response - Unauthorized",
                                  "errorType": "security"}


async def test_wrong_merchant_account_is_403(sim: SimulatorHost) -> None:
    body = {**payment(), "merchantAccount": "Other"}
    with pytest.raises(Adyen.AdyenAPIInvalidPermission) as info:
        await call(sdk(sim).checkout.payments_api.payments, body, idempotency_key="m")
    assert info.value.error_code == "901"


async def test_modification_errors(sim: SimulatorHost) -> None:
    client = sdk(sim)
    mods = client.checkout.modifications_api
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity) as info:
        await call(mods.capture_authorised_payment, {
            "merchantAccount": MERCHANT, "amount": {"value": 100, "currency": "EUR"}},
            "NOSUCHPSP0000000", idempotency_key="e1")
    assert info.value.message == {
        "status": 422, "errorCode": "167", "errorType": "validation",
        "message": "Original pspReference required for this operation",
        "pspReference": info.value.message["pspReference"]}
    auth = await call(client.checkout.payments_api.payments, payment(ref="pay_e"),
                      idempotency_key="e2")
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity):  # over-capture
        await call(mods.capture_authorised_payment, {
            "merchantAccount": MERCHANT, "amount": {"value": 1001, "currency": "EUR"}},
            auth.psp, idempotency_key="e3")
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity):  # refund before capture
        await call(mods.refund_captured_payment, {
            "merchantAccount": MERCHANT, "amount": {"value": 1, "currency": "EUR"}},
            auth.psp, idempotency_key="e4")
    await call(mods.capture_authorised_payment, {
        "merchantAccount": MERCHANT, "amount": {"value": 1000, "currency": "EUR"}},
        auth.psp, idempotency_key="e5")
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity):  # over-refund
        await call(mods.refund_captured_payment, {
            "merchantAccount": MERCHANT, "amount": {"value": 1001, "currency": "EUR"}},
            auth.psp, idempotency_key="e6")
    view = (await charges(sim, "pay_e"))[0]
    assert (view["amount_captured"], view["amount_refunded"]) == (1000, 0)


async def test_other_version_prefix_and_unknown_path(sim: SimulatorHost) -> None:
    client = sdk(sim)
    client.checkout.payments_api.baseUrl = f"{sim.base_url('adyen')}/checkout/v68"
    res = await call(client.checkout.payments_api.payments, payment(), idempotency_key="v68")
    assert res.message["resultCode"] == "Authorised"
    client.checkout.payments_api.baseUrl = f"{sim.base_url('adyen')}/nope/v71"
    with pytest.raises(Adyen.AdyenAPICommunicationError) as info:
        await call(client.checkout.payments_api.payments, payment(), idempotency_key="404")
    assert info.value.status_code == 404


async def test_injected_server_error_in_adyen_format(sim: SimulatorHost) -> None:
    await control(sim, "POST", "faults", json={"error_rate": 1.0, "error_status": 503})
    with pytest.raises(AdyenAPIResponseError) as info:
        await call(sdk(sim).checkout.payments_api.payments, payment(ref="pay_5"),
                   idempotency_key="5")
    assert info.value.status_code == 503
    assert info.value.message["errorType"] == "internal"
    assert await charges(sim, "pay_5") == []


# ------------------------------------------------------------------ late faults


async def test_late_process_client_timeout_then_payment_exists_once(sim: SimulatorHost) -> None:
    await control(sim, "POST", "faults", json={"mode": "late_process",
                                               "late_process_ms": 700})
    impatient = sdk(sim, http_timeout=0.2)
    with pytest.raises(requests.exceptions.Timeout):
        await call(impatient.checkout.payments_api.payments, payment(ref="pay_late"),
                   idempotency_key="late-1")
    assert await charges(sim, "pay_late") == []  # not processed yet

    async def charged() -> bool:
        return len(await charges(sim, "pay_late")) == 1

    deadline = time.monotonic() + 5
    while not await charged():
        assert time.monotonic() < deadline, "the late payment never appeared"
        await asyncio.sleep(0.02)
    adyen = sim.simulator("adyen")
    await eventually(lambda: not adyen._late)
    assert len(await charges(sim, "pay_late")) == 1
    assert adyen.requests.count("payments") == 1
    # the key was claimed by the late processing: the retry replays the first answer
    await control(sim, "POST", "faults", json={"mode": "normal"})
    again = await call(sdk(sim).checkout.payments_api.payments, payment(ref="pay_late"),
                       idempotency_key="late-1")
    assert [c["id"] for c in await charges(sim, "pay_late")] == [again.message["pspReference"]]


async def test_late_process_waiting_client_gets_the_answer(sim: SimulatorHost) -> None:
    await control(sim, "POST", "faults", json={"mode": "late_process", "late_process_ms": 300})
    t0 = time.monotonic()
    res = await call(sdk(sim).checkout.payments_api.payments, payment(ref="pay_lw"))
    assert time.monotonic() - t0 >= 0.3
    assert res.message["resultCode"] == "Authorised"
    assert [c["id"] for c in await charges(sim, "pay_lw")] == [res.message["pspReference"]]


async def test_error_after_process_then_key_replays_the_processed_answer(
    sim: SimulatorHost,
) -> None:
    api = sdk(sim).checkout.payments_api
    await sim.set_faults("adyen", {"error_rate": 1.0, "error_after_process": True})
    with pytest.raises(AdyenAPIResponseError) as info:
        await call(api.payments, payment(ref="pay_eap"), idempotency_key="eap-1")
    assert info.value.status_code == 500
    created = await charges(sim, "pay_eap")
    assert len(created) == 1  # processed; the 500 came after
    await sim.set_faults("adyen", {"error_rate": 0.0})
    again = await call(api.payments, payment(ref="pay_eap"), idempotency_key="eap-1")
    assert again.message["pspReference"] == created[0]["id"]  # the stored real answer
    assert await charges(sim, "pay_eap") == created
    other = await call(api.payments, payment(ref="pay_eap"), idempotency_key="eap-2")
    assert len(await charges(sim, "pay_eap")) == 2 and other.message["resultCode"] == "Authorised"


async def test_search_lag_is_rejected(sim: SimulatorHost) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sim.control_url}/_sim/adyen/faults",
                          json={"search_lag_ms": 100}) as resp:
            assert resp.status == 400
            err = (await resp.json())["error"]
    assert err["code"] == "invalid_fault_settings" and err["param"] == "search_lag_ms"
    assert (await control(sim, "GET", "faults"))["search_lag_ms"] == 0


def test_currency_decimals_are_read_from_adyens_published_table() -> None:
    from providers.adyen.sim_model import CURRENCY_LIST, adyen_decimals, parse_currency_list

    table = adyen_decimals()
    assert len(table) == CURRENCY_LIST.read_text().count("Code:") == 139
    # where Adyen differs from ISO 4217 (CLP/ISK 2 vs 0, CVE/IDR 0 vs 2), Adyen's word holds
    assert (table["CLP"], table["ISK"], table["CVE"], table["IDR"]) == (2, 2, 0, 0)
    assert (table["EUR"], table["JPY"], table["KWD"]) == (2, 0, 3)
    assert "MGA" not in table
    assert parse_currency_list("[{ Code: 'EUR', Currency: 'Euro', Decimals: '2' }]") == {
        "EUR": 2}
    with pytest.raises(ValueError):
        parse_currency_list("[{ Code: 'EUR', Currency: 'Euro' }]")


async def test_unlisted_currency_is_refused_in_adyens_shape(sim: SimulatorHost) -> None:
    body = payment(ref="pay_mga")
    body["amount"] = {"value": 1000, "currency": "MGA"}
    with pytest.raises(Adyen.AdyenAPIUnprocessableEntity) as info:
        await call(sdk(sim).checkout.payments_api.payments, body, idempotency_key="mga")
    assert info.value.status_code == 422 and info.value.error_code == "138"
    assert await charges(sim, "pay_mga") == []


async def test_test_endpoint_layout_without_checkout_prefix(sim: SimulatorHost) -> None:
    client = sdk(sim)
    for api in (client.checkout.payments_api, client.checkout.modifications_api):
        api.baseUrl = f"{sim.base_url('adyen')}/v71"  # like https://checkout-test.adyen.com/v71
    res = await call(client.checkout.payments_api.payments, payment(ref="pay_tl"),
                     idempotency_key="tl")
    cap = await call(client.checkout.modifications_api.capture_authorised_payment,
                     {"merchantAccount": MERCHANT, "amount": {"value": 1000, "currency": "EUR"}},
                     res.message["pspReference"], idempotency_key="tl-cap")
    assert cap.message["status"] == "received"
    assert (await charges(sim, "pay_tl"))[0]["amount_captured"] == 1000
    counts = await control(sim, "GET", "requests")
    assert counts["by_operation"] == {"captures": 1, "payments": 1}
