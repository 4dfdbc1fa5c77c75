"""The Adyen simulator as a witness: its answers checked against Adyen's own OpenAPI specs.

Every answer the gateway relies on (/payments, /captures, /cancels, /refunds, the
ServiceError envelope) and every standard notification it sends is fetched as raw JSON
and validated against the component schemas vendored from Adyen/adyen-openapi
(CheckoutService-v71, Webhooks-v1; ``tests/fixtures/provider_specs``). Behaviour checks
cover Adyen's published currency table (the decimals Adyen expects, and currencies it
does not list) and both of Adyen's real URL layouts (test ``/v71/...``, live
``/checkout/v71/...``), the second also through the unmodified SDK.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import Adyen
import aiohttp
import pytest
from aiohttp import web

from providers.adyen.simulator import AdyenSimulator
from providers.simulator import SimulatorHost
from tests.fixtures.provider_specs.schemas import ADYEN_CHECKOUT, ADYEN_WEBHOOKS, Conformance

HMAC_KEY = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF"
API_KEY = "AQE_conformance"
MERCHANT = "AcmeECOM"
T = TypeVar("T")
#: the per-event notification schema (Webhooks-v1 ``webhooks`` map)
NOTIFICATION_SCHEMAS = {"AUTHORISATION": "AuthorisationNotificationRequest",
                        "CAPTURE": "CaptureNotificationRequest",
                        "CANCELLATION": "CancellationNotificationRequest",
                        "REFUND": "RefundNotificationRequest"}


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, control: str) -> None:
        self.session, self.base, self.control = session, base, control

    async def post(self, path: str, body: Any, *, prefix: str = "/checkout/v71",
                   key: str | None = None, api_key: str = API_KEY,
                   raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"x-api-key": api_key, "Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.session.post(self.base + prefix + path, data=data,
                                     headers=headers) as r:
            text = await r.read()
            return r.status, json.loads(text) if text else None

    async def charges(self, reference: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.control}/_sim/adyen/charges",
                                    params={"reference": reference}) as r:
            return list((await r.json())["charges"])

    async def faults(self, **settings: Any) -> None:
        async with self.session.post(f"{self.control}/_sim/adyen/faults", json=settings) as r:
            assert r.status == 200


@pytest.fixture
async def env() -> AsyncIterator[tuple[Api, SimulatorHost, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        bodies.append(json.loads(await request.read()))
        return web.Response(text="[accepted]")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sim = AdyenSimulator(api_key=API_KEY, merchant_account=MERCHANT, webhook_secret=HMAC_KEY,
                         webhook_url=f"http://127.0.0.1:{port}/hooks", async_delay_s=0.05)
    host = SimulatorHost([sim], control_port=0)
    await host.start()
    async with aiohttp.ClientSession() as session:
        yield Api(session, host.base_url("adyen"), host.control_url or ""), host, bodies
    await host.stop()
    await runner.cleanup()


def payment(token: str = "tok_visa", ref: str = "p1", value: int = 1000,
            currency: str = "EUR", manual: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "merchantAccount": MERCHANT, "reference": ref,
        "amount": {"value": value, "currency": currency},
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": token},
        "returnUrl": "https://example.test/return"}
    if manual:
        body["additionalData"] = {"manualCapture": "true"}
    return body


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs))


async def test_adyen_simulator_answers_match_adyens_openapi(
        env: tuple[Api, SimulatorHost, list[dict[str, Any]]]) -> None:
    api, host, bodies = env
    c = Conformance("adyen", ADYEN_CHECKOUT)

    # ---- /payments: every resultCode the gateway maps
    status, auth = await api.post("/payments", payment(), key="k-auth")
    c.expect("/payments authorised -> 200", status == 200
             and auth.get("resultCode") == "Authorised", f"{status} {auth}")
    c.schema("/payments Authorised", auth, "PaymentResponse")
    for token, code in (("tok_decline", "Refused"), ("tok_insufficient_funds", "Refused"),
                        ("tok_3ds", "RedirectShopper"), ("tok_pending", "Received")):
        status, body = await api.post("/payments", payment(token, ref=f"p-{token}"),
                                      key=f"k-{token}")
        c.expect(f"/payments {token} -> {code}", status == 200
                 and body.get("resultCode") == code, f"{status} {body}")
        c.schema(f"/payments {token}", body, "PaymentResponse")
    status, body = await api.post("/payments", payment(manual=False, ref="p-auto"),
                                  key="k-auto")
    c.schema("/payments auto-capture", body, "PaymentResponse")

    # ---- 3-D Secure: redirect action, the shopper's return, /payments/details
    for result, code in (("succeed", "Authorised"), ("fail", "Refused")):
        _, three = await api.post("/payments", payment("tok_3ds", ref=f"p-3ds-{result}"),
                                  key=f"k-3ds-{result}")
        action = three.get("action") or {}
        c.schema(f"3DS action ({result})", action, "CheckoutRedirectAction")
        c.present(f"3DS action ({result})", action, ["type", "url", "method"])
        async with api.session.get(action.get("url", ""), params={"result": result},
                                   allow_redirects=False) as r:
            back = r.headers.get("Location", "")
        c.expect(f"challenge ({result}) -> 302 to returnUrl with redirectResult",
                 r.status == 302 and "redirectResult=" in back, f"{r.status} {back}")
        details = {"details": {"redirectResult": parse_qs(urlsplit(back).query).get(
            "redirectResult", [""])[0]}}
        c.schema(f"/payments/details request ({result})", details, "PaymentDetailsRequest")
        status, body = await api.post("/payments/details", details, key=f"k-det-{result}")
        c.expect(f"/payments/details ({result}) -> {code}", status == 200
                 and body.get("resultCode") == code, f"{status} {body}")
        c.schema(f"/payments/details {result}", body, "PaymentDetailsResponse")
    status, body = await api.post("/payments/details", {"details": {"redirectResult": "x"}})
    c.expect("/payments/details unknown redirectResult -> 422", status == 422, str(status))
    c.schema("/payments/details unknown redirectResult", body, "ServiceError")

    # ---- modifications: 201 received
    psp = auth.get("pspReference", "")
    status, body = await api.post(f"/payments/{psp}/captures", {
        "merchantAccount": MERCHANT, "amount": {"value": 600, "currency": "EUR"},
        "reference": "p1"}, key="k-cap")
    c.expect("captures -> 201 received", status == 201 and body.get("status") == "received",
             f"{status} {body}")
    c.schema("captures", body, "PaymentCaptureResponse")
    status, body = await api.post(f"/payments/{psp}/refunds", {
        "merchantAccount": MERCHANT, "amount": {"value": 200, "currency": "EUR"},
        "reference": "r1"}, key="k-ref")
    c.expect("refunds -> 201 received", status == 201, f"{status} {body}")
    c.schema("refunds", body, "PaymentRefundResponse")
    _, held = await api.post("/payments", payment(ref="p-void"), key="k-held")
    status, body = await api.post(f"/payments/{held.get('pspReference')}/cancels", {
        "merchantAccount": MERCHANT, "reference": "p-void"}, key="k-void")
    c.expect("cancels -> 201 received", status == 201, f"{status} {body}")
    c.schema("cancels", body, "PaymentCancelResponse")

    # ---- ServiceError envelopes
    errors: list[tuple[str, int, tuple[int, Any]]] = [
        ("capture over the authorisation", 422, await api.post(
            f"/payments/{psp}/captures", {"merchantAccount": MERCHANT,
                                          "amount": {"value": 99_999, "currency": "EUR"}})),
        ("unknown pspReference", 422, await api.post(
            "/payments/NOSUCHPSP0000000/captures", {
                "merchantAccount": MERCHANT, "amount": {"value": 1, "currency": "EUR"}})),
        ("not JSON", 400, await api.post("/payments", None, raw=b"{nope")),
        ("wrong API key", 401, await api.post("/payments", payment(ref="x"),
                                               api_key="wrong")),
        ("wrong merchant account", 403, await api.post(
            "/payments", {**payment(ref="x"), "merchantAccount": "Other"})),
        ("same key, other body", 422, await api.post("/payments", payment(ref="other"),
                                                      key="k-auth")),
        ("unknown path", 404, await api.post("/nothing", {})),
    ]
    await api.faults(error_rate=1.0, error_status=500)
    errors.append(("injected 500", 500, await api.post("/payments", payment(ref="f"))))
    await api.faults(error_rate=0.0, rate_limit_rate=1.0)
    errors.append(("injected 429", 429, await api.post("/payments", payment(ref="f"))))
    await api.faults(rate_limit_rate=0.0)
    for label, want, (status, body) in errors:
        c.expect(f"{label} -> {want}", status == want, f"{status} {body}")
        c.schema(label, body, "ServiceError")
        c.expect(f"{label}: status field matches HTTP", isinstance(body, dict)
                 and body.get("status") == status, f"{body}")

    # ---- Adyen's currency table (currencyList.mjs): decimals and unlisted currencies
    for cur in ("MGA", "BIF"):  # ISO 4217 currencies Adyen does not list
        status, body = await api.post("/payments", payment(ref=f"p-{cur}", currency=cur),
                                      key=f"k-{cur}")
        c.expect(f"{cur} (not in Adyen's table) refused with 422", status == 422
                 and isinstance(body, dict) and body.get("errorType") == "validation",
                 f"{status} {body}")
        c.schema(f"{cur} refusal", body, "ServiceError")
        c.expect(f"{cur} refusal holds nothing", await api.charges(f"p-{cur}") == [],
                 "a charge exists")
    # value in Adyen's decimals -> the charges view in ISO 4217 minor units
    for cur, value, iso in (("EUR", 1050, 1050), ("JPY", 500, 500), ("KWD", 1230, 1230),
                            ("CLP", 150000, 1500), ("ISK", 55000, 550),
                            ("IDR", 15000, 1500000), ("CVE", 700, 70000)):
        ref = f"p-{cur}"
        status, body = await api.post("/payments", payment(ref=ref, value=value,
                                                           currency=cur, manual=False),
                                      key=f"k-{cur}")
        c.expect(f"{cur} {value} accepted", status == 200, f"{status} {body}")
        views = [(v["amount"], v["amount_captured"], v["currency"])
                 for v in await api.charges(ref)]
        c.expect(f"charges view {cur} {value} (Adyen) = ISO {iso}",
                 views == [(iso, iso, cur)], f"{views}")

    # ---- both URL layouts: test /v71/..., live /checkout/v71/...
    status, body = await api.post("/payments", payment(ref="p-test-layout"), prefix="/v71",
                                  key="k-layout-test")
    c.expect("test layout /v71/payments", status == 200
             and body.get("resultCode") == "Authorised", f"{status} {body}")
    if status == 200:
        status, body = await api.post(f"/payments/{body['pspReference']}/cancels", {
            "merchantAccount": MERCHANT, "reference": "p-test-layout"}, prefix="/v71")
        c.expect("test layout /v71/payments/{psp}/cancels", status == 201, f"{status}")
    status, body = await api.post("/payments", payment(ref="x"), prefix="/nope/v71")
    c.expect("another prefix is a 404", status == 404, f"{status}")
    for label, path in (("test", "/v71"), ("live", "/checkout/v71")):
        client = Adyen.Adyen(xapikey=API_KEY, platform="test", http_timeout=5)
        client.checkout.payments_api.baseUrl = host.base_url("adyen") + path
        try:
            res = await call(client.checkout.payments_api.payments,
                             payment(ref=f"sdk-{label}"), idempotency_key=f"sdk-{label}")
            ok, detail = res.message.get("resultCode") == "Authorised", str(res.message)
        except Adyen.AdyenError as exc:
            ok, detail = False, repr(exc)
        c.expect(f"SDK on the {label} layout ({path})", ok, detail)

    # ---- notifications (Webhooks-v1, per event code)
    await eventually(lambda: {i["NotificationRequestItem"]["eventCode"] for b in bodies
                              for i in b["notificationItems"]} >= set(NOTIFICATION_SCHEMAS))
    seen: set[tuple[str, str]] = set()
    for body in bodies:
        item = body["notificationItems"][0]["NotificationRequestItem"]
        kind = (item.get("eventCode"), item.get("success"))
        if kind in seen or kind[0] not in NOTIFICATION_SCHEMAS:
            continue
        seen.add(kind)
        c.schema(f"notification {kind[0]} success={kind[1]}", body,
                 NOTIFICATION_SCHEMAS[kind[0]], doc=ADYEN_WEBHOOKS)
    c.assert_all()
