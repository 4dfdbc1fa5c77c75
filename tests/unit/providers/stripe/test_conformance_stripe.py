"""The Stripe simulator as a witness: its answers checked against Stripe's own OpenAPI spec.

Every answer the gateway relies on (PaymentIntent, Refund, search result, error envelope,
webhook Event and the object inside it) is fetched over raw HTTP -- the bytes Stripe's
SDK would parse -- and validated against the component schemas vendored from
stripe/openapi (``tests/fixtures/provider_specs``). Behaviour checks cover Stripe's
documented currency rules (docs.stripe.com/currencies) and its idempotency rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from providers.simulator import SimulatorHost
from providers.stripe.simulator import StripeSimulator
from tests.fixtures.provider_specs.schemas import STRIPE, Conformance

SECRET = "whsec_conformance"
AUTH = {"Authorization": "Bearer sk_test_conformance"}


def form(params: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's bracket form encoding (what the SDK sends)."""
    out: list[tuple[str, str]] = []
    if isinstance(params, dict):
        for key, value in params.items():
            out += form(value, f"{prefix}[{key}]" if prefix else str(key))
    elif isinstance(params, list):
        for i, value in enumerate(params):
            out += form(value, f"{prefix}[{i}]")
    elif isinstance(params, bool):
        out.append((prefix, "true" if params else "false"))
    else:
        out.append((prefix, str(params)))
    return out


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool],
                     within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, control: str) -> None:
        self.session, self.base, self.control = session, base, control

    async def call(self, method: str, path: str, params: Any = None, *,
                   key: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = dict(AUTH)
        if key:
            headers["Idempotency-Key"] = key
        if method == "GET":
            kwargs: dict[str, Any] = {"params": form(params or {})}
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            kwargs = {"data": urlencode(form(params or {}))}
        async with self.session.request(method, self.base + path, headers=headers,
                                        **kwargs) as r:
            return r.status, json.loads(await r.read()), dict(r.headers)

    async def charges(self, reference: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.control}/_sim/stripe/charges",
                                    params={"reference": reference}) as r:
            return list((await r.json())["charges"])

    async def faults(self, **settings: Any) -> None:
        async with self.session.post(f"{self.control}/_sim/stripe/faults",
                                     json=settings) as r:
            assert r.status == 200


@pytest.fixture
async def env() -> AsyncIterator[tuple[Api, StripeSimulator, list[bytes]]]:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sim = StripeSimulator(webhook_secret=SECRET, async_delay_s=0.05,
                          webhook_url=f"http://127.0.0.1:{port}/hooks")
    host = SimulatorHost([sim], control_port=0)
    await host.start()
    async with aiohttp.ClientSession() as session:
        yield Api(session, host.base_url("stripe"), host.control_url or ""), sim, received
    await host.stop()
    await runner.cleanup()


def pi_params(token: str = "tok_visa", *, manual: bool = True, ref: str = "c1",
              amount: int = 1000, currency: str = "eur") -> dict[str, Any]:
    return {"amount": amount, "currency": currency,
            "capture_method": "manual" if manual else "automatic", "confirm": True,
            "payment_method": token, "payment_method_types": ["card"],
            "metadata": {"gateway_payment_id": ref}}


EVENT_OBJECTS = {"payment_intent": "payment_intent", "refund": "refund", "charge": "charge"}


