"""Adyen Checkout API simulator (JSON), for the unmodified ``Adyen`` SDK.

Routes, under both of Adyen's real URL layouts -- the test endpoint's ``/v{N}/...``
(``https://checkout-test.adyen.com/v71/payments``) and the live endpoint's
``/checkout/v{N}/...`` (``https://{prefix}-checkout-live.adyenpayments.com/checkout/v71/
payments``; the sandbox base URL is ``http://host:port/checkout/v71``, see
``ADYEN_SANDBOX_PATH``); each named after the operation the control API counts under
``GET /_sim/adyen/requests``. Any other prefix is a 404.

| route                                           | name     |
|-------------------------------------------------|----------|
| POST [/checkout]/v{N}/paymentMethods            | payment_methods |
| POST [/checkout]/v{N}/payments                  | payments |
| POST [/checkout]/v{N}/payments/{psp}/captures   | captures |
| POST [/checkout]/v{N}/payments/{psp}/cancels    | cancels  |
| POST [/checkout]/v{N}/payments/{psp}/refunds    | refunds  |
| POST [/checkout]/v{N}/payments/details         | payments_details |
| GET  /_sim/3ds/{psp}?result=succeed|fail        | complete_3ds (the shopper's redirect) |

``/paymentMethods`` (``merchantAccount`` required, checked like every call) answers
``{"paymentMethods": [{"name": "Cards", "type": "scheme", "brands": [...]}]}``: what a
card-only test account offers; it changes nothing.

Amounts: ``amount.value`` in Adyen's decimals from its published currency table
(:func:`providers.adyen.sim_model.adyen_decimals`); a currency missing from the table
is refused with 422 ``138``.

Auth: ``x-api-key`` (``api_key=None`` accepts any non-empty key); a wrong key gets
Adyen's 401 security error. ``merchant_account`` (when set) must match, else 403
``901 Invalid Merchant Account``.

Idempotency (Adyen semantics, scoped per API key): the first answer to a key
(2xx, 400, 403, 404, 422) is stored and replayed byte for byte with the
``idempotency-key`` response header; the same key with a different body (or path)
gets 422 ``704``; the same key while the first request still runs gets 422 ``704``
with ``transient-error: true``. 401, 429 and 5xx answers (and injected faults) are
not stored. With ``error_after_process`` the injected 5xx replaces the answer of a
request that was processed; the key keeps that real (first) answer, so a retry with
the same key replays the processed result instead of acting again. Under
``late_process`` the key is claimed when the late processing starts. Adyen has no
search API: ``search_lag_ms`` is rejected (``supports_search = False``).

Sandbox tokens (:mod:`providers.simulator.tokens`) and Adyen test card numbers
(:data:`providers.adyen.sim_model.ADYEN_TEST_CARDS`) are accepted as
``storedPaymentMethodId``, ``encryptedCardNumber`` (``test_<number>``) or ``number``:
approve -> ``Authorised``; decline -> ``Refused`` "Refused" (2); insufficient funds
-> ``Refused`` "Not enough balance" (12); 3DS -> ``RedirectShopper`` with a redirect
``action``; pending -> ``Received`` (``Authorised`` after ``async_delay_s``).

3-D Secure (Checkout v71 ``CheckoutRedirectAction``, ``/payments/details``): the
``action`` is ``{"type": "redirect", "method": "GET", "url": ..., "paymentMethodType":
"scheme"}``, its url this simulator's challenge page ``/_sim/3ds/{psp}`` (``?result=fail``
fails the challenge). Finishing the challenge authorises (or refuses, ``11`` "3D Not
Authenticated") the payment, emits its AUTHORISATION notification, and sends the shopper
back to the request's ``returnUrl`` with ``redirectResult`` appended (without a returnUrl
the page answers it as JSON). ``POST /payments/details`` with ``{"details":
{"redirectResult": ...}}`` answers the payment's result (``PaymentDetailsResponse``:
resultCode, pspReference, merchantReference, amount); a redirectResult it did not issue is
a 422. It takes no ``merchantAccount`` (the request schema has none).

Modifications answer 201 ``{"merchantAccount", "paymentPspReference", "pspReference",
"reference", "status": "received", "amount"}``; they are applied to the ledger at
once (over-capture / over-refund / wrong state -> 422) and confirmed by a CAPTURE /
CANCELLATION / REFUND notification after ``notification_delay_s``. /payments emits
AUTHORISATION (success "true"/"false"). Notifications are HMAC-signed with
``webhook_secret`` (a hex HMAC key) and POSTed to ``webhook_url``.

Settlement (:mod:`providers.adyen.sim_settlement`): the Settlement details report CSV of a
day (captures, refunds, chargebacks and reversals, the day's MerchantPayout lines), on
``GET /_sim/adyen/settlement?date=`` and Adyen's report download path
``GET /reports/download/MerchantAccount/{account}/settlement_detail_report_...csv``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from providers.adyen import sim_model as m
from providers.adyen import sim_settlement as sds
from providers.adyen.sim_notify import build_body, build_item, check_hmac_key
from providers.simulator import disputes as dsp
from providers.simulator import settlement as stl
from providers.simulator.idempotency import Claim, IdempotencyStore, StoredResponse
from providers.simulator.iso_units import iso_exponent, iso_to_wire
from providers.simulator.ledger import ChargeView
from providers.simulator.provider import SimulatedProvider
from providers.simulator.tokens import CardBehavior

B = CardBehavior
DEFAULT_HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
#: ``/v71`` (test endpoint layout) or ``/checkout/v71`` (live endpoint layout)
PREFIX = r"/{layout:(?:checkout/)?}v{version:\d+}"

Operation = Callable[[web.Request, dict[str, Any]], tuple[int, dict[str, Any]]]


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status,
                        content_type="application/json", headers=headers)


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


class AdyenSimulator(SimulatedProvider):
    name = "adyen"
    supports_search = False  # no transaction search: search_lag_ms must stay 0

    def __init__(
        self, *, api_key: str | None = None, merchant_account: str | None = None,
        webhook_secret: str = DEFAULT_HMAC_KEY, webhook_url: str | None = None,
        seed: int | None = None, async_delay_s: float = 1.0, notification_delay_s: float = 0.0,
        processing_delay_s: float = 0.0,
    ) -> None:
        """``webhook_secret`` is the hex HMAC key the gateway verifies with."""
        super().__init__(seed=seed, webhook_url=webhook_url)
        check_hmac_key(webhook_secret)
        self.api_key = api_key
        self.merchant_account = merchant_account
        self.webhook_secret = webhook_secret
        self.async_delay_s = async_delay_s
        self.notification_delay_s = notification_delay_s
        self.processing_delay_s = processing_delay_s
        self.payments: dict[str, m.SimPayment] = {}
        self.disputes: dict[str, m.SimDispute] = {}  # by payment pspReference
        self.idempotency = IdempotencyStore()
        self.notifications: list[dict[str, Any]] = []  # every item emitted (tests)
        self.redirect_results: dict[str, str] = {}  # redirectResult -> pspReference

    # ------------------------------------------------------------ framework hooks

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post(f"{PREFIX}/paymentMethods", self._api(self._payment_methods),
                   name="payment_methods")
        r.add_post(f"{PREFIX}/payments", self._api(self._payments), name="payments")
        r.add_post(f"{PREFIX}/payments/details",
                   self._api(self._payments_details, merchant=False), name="payments_details")
        r.add_post(f"{PREFIX}/payments/{{psp}}/captures", self._api(self._capture),
                   name="captures")
        r.add_post(f"{PREFIX}/payments/{{psp}}/cancels", self._api(self._cancel),
                   name="cancels")
        r.add_post(f"{PREFIX}/payments/{{psp}}/refunds", self._api(self._refund),
                   name="refunds")
        r.add_get("/_sim/3ds/{psp}", self._complete_3ds, name="complete_3ds")
        r.add_get("/reports/download/MerchantAccount/{account}/{file}", self._report,
                  name="report_download")
        r.add_route("*", "/{tail:.*}", self._unrecognized, name="unrecognized")

    def fault_response(self, status: int) -> web.Response:
        if status == 429:
            err = m.AdyenApiError(429, "000", "Too Many Requests", "security")
        else:
            err = m.AdyenApiError(status, "000", "Internal error (simulated fault)", "internal")
        return _json(status, err.body())

    def charges(self, reference: str) -> list[ChargeView]:
        return [p.view() for p in self.payments.values() if p.reference == reference]

    def reset_state(self) -> None:
        self.payments.clear()
        self.disputes.clear()
        self.idempotency.clear()
        self.notifications.clear()
        self.redirect_results.clear()

    async def close(self) -> None:
        self.reset_state()
        await super().close()

    # ------------------------------------------------------------ settlement

    def settlement_payout_id(self, day: dt.date, currency: str, account: str) -> str:
        return sds.payout_id(day, currency, account)

    def _movement(self, kind: str, payment: m.SimPayment, value: int, psp: str,
                  fee: int = 0, reference: str | None = None) -> None:
        step = stl.fee_step(m.adyen_decimals()[payment.currency],
                            iso_exponent(payment.currency))
        self.settlement.record(stl.Movement(
            line_id=psp, alt_line_id=m.new_psp(self.rng), kind=kind,
            reference=payment.reference, payment_id=payment.psp, currency=payment.currency,
            account=payment.merchant_account, amount=value, fee=fee, fee_step=step,
            refund_id=psp if kind == "refund" else None,
            data={"brand": payment.card.brand, "modification_reference": reference}))

    def _track_capture(self, payment: m.SimPayment, psp: str | None = None,
                       reference: str | None = None) -> None:
        """A Settled line for what was captured since the last one (an automatic
        capture gets a capture pspReference of its own, as Adyen gives it)."""
        recorded = sum(mv.amount for mv in self.settlement.movements
                       if mv.kind == "capture" and mv.payment_id == payment.psp)
        value = payment.captured - recorded
        if value <= 0:
            return
        step = stl.fee_step(m.adyen_decimals()[payment.currency],
                            iso_exponent(payment.currency))
        self._movement("capture", payment, value, psp or m.new_psp(self.rng),
                       fee=stl.schedule_fee(value, step), reference=reference)

    def settlement_report(self, day: dt.date) -> tuple[bytes, str]:
        for payment in self.payments.values():  # captures made outside the routes below
            self._track_capture(payment)
        return (sds.render(self.settlement.day(day), m.adyen_decimals()),
                "text/csv; charset=utf-8")

    async def _report(self, request: web.Request) -> web.Response:
        """Adyen's report download: ``settlement_detail_report_batch_<n>.csv`` or
        ``settlement_detail_report_<YYYY_MM_DD>.csv`` of one merchant account."""
        if (denied := self._auth_error(request)) is not None:
            return denied
        account, name = request.match_info["account"], request.match_info["file"]
        if self.merchant_account is not None and account != self.merchant_account:
            return _json(403, m.AdyenApiError(403, "901", "Invalid Merchant Account",
                                              "security").body())
        stem = name.removeprefix("settlement_detail_report_").removesuffix(".csv")
        day: dt.date | None = None
        try:
            if stem.startswith("batch_") and stem[6:].isdigit():
                day = sds.BATCH_EPOCH + dt.timedelta(days=int(stem[6:]) - 1)
            elif name.startswith("settlement_detail_report_") and name.endswith(".csv"):
                day = dt.date.fromisoformat(stem.replace("_", "-"))
        except (ValueError, OverflowError):
            day = None
        if day is None:
            return await self._unrecognized(request)
        for payment in self.payments.values():
            self._track_capture(payment)
        body = sds.render(self.settlement.day(day), m.adyen_decimals(), account)
        return web.Response(body=body, headers={"Content-Type": "text/csv; charset=utf-8"})

    # ------------------------------------------------------------ request plumbing

    def _auth_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key", "")
        if key and (self.api_key is None or key == self.api_key):
            return None
        return _json(401, m.UNAUTHORIZED.body())

    def _api(self, op: Operation, *, merchant: bool = True
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if (denied := self._auth_error(request)) is not None:
                return denied
            psp_header = m.new_psp(self.rng)
            try:
                body = json.loads(await request.read() or b"null")
            except ValueError:
                err = m.invalid("Unexpected input: the body is not valid JSON", "702", 400)
                return _json(400, err.body(psp_header), {"pspReference": psp_header})
            key = request.headers.get("Idempotency-Key")
            scope = f"{request.headers.get('x-api-key', '')}\x00{key}"
            echo = {"idempotency-key": key} if key else {}
            if key:
                claim = self.idempotency.claim(scope, fingerprint(request.method,
                                                                  request.path, body))
                if claim.claim is Claim.REPLAY and claim.stored is not None:
                    return web.Response(body=claim.stored.body, status=claim.stored.status,
                                        headers={**claim.stored.headers, **echo})
                if claim.claim in (Claim.MISMATCH, Claim.IN_FLIGHT):
                    in_flight = claim.claim is Claim.IN_FLIGHT
                    err = m.invalid("request already processed or in progress" if in_flight
                                    else "Idempotency key was used with a different request",
                                    "704")
                    extra = {"transient-error": "true"} if in_flight else {}
                    return _json(422, err.body(psp_header), {**echo, **extra})
            stored: StoredResponse | None = None
            try:
                if self.processing_delay_s:
                    await asyncio.sleep(self.processing_delay_s)
                try:
                    if not isinstance(body, dict):
                        raise m.invalid("Unexpected input: expected a JSON object", "702", 400)
                    if merchant:
                        self._check_merchant(body)
                    status, answer = op(request, body)
                except m.AdyenApiError as exc:
                    status, answer = exc.status, exc.body(psp_header)
                psp = str(answer.get("pspReference") or psp_header)
                stored = StoredResponse(status, json.dumps(answer).encode(),
                                        {"Content-Type": "application/json;charset=UTF-8",
                                         "pspReference": psp})
            finally:
                if key:
                    keep = stored is not None and stored.status < 500 and stored.status != 429
                    self.idempotency.finish(scope, stored if keep else None)
            return web.Response(body=stored.body, status=stored.status,
                                headers={**stored.headers, **echo})
        return handler

    def _check_merchant(self, body: dict[str, Any]) -> None:
        account = body.get("merchantAccount")
        if not isinstance(account, str) or not account:
            raise m.invalid("Required field 'merchantAccount' is not provided.", "000")
        if self.merchant_account is not None and account != self.merchant_account:
            raise m.AdyenApiError(403, "901", "Invalid Merchant Account", "security")

    async def _unrecognized(self, request: web.Request) -> web.Response:
        return _json(404, m.AdyenApiError(404, "000", f"HTTP Status Response - Not Found "
                                          f"({request.method} {request.path})",
                                          "validation").body())

    def _payment(self, request: web.Request) -> m.SimPayment:
        payment = self.payments.get(request.match_info["psp"])
        if payment is None:
            raise m.invalid("Original pspReference required for this operation", "167")
        return payment

    # ------------------------------------------------------------ disputes

    def dispute(self, request: dsp.DisputeRequest) -> dict[str, object]:
        """A chargeback on the captured payment: ``open`` -> ``CHARGEBACK``
        (disputeStatus ``Undefended``), ``win`` -> ``CHARGEBACK_REVERSED`` (``Won``),
        ``lose`` -> ``SECOND_CHARGEBACK`` (``Lost``); each item's ``pspReference`` is the
        dispute's, ``originalReference`` the payment's, HMAC-signed like every item."""
        ref = request.reference
        payments = [p for p in self.payments.values() if p.reference == ref]
        if not payments:
            raise dsp.unknown_reference(ref)
        captured = [p for p in payments if p.captured > 0]
        if not captured:
            raise dsp.not_captured(ref)
        payment = captured[-1]
        existing = self.disputes.get(payment.psp)
        if request.action == "open":
            if existing is not None:
                raise dsp.already_disputed(ref, existing.open)
            value = payment.captured
            if request.amount is not None:
                try:
                    value = iso_to_wire(request.amount, m.adyen_decimals()[payment.currency],
                                        payment.currency)
                except ValueError:
                    raise dsp.bad_wire_amount(request.amount, payment.currency) from None
                if value > payment.captured:
                    raise dsp.too_large(request.amount, payment.iso(payment.captured))
            ends = (datetime.now(UTC).replace(microsecond=0)
                    + timedelta(days=m.DEFENSE_PERIOD_DAYS)).isoformat()
            existing = m.SimDispute(m.new_psp(self.rng), payment, value, ends)
            self.disputes[payment.psp] = existing
            code = "CHARGEBACK"
            self._movement("dispute", payment, -value, existing.psp)
        else:
            if existing is None or not existing.open:
                raise dsp.no_open_dispute(ref)
            existing.dispute_status = "Won" if request.action == "win" else "Lost"
            code = "CHARGEBACK_REVERSED" if request.action == "win" else "SECOND_CHARGEBACK"
            if request.action == "win":
                self._movement("dispute_reversal", payment, existing.value, existing.psp)
        item = build_item(
            event_code=code, success=True, psp=existing.psp, original_reference=payment.psp,
            merchant_account=payment.merchant_account, reference=payment.reference,
            value=existing.value, currency=payment.currency, payment_method=payment.card.brand,
            reason=f"{existing.reason_code}:Fraud", hex_key=self.webhook_secret,
            extra=existing.additional_data())
        self.notifications.append(item)
        if self.webhooks.enabled:
            self.webhooks.send(build_body([item]), {"Content-Type": "application/json"})
        return {"dispute": {"pspReference": existing.psp, "disputeStatus": existing.dispute_status,
                            "amount": payment.iso(existing.value), "currency": payment.currency,
                            "originalReference": payment.psp}, "eventCode": code}

    # ------------------------------------------------------------ notifications

    def _notify(self, payment: m.SimPayment, event_code: str, success: bool, *,
                psp: str | None = None, value: int | None = None, reference: str | None = None,
                reason: str = "") -> None:
        item = build_item(
            event_code=event_code, success=success, psp=psp or payment.psp,
            original_reference=payment.psp if psp else None,
            merchant_account=payment.merchant_account,
            reference=reference or payment.reference,
            value=payment.amount if value is None else value, currency=payment.currency,
            payment_method=payment.card.brand, reason=reason, hex_key=self.webhook_secret)
        self.notifications.append(item)
        if self.webhooks.enabled:
            self.webhooks.send(build_body([item]), {"Content-Type": "application/json"})

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        if delay <= 0:  # no delay configured: the outcome is there at once
            fn()
            return
        self.later(delay, fn)

    def _authorisation(self, payment: m.SimPayment) -> None:
        success = payment.authorised
        reason = (f"065696:{payment.card.last4}:03/2030" if success
                  else payment.refusal_reason or "")
        self._notify(payment, "AUTHORISATION", success, reason=reason)

    def _settle_pending(self, psp: str) -> None:
        payment = self.payments.get(psp)
        if payment is not None and payment.result_code == "Received":
            payment.result_code = "Authorised"
            if not payment.manual:
                payment.captured = payment.amount
            self._track_capture(payment)
            self._authorisation(payment)

    # ------------------------------------------------------------ operations

    def _payment_methods(self, request: web.Request, body: dict[str, Any]
                         ) -> tuple[int, dict[str, Any]]:
        return 200, {"paymentMethods": [{"name": "Cards", "type": "scheme",
                                         "brands": ["visa", "mc", "amex"]}]}

    def _payments(self, request: web.Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        amount = m.parse_amount(body.get("amount"))
        assert amount is not None
        reference = body.get("reference")
        if not isinstance(reference, str) or not reference:
            raise m.invalid("Required field 'reference' is not provided.", "130")
        card, _token = m.card_for(body.get("paymentMethod"))
        extra = body.get("additionalData")
        manual = isinstance(extra, dict) and str(extra.get("manualCapture", "")).lower() == "true"
        payment = m.SimPayment(
            psp=m.new_psp(self.rng), merchant_account=str(body["merchantAccount"]),
            reference=reference, amount=amount[0], currency=amount[1], card=card, manual=manual,
            result_code="Authorised",
            return_url=body["returnUrl"] if isinstance(body.get("returnUrl"), str) else None)
        action: dict[str, Any] | None = None
        if card.behavior in m.REFUSALS:
            payment.result_code = "Refused"
            payment.refusal_reason, payment.refusal_code = m.REFUSALS[card.behavior]
        elif card.behavior is B.REQUIRES_ACTION:
            payment.result_code = "RedirectShopper"
            action = {"paymentMethodType": "scheme", "method": "GET", "type": "redirect",
                      "url": f"{self.base_url or ''}/_sim/3ds/{payment.psp}"}
        elif card.behavior is B.PENDING:
            payment.result_code = "Received"
        elif not manual:
            payment.captured = payment.amount
        self.payments[payment.psp] = payment
        self._track_capture(payment)
        if payment.result_code in ("Authorised", "Refused"):
            self._later(self.notification_delay_s, lambda: self._authorisation(payment))
        elif payment.result_code == "Received":
            self._later(self.async_delay_s, lambda: self._settle_pending(payment.psp))
        return 200, payment.payment_response(action)

    def _modification_answer(self, payment: m.SimPayment, body: dict[str, Any], psp: str,
                             amount: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"merchantAccount": body["merchantAccount"],
                               "paymentPspReference": payment.psp, "pspReference": psp,
                               "status": "received"}
        if isinstance(body.get("reference"), str):
            out["reference"] = body["reference"]
        if amount is not None:
            out["amount"] = payment.amount_dict(amount)
        return out

    def _requested_amount(self, payment: m.SimPayment, body: dict[str, Any]) -> int:
        amount = m.parse_amount(body.get("amount"))
        assert amount is not None
        if amount[1] != payment.currency:
            raise m.invalid("Invalid currency: does not match the payment", "000")
        return amount[0]

    def _received(self, payment: m.SimPayment, body: dict[str, Any], event_code: str,
                  amount: int | None) -> tuple[int, dict[str, Any]]:
        """Answer a modification 201 ``received``; its outcome follows as a notification."""
        psp = m.new_psp(self.rng)
        payment.modifications.append(psp)
        ref = body.get("reference") if isinstance(body.get("reference"), str) else None
        self._later(self.notification_delay_s, lambda: self._notify(
            payment, event_code, True, psp=psp, value=amount, reference=ref))
        return 201, self._modification_answer(payment, body, psp, amount)

    def _capture(self, request: web.Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = self._payment(request)
        amount = self._requested_amount(payment, body)
        payment.capture(amount)
        status, answer = self._received(payment, body, "CAPTURE", amount)
        self._track_capture(payment, answer["pspReference"], answer.get("reference"))
        return status, answer

    def _cancel(self, request: web.Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = self._payment(request)
        payment.cancel()
        return self._received(payment, body, "CANCELLATION", None)

    def _refund(self, request: web.Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = self._payment(request)
        amount = self._requested_amount(payment, body)
        payment.refund(amount)
        status, answer = self._received(payment, body, "REFUND", amount)
        self._movement("refund", payment, -amount, answer["pspReference"],
                       reference=answer.get("reference"))
        return status, answer

    def _payments_details(self, request: web.Request, body: dict[str, Any]
                          ) -> tuple[int, dict[str, Any]]:
        details = body.get("details")
        if not isinstance(details, dict):
            raise m.invalid("Required field 'details' is not provided.", "000")
        redirect_result = details.get("redirectResult")
        if not isinstance(redirect_result, str) or not redirect_result:
            raise m.invalid("Required field 'details.redirectResult' is not provided.", "000")
        payment = self.payments.get(self.redirect_results.get(redirect_result, ""))
        if payment is None:
            raise m.invalid("Invalid redirectResult", "000")
        return 200, payment.payment_response()

    async def _complete_3ds(self, request: web.Request) -> web.Response:
        """The shopper's 3-D Secure page: ``?result=succeed`` (default) or ``fail``; then
        back to the returnUrl with ``redirectResult``."""
        payment = self.payments.get(request.match_info["psp"])
        if payment is None or payment.result_code != "RedirectShopper":
            return _json(404, m.invalid("Unknown or completed 3-D Secure session", "000",
                                        404).body())
        if request.query.get("result", "succeed") == "fail":
            payment.result_code = "Refused"
            payment.refusal_reason, payment.refusal_code = "3D Not Authenticated", "11"
        else:
            payment.result_code = "Authorised"
            if not payment.manual:
                payment.captured = payment.amount
        token = m.new_redirect_result(self.rng)
        self.redirect_results[token] = payment.psp
        self._later(self.notification_delay_s, lambda: self._authorisation(payment))
        if payment.return_url:
            sep = "&" if "?" in payment.return_url else "?"
            raise web.HTTPFound(f"{payment.return_url}{sep}{urlencode({'redirectResult': token})}")
        return _json(200, {**payment.payment_response(), "redirectResult": token})
