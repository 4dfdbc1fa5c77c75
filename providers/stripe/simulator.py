"""Stripe API simulator: PaymentIntents + Refunds in Stripe's wire format.

The unmodified ``stripe`` SDK works against it (form-encoded bracket bodies, JSON
answers with ``object``, Stripe error envelopes, ``Idempotency-Key`` semantics).

Idempotency (like Stripe): a POST's key is claimed when the endpoint starts executing;
its answer (2xx, 400, 402, 404 -- and a 500 produced after execution started, see
``error_after_process``) is stored and replayed byte for byte with
``Idempotent-Replayed: true``; same key with other parameters -> 400
``idempotency_error``; same key while the first is still running -> 409
``idempotency_key_in_use``. Nothing is stored for 401, 429, early validation failures
(a malformed form body, an unknown parameter) or 5xx injected before processing: the
same key may be retried (with the parameters fixed). Under ``late_process`` the key is
claimed when the late processing starts. Every error answered after authentication
carries ``request_log_url`` (the dashboard log of that request, like Stripe's).

Amounts follow Stripe's documented currency rules (:func:`sim_model.check_amount`);
the charges view (``GET /_sim/stripe/charges``) reports them in ISO 4217 minor units.

Balance (``GET /v1/balance``, Stripe's ``GetBalance``): the authenticated account's
balance object; ``available`` holds per currency what was captured minus what was
refunded (Stripe's own units), ``pending`` is empty. Any valid key can read it, so it is
the harmless authenticated call of ``gateway doctor``.

Balance transactions (``GET /v1/balance_transactions``, Stripe's
``GetBalanceTransactions``): one per capture, refund, dispute and dispute reversal, and
the day's payouts, with fees from the simulators' schedule; ``GET /_sim/stripe/settlement``
serves a day of them (:mod:`providers.stripe.sim_settlement`).

Search (``GET /v1/payment_intents/search``, Stripe's Search API): the Search Query
Language subset of :func:`providers.stripe.sim_model.parse_search_query`, newest first,
``limit`` 1..100 (default 10) with ``page`` / ``next_page`` cursors. Like Stripe's,
the index is eventually consistent: a PaymentIntent is found only ``search_lag_ms``
after it was created; retrieving it by id is immediate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from providers.simulator import disputes as dsp
from providers.simulator import settlement as stl
from providers.simulator.idempotency import Claim, IdempotencyStore, StoredResponse
from providers.simulator.iso_units import iso_exponent, iso_to_wire
from providers.simulator.ledger import ChargeView
from providers.simulator.provider import SimulatedProvider
from providers.simulator.tokens import resolve_token
from providers.stripe import sim_model as m
from providers.stripe import sim_settlement as bal
from providers.stripe.form import (
    FormError,
    decode_form,
    fingerprint,
    get_bool,
    get_dict,
    get_int,
    get_str,
    parse_pairs,
)
from providers.stripe.sim_events import PI_STATUS_EVENTS, build_event, sign
from providers.stripe.sim_model import (
    CANCEL_PARAMS,
    CAPTURE_PARAMS,
    CONFIRM_PARAMS,
    CREATE_PARAMS,
    REFUND_PARAMS,
    SEARCH_PARAMS,
    STRIPE_TEST_TOKENS,
)

DEFAULT_WEBHOOK_SECRET = "whsec_sandbox_stripe"

CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
SEARCH_URL = "/v1/payment_intents/search"
SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT = 10, 100
BALANCE_PARAMS = frozenset({"expand"})
BALANCE_TXN_PARAMS = frozenset({"created", "currency", "ending_before", "expand", "limit",
                                "payout", "source", "starting_after", "type"})
BALANCE_TXN_EXPANDABLE = frozenset({"data.source"})
LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT = 10, 100

Operation = Callable[[web.Request, dict[str, Any]], tuple[int, dict[str, Any]]]


def _json(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status,
                        content_type="application/json", headers=headers)


def _check_params(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in params:
        if key not in allowed:
            raise m.invalid(f"Received unknown parameter: {key}", code="parameter_unknown",
                            param=key)


def _log_url(request_id: str) -> str:
    return f"https://dashboard.stripe.com/test/logs/{request_id}?t={int(time.time())}"


def _with_log_url(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """An error envelope with ``request_log_url`` (Stripe adds it to logged requests)."""
    error = body.get("error")
    if isinstance(error, dict) and "request_log_url" not in error:
        body = {**body, "error": {**error, "request_log_url": _log_url(request_id)}}
    return body


def _fault_parts(status: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Body and headers of an injected 429 / 5xx, in Stripe's error format."""
    if status == 429:
        return {"error": {"type": "invalid_request_error", "code": "rate_limit",
                          "message": "Too many requests hit the API too quickly."}}, {}
    return {"error": {"type": "api_error", "message": "An unknown error occurred while "
                      "processing your request (simulated fault)."}}, \
        {"Stripe-Should-Retry": "true"}