async def test_stripe_simulator_answers_match_stripes_openapi(
        env: tuple[Api, StripeSimulator, list[bytes]]) -> None:
    api, _sim, received = env
    c = Conformance("stripe", STRIPE)

    # ---- PaymentIntents: every status the gateway maps
    status, pi, _ = await api.call("POST", "/v1/payment_intents", pi_params(), key="k-auth")
    c.expect("create manual -> 200 requires_capture", status == 200
             and pi.get("status") == "requires_capture", f"{status} {pi.get('status')}")
    c.schema("create manual", pi, "payment_intent")
    status, got, _ = await api.call("GET", f"/v1/payment_intents/{pi['id']}")
    c.schema("retrieve", got, "payment_intent")
    status, got, _ = await api.call("POST", f"/v1/payment_intents/{pi['id']}/capture",
                                    {"amount_to_capture": 600}, key="k-cap")
    c.schema("capture partial", got, "payment_intent")
    status, refund, _ = await api.call("POST", "/v1/refunds", {
        "payment_intent": pi["id"], "amount": 200, "metadata": {"gateway_refund_id": "r1"}},
        key="k-ref")
    c.schema("refund partial", refund, "refund")
    c.absent("succeeded refund has no failure_reason", refund, ["failure_reason"])
    status, got, _ = await api.call("GET", f"/v1/refunds/{refund['id']}")
    c.schema("retrieve refund", got, "refund")

    _, auto, _ = await api.call("POST", "/v1/payment_intents",
                                pi_params(manual=False, ref="c2"), key="k-auto")
    c.schema("create automatic (succeeded)", auto, "payment_intent")
    _, held, _ = await api.call("POST", "/v1/payment_intents", pi_params(ref="c3"),
                                key="k-held")
    _, voided, _ = await api.call("POST", f"/v1/payment_intents/{held['id']}/cancel",
                                  {"cancellation_reason": "requested_by_customer"},
                                  key="k-void")
    c.schema("cancel", voided, "payment_intent")
    _, three, _ = await api.call("POST", "/v1/payment_intents",
                                 pi_params("tok_3ds", ref="c4", ), key="k-3ds")
    c.schema("3-D Secure (requires_action)", three, "payment_intent")
    c.present("requires_action next_action", three.get("next_action"),
              ["type", "redirect_to_url"])
    _, pending, _ = await api.call("POST", "/v1/payment_intents",
                                   pi_params("tok_pending", ref="c5"), key="k-pend")
    c.schema("pending (processing)", pending, "payment_intent")
    _, unconfirmed, _ = await api.call("POST", "/v1/payment_intents",
                                       {"amount": 500, "currency": "usd"}, key="k-bare")
    c.schema("create unconfirmed", unconfirmed, "payment_intent")

    # ---- declines: 402 card_error with the PaymentIntent, charge and payment method
    for token in ("tok_decline", "tok_insufficient_funds"):
        status, err, _ = await api.call("POST", "/v1/payment_intents",
                                        pi_params(token, ref=f"d-{token}"), key=f"k-{token}")
        c.expect(f"{token} -> 402", status == 402, str(status))
        c.schema(f"{token} envelope", err, "error")
        e = err.get("error", {})
        c.present(f"{token} error fields", e, ["type", "code", "decline_code", "message",
                                               "charge", "payment_method", "payment_intent",
                                               "request_log_url", "doc_url"])
        lpe = (e.get("payment_intent") or {}).get("last_payment_error")
        c.schema(f"{token} last_payment_error", lpe, "api_errors")
        c.schema(f"{token} last_payment_error.payment_method",
                 (lpe or {}).get("payment_method"), "payment_method")
        c.schema(f"{token} error.payment_method", e.get("payment_method"), "payment_method")

    # ---- error envelopes the gateway classifies
    status, err, _ = await api.call("GET", "/v1/payment_intents/pi_missing")
    c.expect("unknown PaymentIntent -> 404", status == 404, str(status))
    c.schema("404 resource_missing", err, "error")
    c.present("404 error fields", err.get("error"), ["type", "code", "request_log_url"])
    status, err, _ = await api.call("POST", f"/v1/payment_intents/{pi['id']}/capture", {},
                                    key="k-cap-again")
    c.schema("capture in a wrong state", err, "error")
    status, err, _ = await api.call("POST", "/v1/refunds", {"payment_intent": pi["id"],
                                                            "amount": 10_000}, key="k-big")
    c.schema("refund too large", err, "error")
    status, err, _ = await api.call("POST", "/v1/payment_intents",
                                    pi_params(ref="c6", amount=999), key="k-auth")
    c.expect("same key, other params -> 400 idempotency_error", status == 400
             and err.get("error", {}).get("type") == "idempotency_error", f"{status} {err}")
    c.schema("idempotency_error", err, "error")

    # ---- early validation is not stored against the Idempotency-Key (Stripe's rule)
    bad = {**pi_params(ref="c7"), "surprise": "x"}
    status, err, _ = await api.call("POST", "/v1/payment_intents", bad, key="k-early")
    c.expect("unknown parameter -> 400 parameter_unknown", status == 400
             and err.get("error", {}).get("code") == "parameter_unknown", f"{status} {err}")
    c.schema("parameter_unknown", err, "error")
    c.present("parameter_unknown fields", err.get("error"), ["param", "request_log_url"])
    status, fixed, headers = await api.call("POST", "/v1/payment_intents", pi_params(ref="c7"),
                                            key="k-early")
    c.expect("same key with the parameter fixed is executed", status == 200
             and fixed.get("object") == "payment_intent"
             and headers.get("Idempotent-Replayed") != "true", f"{status} {fixed}")

    # ---- injected 429 / 5xx
    await api.faults(rate_limit_rate=1.0)
    status, err, _ = await api.call("POST", "/v1/payment_intents", pi_params(ref="c8"),
                                    key="k-429")
    await api.faults(rate_limit_rate=0.0, error_rate=1.0, error_status=500)
    c.expect("injected 429", status == 429, str(status))
    c.schema("429 envelope", err, "error")
    status, err, _ = await api.call("POST", "/v1/payment_intents", pi_params(ref="c8"),
                                    key="k-500")
    await api.faults(error_rate=0.0)
    c.expect("injected 500", status == 500, str(status))
    c.schema("500 envelope", err, "error")

    # ---- Stripe's currency rules (docs.stripe.com/currencies)
    cases = [("jpy", 500, True), ("krw", 1234, True), ("mga", 700, True),
             ("kwd", 1230, True), ("kwd", 1234, False), ("bhd", 5005, False),
             ("isk", 55000, True), ("isk", 550, False), ("usd", 1050, True)]
    for i, (cur, amount, ok) in enumerate(cases):
        status, body, _ = await api.call("POST", "/v1/payment_intents",
                                         pi_params(ref=f"cur{i}", amount=amount, currency=cur),
                                         key=f"k-cur{i}")
        if ok:
            c.expect(f"{cur.upper()} {amount} accepted", status == 200, f"{status} {body}")
        else:
            e = body.get("error", {})
            c.expect(f"{cur.upper()} {amount} refused (invalid_request_error, param amount)",
                     status == 400 and e.get("type") == "invalid_request_error"
                     and e.get("param") == "amount", f"{status} {body}")
            c.schema(f"{cur.upper()} {amount} envelope", body, "error")
    # The charges view reports ISO 4217 minor units, whatever Stripe's wire units are.
    refs = {(cur, amount): f"cur{i}" for i, (cur, amount, _) in enumerate(cases)}
    for cur, amount, iso in [("jpy", 500, 500), ("mga", 700, 70000), ("kwd", 1230, 1230),
                             ("isk", 55000, 550), ("usd", 1050, 1050)]:
        ref = refs[(cur, amount)]
        views = await api.charges(ref)
        got = [(v["amount"], v["currency"]) for v in views]
        c.expect(f"charges view {cur.upper()} {amount} (wire) = ISO {iso}",
                 got == [(iso, cur.upper())], f"{got}")

    # ---- search result (reconciliation finds PaymentIntents by metadata)
    status, found, _ = await api.call("GET", "/v1/payment_intents/search",
                                      {"query": "metadata['gateway_payment_id']:'c1'"})
    c.expect("search -> 200 search_result", status == 200
             and found.get("object") == "search_result", f"{status} {found}")
    for pi_found in found.get("data", []):
        c.schema("search hit", pi_found, "payment_intent")

    # ---- webhooks: every Event and the object it carries
    await eventually(lambda: len(received) >= 20)
    await asyncio.sleep(0)  # deliveries of this test are sequential: the list is stable
    kinds: set[str] = set()
    for raw in received:
        event = json.loads(raw)
        kind = event.get("type", "?")
        if kind in kinds:
            continue
        kinds.add(kind)
        c.schema(f"event {kind}", event, "event")
        obj = (event.get("data") or {}).get("object") or {}
        schema = EVENT_OBJECTS.get(obj.get("object"))
        c.expect(f"event {kind} carries a known object", schema is not None,
                 str(obj.get("object")))
        if schema:
            c.schema(f"event {kind} data.object", obj, schema)
            if schema == "refund":
                c.absent(f"event {kind} refund failure_reason", obj, ["failure_reason"])
    c.expect("events cover the flows", {"payment_intent.created",
                                        "payment_intent.amount_capturable_updated",
                                        "payment_intent.succeeded", "payment_intent.canceled",
                                        "payment_intent.payment_failed",
                                        "payment_intent.requires_action",
                                        "payment_intent.processing", "refund.created",
                                        "charge.refunded"} <= kinds, f"{sorted(kinds)}")
    c.assert_all()
