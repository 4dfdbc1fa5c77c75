"""Stripe adapter: the official ``stripe`` SDK (async methods) behind :class:`Provider`.

Amounts: the gateway's ISO minor units are converted to Stripe's units by
:mod:`providers.stripe.amounts` (Stripe's published rules: MGA is zero-decimal at Stripe,
ISK two-decimal, three-decimal amounts need a last digit 0); an amount Stripe cannot
take exactly is refused before anything is sent (RejectedSafe ``invalid_amount``).
Every answer is checked against what was sent: a PaymentIntent, capture or refund in
another currency or for another amount is never a success (:class:`ProviderMismatch`; a
fresh PaymentIntent is cancelled first).

Outcomes: see :mod:`providers.stripe.errors` for the exception table and
:mod:`providers.stripe.parse` for how objects become results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote_plus

import aiohttp
import stripe

from providers.amounts import AmountError
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    NotFound,
    NotSent,
    PaymentRef,
    Provider,
    ProviderFault,
    ProviderMismatch,
    ProviderResult,
    RefundResult,
)
from providers.statuses import PaymentStatus
from providers.stripe.amounts import to_wire
from providers.stripe.errors import Refusal, translate
from providers.stripe.parse import (
    declined_payment,
    declined_refund,
    iso_amount,
    parse_payment_intent,
    parse_refund,
)
from providers.stripe.status import map_payment_intent_status

T = TypeVar("T")


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _path(*parts: str) -> str:
    """``/v1/payment_intents/<id>/capture`` with each id quoted as the SDK's services do
    (``stripe._util.sanitize_id``: ``quote_plus``)."""
    return "/v1/" + "/".join(quote_plus(p) for p in parts)


def _same_intent(pi: dict[str, Any], pi_id: str, call: str) -> dict[str, Any]:
    """``pi`` when it is the PaymentIntent ``pi_id`` the call named; an answer about
    another one proves nothing about ours (integration fault, never a status)."""
    if pi.get("id") != pi_id:
        raise Ambiguous("invalid_response", f"{call} of {pi_id}: Stripe answered about "
                        f"{pi.get('id')!r}")
    return pi


class StripeProvider(Provider):
    type = "stripe"

    def __init__(
        self, name: str, *, api_key: str, base_url: str, currencies: frozenset[str],
        timeout_s: float = 10.0, connect_timeout_s: float = 3.0,
    ) -> None:
        self.name = name
        self.currencies = frozenset(c.upper() for c in currencies)
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._http: stripe.AIOHTTPClient | None = None
        self._client: stripe.StripeClient | None = None

    def __repr__(self) -> str:  # never show the key
        return f"StripeProvider(name={self.name!r}, base_url={self._base_url!r})"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._client is not None:
            return
        stripe.enable_telemetry = False
        self._http = stripe.AIOHTTPClient(timeout=self._timeout)
        self._client = stripe.StripeClient(
            self._api_key, base_addresses={"api": self._base_url}, http_client=self._http,
            max_network_retries=0,
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()
        self._http, self._client = None, None

    async def _sdk(self) -> stripe.StripeClient:
        if self._client is None:
            await self.start()
        assert self._client is not None
        return self._client

    async def _request(self, method: str, path: str, params: dict[str, Any] | None = None,
                       idempotency_key: str | None = None) -> dict[str, Any] | Refusal:
        """One API call through the SDK's ``raw_request_async``: the same request (form
        encoding, headers, authentication, idempotency key, transport) and the same
        exceptions (``_interpret_response`` raises the error types :mod:`.errors`
        translates) as the typed services, but the answer is the parsed JSON, not a
        ``StripeObject`` tree that the adapter would convert straight back to a dict:
        that conversion was ~6 % of the gateway's CPU per authorization (py-spy), and
        ~0.5 ms of client CPU per create (1.49 -> 0.99 ms, bench in the commit)."""
        client = await self._sdk()
        kwargs: dict[str, Any] = dict(params or {})
        if idempotency_key is not None:
            kwargs["idempotency_key"] = idempotency_key
        got = await self._call(lambda: client.raw_request_async(method, path, **kwargs))
        if isinstance(got, Refusal):
            return got
        data = got.data
        if not isinstance(data, dict):
            raise Ambiguous("invalid_response", f"Stripe answered {type(data).__name__} "
                            f"for {method.upper()} {path}")
        return data

    @staticmethod
    async def _call(fn: Callable[[], Awaitable[T]]) -> T | Refusal:
        """Run one SDK call; faults are raised, definite refusals returned."""
        try:
            return await fn()
        except Exception as exc:
            outcome = translate(exc)
            if isinstance(outcome, ProviderFault):
                raise outcome from exc
            return outcome

    @staticmethod
    def _wire(amount: int, currency: str) -> int:
        try:
            return to_wire(amount, currency)
        except (AmountError, ValueError) as exc:
            raise NotSent("invalid_amount", str(exc)) from None

    async def _verify(self, obj: dict[str, Any], amount_key: str, amount: int,
                      currency: str, *, cancel: bool = False) -> None:
        """``obj`` must be in ``currency`` with ``obj[amount_key] == amount`` (ISO minor
        units); otherwise raise :class:`ProviderMismatch`, cancelling a fresh PaymentIntent
        first when ``cancel``."""
        got_currency = obj.get("currency")
        got = iso_amount(obj, amount_key)
        if (isinstance(got_currency, str) and got_currency.upper() == currency.upper()
                and got == amount):
            return
        released = False
        obj_id = obj.get("id") if isinstance(obj.get("id"), str) else None
        if cancel and obj_id:
            try:
                done = await self._request("post", _path("payment_intents", obj_id, "cancel"),
                                           {"cancellation_reason": "abandoned"})
                released = not isinstance(done, Refusal) and done.get("status") == "canceled"
            except ProviderFault:
                released = False
        raise ProviderMismatch(
            f"Stripe answered {obj.get(amount_key)!r} {str(got_currency).upper()} for "
            f"{amount} {currency.upper()} (ISO minor units)"
            + ("; the PaymentIntent was cancelled" if released else ""),
            provider_reference=obj_id, released=released)

    @staticmethod
    def _require_reference(ref: PaymentRef) -> str:
        if not ref.provider_reference:
            raise NotSent("missing_provider_reference",
                               "no Stripe PaymentIntent id known for this payment")
        return ref.provider_reference

    # ------------------------------------------------------------ operations

    def _create_params(self, req: AuthorizeRequest) -> dict[str, Any]:
        metadata = {**req.metadata, "gateway_payment_id": req.payment_id}
        if req.reference:
            metadata["reference"] = req.reference
        return {
            "amount": self._wire(req.amount, req.currency),
            "currency": req.currency.lower(),
            "capture_method": "manual" if req.capture_manual else "automatic",
            "confirm": True,
            "payment_method": req.token,
            "payment_method_types": ["card"],
            "metadata": metadata,
            # where Stripe sends the customer after a 3-D Secure redirect (next_action)
            **({"return_url": req.return_url} if req.return_url else {}),
        }

    async def _create(self, req: AuthorizeRequest) -> ProviderResult:
        got = await self._request("post", "/v1/payment_intents", self._create_params(req),
                                  req.idempotency_key)
        if isinstance(got, Refusal):
            failure = got.failure
            if failure.code != "card_declined":  # bad token, unsupported currency, ...
                failure = replace(failure, code="invalid_request")
            return declined_payment(replace(got, failure=failure))
        pi = got
        await self._verify(pi, "amount", req.amount, req.currency, cancel=True)
        return parse_payment_intent(pi)

    async def authorize(self, req: AuthorizeRequest) -> ProviderResult:
        return await self._create(req)

    def _follow_up_refusal(self, refusal: Refusal) -> ProviderResult:
        current = PaymentStatus.AUTHORIZED  # what capture/void require
        pi = refusal.payment_intent
        if pi is not None:
            mapped, ok = map_payment_intent_status(pi.get("status"))
            current = mapped if ok else current
        return declined_payment(refusal, current)

    async def capture(self, ref: PaymentRef, amount: int, idempotency_key: str) -> ProviderResult:
        pi_id = self._require_reference(ref)
        wire = self._wire(amount, ref.currency)
        got = await self._request("post", _path("payment_intents", pi_id, "capture"),
                                  {"amount_to_capture": wire}, idempotency_key)
        if isinstance(got, Refusal):
            return self._follow_up_refusal(got)
        pi = _same_intent(got, pi_id, "capture")
        await self._verify(pi, "amount_received", amount, ref.currency)
        return parse_payment_intent(pi)

    async def void(self, ref: PaymentRef, idempotency_key: str) -> ProviderResult:
        pi_id = self._require_reference(ref)
        got = await self._request("post", _path("payment_intents", pi_id, "cancel"),
                                  {"cancellation_reason": "requested_by_customer"},
                                  idempotency_key)
        if isinstance(got, Refusal):
            return self._follow_up_refusal(got)
        pi = _same_intent(got, pi_id, "void")
        await self._verify(pi, "amount", ref.amount, ref.currency)
        return parse_payment_intent(pi)

    async def refund(
        self, ref: PaymentRef, refund_id: str, amount: int, idempotency_key: str
    ) -> RefundResult:
        pi_id = self._require_reference(ref)
        params: dict[str, Any] = {
            "payment_intent": pi_id, "amount": self._wire(amount, ref.currency),
            "metadata": {"gateway_refund_id": refund_id, "gateway_payment_id": ref.payment_id},
        }
        got = await self._request("post", "/v1/refunds", params, idempotency_key)
        if isinstance(got, Refusal):
            return declined_refund(got)
        refund = got
        if refund.get("payment_intent") != pi_id:
            raise Ambiguous("invalid_response", f"refunded {pi_id}, Stripe answered a refund "
                            f"of {refund.get('payment_intent')!r}")
        await self._verify(refund, "amount", amount, ref.currency)
        return parse_refund(refund)

    async def retrieve_refund(self, refund_reference: str) -> RefundResult:
        """Current state of a refund (reconciliation of pending refunds)."""
        got = await self._request("get", _path("refunds", refund_reference))
        if isinstance(got, Refusal):
            if got.not_found:
                raise NotFound(got.failure.message)
            raise Ambiguous("lookup_refused", got.failure.message)
        return parse_refund(got)

    async def _retrieve(self, pi_id: str) -> ProviderResult:
        got = await self._request("get", _path("payment_intents", pi_id))
        if isinstance(got, Refusal):
            if got.not_found:
                raise NotFound(got.failure.message)
            raise Ambiguous("lookup_refused", got.failure.message)
        return parse_payment_intent(_same_intent(got, pi_id, "retrieve"))

    async def lookup(
        self, ref: PaymentRef, authorize: AuthorizeRequest | None, *,
        sent_at: float | None = None, may_create: bool = True,
    ) -> ProviderResult:
        """What Stripe holds for the payment.

        Proof (SPEC 5.1): Stripe deduplicates a create by its Idempotency-Key: the result
        is saved once the endpoint starts executing (a 500 included) and replayed for that
        key for at least 24 h; nothing is saved for 429, 401, early validation failures or
        a conflict with a concurrent request, which answers 409 while the original still
        runs (``../shared/reference/providers.md`` 1.5, ``provider-specs/README.md``). So
        the replay of the original create with the same key is final: the stored answer,
        or the request run now if it never arrived (the same attempt, never a second
        one), or 409 (Ambiguous) while the original is executing. Stripe's lookup never
        proves absence (:class:`NotCreated`): the replay creates instead.

        Retrieve by PaymentIntent id when known. Without one: the replay if
        ``may_create``; otherwise (past the replay window), or when the replay keeps
        answering a stored 500, the Search API by ``metadata['gateway_payment_id']``,
        which is eventually consistent: a hit is an answer, a miss proves nothing.
        """
        if ref.provider_reference:
            return await self._retrieve(ref.provider_reference)
        if authorize is None or not may_create:
            return await self._search(ref.payment_id)
        try:
            replayed = await self._create(authorize)
        except Ambiguous as exc:
            if exc.http_status is None or exc.http_status < 500:
                raise
            # Stripe stored a 500 for this key and will replay it for ever: ask search.
            return await self._search(ref.payment_id)
        if replayed.provider_reference and replayed.status is not PaymentStatus.DECLINED:
            return await self._retrieve(replayed.provider_reference)
        return replayed

    async def complete_action(self, ref: PaymentRef, returned: dict[str, str],
                              idempotency_key: str) -> ProviderResult:
        """After the customer's 3-D Secure redirect: Stripe has already finished the
        PaymentIntent it confirmed (``requires_capture`` / ``succeeded``, or
        ``requires_payment_method`` with ``payment_intent_authentication_failure``), so
        retrieve it; one waiting in ``requires_confirmation`` is confirmed with
        ``idempotency_key``. Checked against the amount and currency sent. ``returned``
        (``payment_intent``, ``redirect_status``) is not needed: the PaymentIntent id is
        the payment's provider reference."""
        pi_id = self._require_reference(ref)
        client = await self._sdk()
        got: Any = await self._call(lambda: client.v1.payment_intents.retrieve_async(pi_id))
        if isinstance(got, Refusal):
            if got.not_found:
                raise NotFound(got.failure.message)
            raise Ambiguous("lookup_refused", got.failure.message)
        pi = _as_dict(got)
        if pi.get("status") == "requires_confirmation":
            opts: Any = {"idempotency_key": idempotency_key}
            got = await self._call(lambda: client.v1.payment_intents.confirm_async(
                pi_id, {}, opts))
            if isinstance(got, Refusal):
                if got.payment_intent is None:
                    raise Ambiguous("confirm_refused", got.failure.message)
                return declined_payment(got)
            pi = _as_dict(got)
        pi = _same_intent(pi, pi_id, "complete")
        await self._verify(pi, "amount", ref.amount, ref.currency)
        return parse_payment_intent(pi)

    abandons_action = True

    async def abandon_action(self, ref: PaymentRef, idempotency_key: str) -> ProviderResult:
        """Cancel a PaymentIntent the customer never authenticated (``cancellation_reason:
        abandoned``, with ``idempotency_key``: a retry replays the answer). Stripe's answer
        is final: a ``canceled`` PaymentIntent can never be confirmed or charged (it maps
        to ``voided``). One the customer finished meanwhile cannot be cancelled when it has
        ``succeeded`` (400 ``payment_intent_unexpected_state``): its current state is
        retrieved and answered instead."""
        pi_id = self._require_reference(ref)
        client = await self._sdk()
        opts: Any = {"idempotency_key": idempotency_key}
        got: Any = await self._call(lambda: client.v1.payment_intents.cancel_async(
            pi_id, {"cancellation_reason": "abandoned"}, opts))
        if isinstance(got, Refusal):
            if got.not_found:
                raise NotFound(got.failure.message)
            return await self._retrieve(pi_id)  # finished meanwhile: what it is now
        pi = _same_intent(_as_dict(got), pi_id, "cancel")
        await self._verify(pi, "amount", ref.amount, ref.currency)
        return parse_payment_intent(pi)

    async def _search(self, payment_id: str) -> ProviderResult:
        client = await self._sdk()
        params: Any = {"query": f"metadata['gateway_payment_id']:'{payment_id}'"}
        got = await self._call(lambda: client.v1.payment_intents.search_async(params))
        if isinstance(got, Refusal):
            raise Ambiguous("lookup_refused", got.failure.message)
        found = [_as_dict(pi) for pi in got.data]
        if len(found) > 1:
            raise Ambiguous("multiple_payment_intents",
                            f"{len(found)} PaymentIntents for {payment_id}")
        if not found:
            raise Ambiguous(Ambiguous.NOT_VISIBLE_YET,
                            f"no PaymentIntent for {payment_id} found by search (eventually "
                            "consistent: this proves nothing)")
        return parse_payment_intent(found[0])