def _page_token(offset: int) -> str:
    return "page_" + base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _page_offset(token: str) -> int:
    try:
        raw = token.removeprefix("page_")
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        if not token.startswith("page_") or not decoded.startswith("o:"):
            raise ValueError(token)
        offset = int(decoded[2:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise m.invalid(f"Invalid page: {token}", param="page") from None
    if offset < 0:
        raise m.invalid(f"Invalid page: {token}", param="page")
    return offset


class StripeSimulator(SimulatedProvider):
    name = "stripe"
    supports_search = True

    def __init__(
        self, *, api_key: str | None = None, webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        webhook_url: str | None = None, seed: int | None = None, async_delay_s: float = 1.0,
        processing_delay_s: float = 0.0,
    ) -> None:
        """``api_key=None`` accepts any ``sk_test_...`` key. ``async_delay_s``: how long
        ``tok_pending`` payments (and their refunds) stay ``processing``/``pending``.
        ``processing_delay_s``: time a POST holds its idempotency key (tests of 409)."""
        super().__init__(seed=seed, webhook_url=webhook_url)
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.async_delay_s = async_delay_s
        self.processing_delay_s = processing_delay_s
        self.intents: dict[str, m.PaymentIntent] = {}
        self.refunds: dict[str, m.Refund] = {}
        self.disputes: dict[str, m.Dispute] = {}  # by PaymentIntent id (one per charge)
        self.idempotency = IdempotencyStore()
        self._captured: set[str] = set()  # PaymentIntents whose capture settled

    # ------------------------------------------------------------ framework hooks

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/payment_intents", self._api(self._create, CREATE_PARAMS),
                   name="create_payment_intent")
        r.add_get(SEARCH_URL, self._api(self._search, SEARCH_PARAMS),
                  name="search_payment_intents")
        r.add_get("/v1/payment_intents/{id}", self._api(self._retrieve, None),
                  name="retrieve_payment_intent")
        r.add_post("/v1/payment_intents/{id}/confirm", self._api(self._confirm, CONFIRM_PARAMS),
                   name="confirm_payment_intent")
        r.add_post("/v1/payment_intents/{id}/capture", self._api(self._capture, CAPTURE_PARAMS),
                   name="capture_payment_intent")
        r.add_post("/v1/payment_intents/{id}/cancel", self._api(self._cancel, CANCEL_PARAMS),
                   name="cancel_payment_intent")
        r.add_post("/v1/refunds", self._api(self._create_refund, REFUND_PARAMS),
                   name="create_refund")
        r.add_get("/v1/refunds/{id}", self._api(self._retrieve_refund, None),
                  name="retrieve_refund")
        r.add_get("/v1/balance", self._api(self._balance, BALANCE_PARAMS),
                  name="retrieve_balance")
        r.add_get(bal.LIST_URL, self._api(self._balance_transactions, BALANCE_TXN_PARAMS),
                  name="list_balance_transactions")
        r.add_route("*", "/_sim/3ds/{id}", self._complete_3ds, name="complete_3ds")
        r.add_route("*", "/{tail:.*}", self._unrecognized, name="unrecognized")

    def fault_response(self, status: int) -> web.Response:
        body, headers = _fault_parts(status)
        return _json(status, body, headers)

    def charges(self, reference: str) -> list[ChargeView]:
        """In ISO 4217 minor units (Stripe's amounts converted with its own rules)."""
        def iso(amount: int, pi: m.PaymentIntent) -> int | float:
            return m.iso_minor(amount, pi.currency)

        return [
            ChargeView(pi.id, iso(pi.amount, pi), pi.currency.upper(), pi.status,
                       iso(pi.amount_received, pi), iso(pi.amount_refunded, pi))
            for pi in self.intents.values()
            if reference in (pi.metadata.get("gateway_payment_id"), pi.metadata.get("reference"))
        ]

    def reset_state(self) -> None:
        self.intents.clear()
        self.refunds.clear()
        self.disputes.clear()
        self.idempotency.clear()
        self._captured.clear()

    # ------------------------------------------------------------ settlement

    def settlement_payout_id(self, day: dt.date, currency: str, account: str) -> str:
        return bal.payout_id(day, currency, account)

    def _movement(self, kind: str, pi: m.PaymentIntent, amount: int, source: str,
                  fee: int = 0, refund_id: str | None = None) -> None:
        step = stl.fee_step(m.wire_exponent(pi.currency), iso_exponent(pi.currency))
        self.settlement.record(stl.Movement(
            line_id=m.new_id("txn"), alt_line_id=m.new_id("txn"), kind=kind,
            reference=pi.metadata.get("gateway_payment_id") or pi.metadata.get("reference"),
            payment_id=pi.id, currency=pi.currency.upper(), account=bal.ACCOUNT,
            amount=amount, fee=fee, fee_step=step, refund_id=refund_id,
            data={"source": source, "charge": pi.latest_charge}))

    def _track_capture(self, pi: m.PaymentIntent) -> None:
        """A charge balance transaction once the PaymentIntent's charge is captured."""
        if pi.amount_received <= 0 or pi.id in self._captured or pi.latest_charge is None:
            return
        self._captured.add(pi.id)
        step = stl.fee_step(m.wire_exponent(pi.currency), iso_exponent(pi.currency))
        self._movement("capture", pi, pi.amount_received, pi.latest_charge,
                       fee=stl.schedule_fee(pi.amount_received, step))

    def _source_object(self, line: stl.DayLine) -> dict[str, Any] | None:
        mv = line.movement
        source = mv.data["source"]
        pi = self.intents.get(mv.payment_id)
        if mv.kind == "capture":
            return pi.charge_dict() if pi is not None else None
        if mv.kind == "refund":
            refund = self.refunds.get(source)
            return refund.to_dict() if refund is not None else None
        dispute = self.disputes.get(mv.payment_id)
        return dispute.to_dict() if dispute is not None and dispute.id == source else None

    def settlement_report(self, day: dt.date) -> tuple[bytes, str]:
        doc = bal.day_document(self.settlement, day, self._source_object)
        return json.dumps(doc).encode(), "application/json"

    async def close(self) -> None:
        self.reset_state()
        await super().close()

    def dispute(self, request: dsp.DisputeRequest) -> dict[str, object]:
        """A dispute on the PaymentIntent's charge: ``open`` -> ``charge.dispute.created``
        (``needs_response``), ``win`` / ``lose`` -> ``charge.dispute.closed`` (``won`` /
        ``lost``), as Stripe sends them (spec3 ``dispute`` object)."""
        ref = request.reference
        intents = [pi for pi in self.intents.values()
                   if ref in (pi.metadata.get("gateway_payment_id"), pi.metadata.get("reference"))]
        if not intents:
            raise dsp.unknown_reference(ref)
        captured = [pi for pi in intents if pi.amount_received > 0 and pi.latest_charge]
        if not captured:
            raise dsp.not_captured(ref)
        pi = captured[-1]
        existing = self.disputes.get(pi.id)
        if request.action == "open":
            if existing is not None:
                raise dsp.already_disputed(ref, existing.open)
            amount = pi.amount_received
            if request.amount is not None:
                try:
                    amount = iso_to_wire(request.amount, m.wire_exponent(pi.currency),
                                         pi.currency)
                except ValueError:
                    raise dsp.bad_wire_amount(request.amount, pi.currency.upper()) from None
                if amount > pi.amount_received:
                    raise dsp.too_large(request.amount,
                                        m.iso_minor(pi.amount_received, pi.currency))
            assert pi.latest_charge is not None
            existing = m.Dispute(m.new_id("dp"), amount, pi.currency, pi.latest_charge, pi.id)
            self.disputes[pi.id] = existing
            event_type = "charge.dispute.created"
            self._movement("dispute", pi, -amount, existing.id)
        else:
            if existing is None or not existing.open:
                raise dsp.no_open_dispute(ref)
            existing.status = "won" if request.action == "win" else "lost"
            event_type = "charge.dispute.closed"
            if existing.status == "won":
                self._movement("dispute_reversal", pi, existing.amount, existing.id)
        self._emit(event_type, existing.to_dict(), None)
        return {"dispute": {"id": existing.id, "status": existing.status,
                            "amount": m.iso_minor(existing.amount, existing.currency),
                            "currency": existing.currency.upper(), "charge": existing.charge,
                            "payment_intent": existing.payment_intent},
                "event": event_type}

    # ------------------------------------------------------------ request plumbing

    def _auth_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        key = ""
        if header.startswith("Bearer "):
            key = header[7:].strip()
        elif header.startswith("Basic "):
            try:
                key = base64.b64decode(header[6:]).decode().split(":", 1)[0]
            except ValueError:
                key = ""
        if not key:
            message = ("You did not provide an API key. You need to provide your API key in "
                       "the Authorization header, using Bearer auth.")
        elif (self.api_key is None and key.startswith("sk_test_")) or key == self.api_key:
            return None
        else:
            message = f"Invalid API Key provided: {key[:8]}{'*' * 4}{key[-4:]}"
        return _json(401, {"error": {"type": "invalid_request_error", "message": message}},
                     {"WWW-Authenticate": 'Bearer realm="Stripe"'})

    def _api(self, op: Operation, allowed: frozenset[str] | None
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if (denied := self._auth_error(request)) is not None:
                return denied
            request_id = m.new_id("req")
            headers = {"Request-Id": request_id}
            try:  # early validation: answered, never stored against the Idempotency-Key
                pairs = (parse_pairs(await request.read()) if request.method == "POST"
                         else list(request.query.items()))
                params = decode_form(pairs)
                if allowed is not None:
                    _check_params(params, allowed)
            except FormError as exc:
                return _json(400, _with_log_url(m.invalid(str(exc), param=exc.param).body(),
                                                request_id), headers)
            except m.StripeApiError as exc:
                return _json(exc.status, _with_log_url(exc.body(), request_id), headers)
            key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
            scope = f"{request.headers.get('Authorization', '')}\x00{key}"
            if key:
                claim = self.idempotency.claim(
                    scope, fingerprint(request.method, request.path, pairs))
                if claim.claim is Claim.REPLAY and claim.stored is not None:
                    return web.Response(body=claim.stored.body, status=claim.stored.status,
                                        headers={**claim.stored.headers, **headers,
                                                 "Idempotent-Replayed": "true"})
                if claim.claim is Claim.MISMATCH:
                    return _json(400, _with_log_url({"error": {
                        "type": "idempotency_error", "message":
                        f"Keys for idempotent requests can only be used with the same "
                        f"parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request."}},
                        request_id), headers)
                if claim.claim is Claim.IN_FLIGHT:
                    return _json(409, _with_log_url({"error": {
                        "type": "idempotency_error", "code": "idempotency_key_in_use",
                        "message": "There is currently another in-progress request using this "
                        "Idempotent Key (probably a retry). Retry after a short delay."}},
                        request_id), headers)
            stored: StoredResponse | None = None
            try:
                if self.processing_delay_s:
                    await asyncio.sleep(self.processing_delay_s)
                try:
                    status, body = op(request, params)
                except FormError as exc:
                    status, body = 400, m.invalid(str(exc), param=exc.param).body()
                except m.StripeApiError as exc:
                    status, body = exc.status, exc.body()
                if status >= 400:
                    body = _with_log_url(body, request_id)
                extra: dict[str, str] = {}
                if (fault := self.take_after_process_fault(request)) is not None:
                    # error_after_process: the endpoint ran (the PaymentIntent exists) and
                    # then failed with a 500; Stripe stores that 500 for the key too.
                    status, (body, extra) = fault, _fault_parts(fault)
                stored = StoredResponse(status, json.dumps(body).encode(),
                                        {"Content-Type": "application/json",
                                         "Original-Request": request_id, **extra})
            finally:
                if key:  # stored is None only if processing raised: release the key
                    self.idempotency.finish(scope, stored)
            return web.Response(body=stored.body, status=stored.status,
                                headers={**stored.headers, **headers})
        return handler

    async def _unrecognized(self, request: web.Request) -> web.Response:
        request_id = m.new_id("req")
        return _json(404, _with_log_url(m.invalid(
            f"Unrecognized request URL ({request.method}: {request.path}).").body(),
            request_id), {"Request-Id": request_id})

    def _intent(self, request: web.Request) -> m.PaymentIntent:
        pi_id = request.match_info["id"]
        pi = self.intents.get(pi_id)
        if pi is None:
            raise m.invalid(f"No such payment_intent: '{pi_id}'", code="resource_missing",
                            param="intent", status=404)
        return pi

    def _three_ds_url(self, pi: m.PaymentIntent) -> str:
        return f"{self.base_url or ''}/_sim/3ds/{pi.id}"

    # ------------------------------------------------------------ webhooks

    def _emit(self, event_type: str, obj: dict[str, Any], request: web.Request | None) -> None:
        if not self.webhooks.enabled:
            return
        key = request.headers.get("Idempotency-Key") if request is not None else None
        payload = build_event(event_type, obj, idempotency_key=key)
        self.webhooks.send(payload, {"Content-Type": "application/json; charset=utf-8",
                                     "Stripe-Signature": sign(payload, self.webhook_secret)})

    def _emit_pi(self, pi: m.PaymentIntent, request: web.Request | None) -> None:
        event_type = PI_STATUS_EVENTS.get(pi.status)
        if event_type:
            self._emit(event_type, pi.to_dict(), request)

    def _settle(self, pi_id: str) -> None:
        pi = self.intents.get(pi_id)
        if pi is not None and m.settle_processing(pi):
            self._track_capture(pi)
            self._emit_pi(pi, None)

    def _settle_refund(self, refund_id: str) -> None:
        refund = self.refunds.get(refund_id)
        if refund is not None and refund.status == "pending":
            refund.status = "succeeded"
            self._emit("refund.updated", refund.to_dict(), None)

    # ------------------------------------------------------------ operations

    def _create(self, request: web.Request, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        amount = get_int(params, "amount", minimum=1)
        if amount is None:
            raise m.invalid("Missing required param: amount.", code="parameter_missing",
                            param="amount")
        currency = (get_str(params, "currency") or "").lower()
        if len(currency) != 3 or not currency.isalpha():
            raise m.invalid(f"Invalid currency: {currency or '(missing)'}.",
                            code="parameter_invalid_empty" if not currency else None,
                            param="currency")
        m.check_amount(amount, currency)
        capture_method = get_str(params, "capture_method") or "automatic_async"
        if capture_method not in CAPTURE_METHODS:
            raise m.invalid(f"Invalid capture_method: must be one of {', '.join(CAPTURE_METHODS)}",
                            param="capture_method")
        token = get_str(params, "payment_method")
        card = resolve_token(token, STRIPE_TEST_TOKENS)
        if token is not None and card is None:
            raise m.invalid(f"No such PaymentMethod: '{token}'", code="resource_missing",
                            param="payment_method")
        types = params.get("payment_method_types", ["card"])
        pi = m.PaymentIntent(
            id=m.new_id("pi"), amount=amount, currency=currency, capture_method=capture_method,
            metadata=get_dict(params, "metadata"), payment_method=token,
            payment_method_types=types if isinstance(types, list) else ["card"], card=card,
            description=get_str(params, "description"), return_url=get_str(params, "return_url"),
        )
        pi.client_secret = f"{pi.id}_secret_{m.new_id('cs')[3:]}"
        if card is not None:
            pi.status = "requires_confirmation"
        self.intents[pi.id] = pi
        self._emit("payment_intent.created", pi.to_dict(), request)
        if get_bool(params, "confirm"):
            self._run_confirm(pi, request)
        return 200, pi.to_dict()

    def _run_confirm(self, pi: m.PaymentIntent, request: web.Request) -> None:
        try:
            m.confirm(pi, self._three_ds_url(pi))
        finally:
            self._emit_pi(pi, request)
        self._track_capture(pi)
        if pi.status == "processing":
            self.later(self.async_delay_s, lambda: self._settle(pi.id))

    def _retrieve(self, request: web.Request, params: dict[str, Any]
                  ) -> tuple[int, dict[str, Any]]:
        return 200, self._intent(request).to_dict()

    def _balance(self, request: web.Request, params: dict[str, Any]
                 ) -> tuple[int, dict[str, Any]]:
        net: dict[str, int] = {}
        for pi in self.intents.values():
            net[pi.currency] = net.get(pi.currency, 0) + pi.amount_received - pi.amount_refunded
        available = [{"amount": amount, "currency": currency, "source_types": {"card": amount}}
                     for currency, amount in sorted(net.items())]
        if not available:
            available = [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}]
        return 200, {"object": "balance", "available": available, "connect_reserved": [],
                     "livemode": False, "pending": []}

    def _balance_transactions(self, request: web.Request, params: dict[str, Any]
                              ) -> tuple[int, dict[str, Any]]:
        """``GET /v1/balance_transactions`` (spec3 ``GetBalanceTransactions``): newest
        first; ``created`` (an integer or ``gt``/``gte``/``lt``/``lte``), ``payout``,
        ``type``, ``currency``, ``source``; ``limit`` 1..100 (default 10),
        ``starting_after`` / ``ending_before``; ``expand[]=data.source``."""
        expand = params.get("expand", [])
        if not isinstance(expand, list) or any(e not in BALANCE_TXN_EXPANDABLE
                                               for e in expand):
            raise m.invalid(f"This property cannot be expanded ({expand!r}).",
                            param="expand")
        items = bal.entries(self.settlement, self._source_object)
        payout = get_str(params, "payout")
        if payout is not None:
            if payout not in self.settlement.payout_keys:
                raise m.invalid(f"No such payout: '{payout}'", code="resource_missing",
                                param="payout", status=404)
            items = bal.in_payout(items, payout)
        created = params.get("created")
        if created is not None:
            bounds = created if isinstance(created, dict) else {"eq": created}
            for op, raw in bounds.items():
                if op not in ("gt", "gte", "lt", "lte", "eq") or not str(raw).isdigit():
                    raise m.invalid("Invalid created: must be an integer or a range "
                                    "(gt, gte, lt, lte)", param="created")
                value = int(raw)
                test = {"gt": lambda c, v: c > v, "gte": lambda c, v: c >= v,
                        "lt": lambda c, v: c < v, "lte": lambda c, v: c <= v,
                        "eq": lambda c, v: c == v}[op]
                items = [e for e in items if test(e.body["created"], value)]
        for key in ("type", "currency", "source"):
            wanted = get_str(params, key)
            if wanted is not None:
                items = [e for e in items if e.body[key] == wanted]
        limit = get_int(params, "limit", minimum=1)
        limit = LIST_DEFAULT_LIMIT if limit is None else limit
        if limit > LIST_MAX_LIMIT:
            raise m.invalid(f"This value must be less than or equal to {LIST_MAX_LIMIT}.",
                            param="limit")
        ids = [e.body["id"] for e in items]
        after, before = get_str(params, "starting_after"), get_str(params, "ending_before")
        for cursor, name in ((after, "starting_after"), (before, "ending_before")):
            if cursor is not None and cursor not in ids:
                raise m.invalid(f"No such balance_transaction: '{cursor}'",
                                code="resource_missing", param=name, status=404)
        if after is not None:
            chunk = items[ids.index(after) + 1:]
            has_more = len(chunk) > limit
            chunk = chunk[:limit]
        elif before is not None:
            head = items[:ids.index(before)]
            has_more = len(head) > limit
            chunk = head[-limit:]
        else:
            has_more = len(items) > limit
            chunk = items[:limit]
        data = [bal.render(e, bool(expand)) for e in chunk]
        return 200, bal.list_object(data, has_more)

    def _search(self, request: web.Request, params: dict[str, Any]
                ) -> tuple[int, dict[str, Any]]:
        query = get_str(params, "query")
        if not query:
            raise m.invalid("Missing required param: query.", code="parameter_missing",
                            param="query")
        match = m.parse_search_query(query)
        limit = get_int(params, "limit", minimum=1)
        limit = SEARCH_DEFAULT_LIMIT if limit is None else limit
        if limit > SEARCH_MAX_LIMIT:
            raise m.invalid(f"This value must be less than or equal to {SEARCH_MAX_LIMIT}.",
                            param="limit")
        page = get_str(params, "page")
        offset = _page_offset(page) if page else 0
        hits = [pi for pi in reversed(self.intents.values())  # newest first
                if self.searchable(pi.created_monotonic) and match(pi)]
        chunk = hits[offset:offset + limit]
        has_more = offset + limit < len(hits)
        return 200, {"object": "search_result", "data": [pi.to_dict() for pi in chunk],
                     "has_more": has_more,
                     "next_page": _page_token(offset + limit) if has_more else None,
                     "url": SEARCH_URL}

    def _confirm(self, request: web.Request, params: dict[str, Any]
                 ) -> tuple[int, dict[str, Any]]:
        pi = self._intent(request)
        if pi.status not in ("requires_confirmation", "requires_payment_method"):
            raise m.invalid(f"This PaymentIntent's status is {pi.status}; it cannot be "
                            "confirmed.", code="payment_intent_unexpected_state",
                            payment_intent=pi.to_dict())
        token = get_str(params, "payment_method")
        if token is not None:
            card = resolve_token(token, STRIPE_TEST_TOKENS)
            if card is None:
                raise m.invalid(f"No such PaymentMethod: '{token}'", code="resource_missing",
                                param="payment_method")
            pi.payment_method, pi.card, pi.last_payment_error = token, card, None
        pi.return_url = get_str(params, "return_url") or pi.return_url
        self._run_confirm(pi, request)
        return 200, pi.to_dict()

    def _capture(self, request: web.Request, params: dict[str, Any]
                 ) -> tuple[int, dict[str, Any]]:
        pi = self._intent(request)
        m.capture(pi, get_int(params, "amount_to_capture", minimum=1))
        self._track_capture(pi)
        self._emit_pi(pi, request)
        return 200, pi.to_dict()

    def _cancel(self, request: web.Request, params: dict[str, Any]
                ) -> tuple[int, dict[str, Any]]:
        pi = self._intent(request)
        m.cancel(pi, get_str(params, "cancellation_reason"))
        self._emit_pi(pi, request)
        return 200, pi.to_dict()

    def _create_refund(self, request: web.Request, params: dict[str, Any]
                       ) -> tuple[int, dict[str, Any]]:
        pi_id, charge_id = get_str(params, "payment_intent"), get_str(params, "charge")
        pi = self.intents.get(pi_id or "")
        if pi is None and charge_id:
            pi = next((p for p in self.intents.values() if p.latest_charge == charge_id), None)
        if pi is None:
            what = f"payment_intent: '{pi_id}'" if pi_id else f"charge: '{charge_id}'"
            if not pi_id and not charge_id:
                raise m.invalid("One of the following params should be provided for this "
                                "request: payment_intent or charge.", code="parameter_missing")
            raise m.invalid(f"No such {what}", code="resource_missing",
                            param="payment_intent" if pi_id else "charge", status=404)
        refund = m.refund(pi, get_int(params, "amount", minimum=0),
                          get_dict(params, "metadata"), get_str(params, "reason"))
        self.refunds[refund.id] = refund
        self._movement("refund", pi, -refund.amount, refund.id, refund_id=refund.id)
        self._emit("refund.created", refund.to_dict(), request)
        self._emit("charge.refunded", pi.charge_dict(), request)
        if refund.status == "pending":
            self.later(self.async_delay_s, lambda: self._settle_refund(refund.id))
        return 200, refund.to_dict()

    def _retrieve_refund(self, request: web.Request, params: dict[str, Any]
                         ) -> tuple[int, dict[str, Any]]:
        refund = self.refunds.get(request.match_info["id"])
        if refund is None:
            raise m.invalid(f"No such refund: '{request.match_info['id']}'",
                            code="resource_missing", param="id", status=404)
        return 200, refund.to_dict()

    async def _complete_3ds(self, request: web.Request) -> web.Response:
        """The customer's 3-D Secure page (``next_action.redirect_to_url.url``):
        ``?result=succeed`` (default) or ``fail``. Like Stripe's, finishing it finishes the
        PaymentIntent (``requires_capture`` / ``succeeded``, or ``requires_payment_method``
        with ``payment_intent_authentication_failure``), sends its webhook
        (``payment_intent.amount_capturable_updated`` / ``.succeeded`` /
        ``.payment_failed``) and redirects to ``return_url`` with ``payment_intent``,
        ``payment_intent_client_secret`` and ``redirect_status`` appended."""
        try:
            pi = self._intent(request)
            m.complete_action(pi, request.query.get("result", "succeed") != "fail")
        except m.StripeApiError as exc:
            return _json(exc.status, exc.body())
        self._track_capture(pi)
        self._emit_pi(pi, None)
        if pi.return_url:
            sep = "&" if "?" in pi.return_url else "?"
            status = "failed" if pi.status == "requires_payment_method" else "succeeded"
            query = urlencode({"payment_intent": pi.id,
                               "payment_intent_client_secret": pi.client_secret,
                               "redirect_status": status})
            raise web.HTTPFound(f"{pi.return_url}{sep}{query}")
        return _json(200, pi.to_dict())
