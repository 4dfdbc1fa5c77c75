"""Adyen adapter: the official (synchronous) ``Adyen`` SDK behind :class:`Provider`.

Threading
    The SDK is blocking (``requests``), so every call runs in a bounded
    :class:`ThreadPoolExecutor` owned by the adapter (created in :meth:`start`, shut
    down in :meth:`close`) or in the executor passed in -- never on the event loop.
    ``AdyenClient`` is not designed for concurrent use: it lazily creates its
    ``http_client`` with an unsynchronised check-then-set (``http_init``) and holds
    mutable settings, so each worker thread gets its own ``Adyen.Adyen`` instance
    (``threading.local``). ``requests.request`` opens a fresh session per call, so
    threads share no connections.

Timeouts
    ``http_timeout`` is handed to ``requests`` unchanged, so the adapter passes the
    tuple ``(connect_timeout_s, timeout_s)``: a connect timeout (request never sent ->
    RejectedSafe) is told apart from a read timeout (-> Ambiguous). ``http_force=
    "requests"`` pins the HTTP backend so the exception types are the ones
    :mod:`providers.adyen.errors` classifies.

Wire choices
    * ``reference`` = gateway payment id (the simulator's charges view is keyed by it);
      ``merchantOrderReference`` = the merchant's own reference, if any.
    * The gateway token is sent as a stored payment method:
      ``paymentMethod = {"type": "scheme", "storedPaymentMethodId": token}`` with
      ``shopperInteraction = "ContAuth"`` and ``recurringProcessingModel =
      "CardOnFile"``; ``shopperReference`` comes from ``metadata["shopper_reference"]``
      when given (Adyen needs it for real stored cards).
    * Manual capture: ``additionalData.manualCapture = "true"``; automatic capture
      sends no flag (the merchant-account default must be immediate capture), and an
      ``Authorised`` answer then maps to ``captured``.
    * Amounts are minor units in both systems and pass through unchanged.
    * Modification ``reference``: the payment id for captures / cancels, the gateway
      refund id for refunds, so webhooks carry them as ``merchantReference``.
    * ``Idempotency-Key`` is sent on every call (``idempotency_key=``).

Lookup
    Checkout has no GET for a payment. :meth:`lookup` replays ``/payments`` with the
    original request and the SAME idempotency key: Adyen answers with the stored
    response (or processes the request if it never arrived). It therefore never
    proves "nothing exists" (no ``not_found``), and it reflects the authorisation
    result only: capture / void / refund completion arrives by webhook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import Adyen

from providers import sdk_pool
from providers.adyen import keepalive
from providers.adyen.amounts import to_wire
from providers.adyen.errors import Refusal, translate
from providers.adyen.parse import (
    amount_currency,
    declined_payment,
    declined_refund,
    iso_amount,
    parse_payment,
    parse_payment_modification,
    parse_refund,
)
from providers.adyen.status import Modification
from providers.amounts import AmountError
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    NotSent,
    Operation,
    Outcome,
    PaymentRef,
    Provider,
    ProviderMismatch,
    ProviderResult,
    RefundResult,
)
from providers.sdk_pool import SdkPool
from providers.statuses import PaymentStatus

DEFAULT_RETURN_URL = "https://gateway.invalid/adyen/return"
DEFAULT_MAX_WORKERS = sdk_pool.DEFAULT_THREADS

SdkCall = Callable[[Adyen.Adyen], Any]



def _same_payment(got: Mapping[str, Any], psp: str, call: str) -> None:
    """A modification answer names the payment it modifies (``paymentPspReference``); one
    about another payment proves nothing about ours (integration fault, never a status)."""
    named = got.get("paymentPspReference")
    if named is not None and named != psp:
        raise Ambiguous("invalid_response", f"{call} of {psp}: Adyen answered about "
                        f"{named!r}")

class AdyenProvider(Provider):
    type = "adyen"

    def __init__(
        self, name: str, *, api_key: str, merchant_account: str, base_url: str,
        currencies: frozenset[str], timeout_s: float = 10.0, connect_timeout_s: float = 3.0,
        executor: Executor | None = None, max_workers: int = DEFAULT_MAX_WORKERS,
        return_url: str = DEFAULT_RETURN_URL,
    ) -> None:
        """``base_url`` includes the API version path, e.g.
        ``http://127.0.0.1:12113/checkout/v71`` or ``https://checkout-test.adyen.com/v71``."""
        self.name = name
        self.currencies = frozenset(c.upper() for c in currencies)
        self._api_key = api_key
        self._merchant_account = merchant_account
        self._base_url = base_url.rstrip("/")
        self._timeout = (connect_timeout_s, timeout_s)
        self._pool = SdkPool(f"adyen-{name}", max_workers, executor)
        self._return_url = return_url
        self._local = threading.local()

    def __repr__(self) -> str:  # never show the key
        return f"AdyenProvider(name={self.name!r}, base_url={self._base_url!r})"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._pool.executor()

    async def close(self) -> None:
        # wait=False: a thread stuck in a read returns within the SDK timeout
        await self._pool.close(wait=False)

    def _client(self) -> Adyen.Adyen:
        """This worker thread's own SDK instance."""
        client: Adyen.Adyen | None = getattr(self._local, "client", None)
        if client is None:
            client = Adyen.Adyen(xapikey=self._api_key, platform="test",
                                 http_timeout=self._timeout, http_force="requests")
            keepalive.install(client)  # one kept connection per thread, not one per call
            client.checkout.payments_api.baseUrl = self._base_url
            client.checkout.modifications_api.baseUrl = self._base_url
            self._local.client = client
        return client

    def _in_thread(self, call: SdkCall) -> Any:
        return call(self._client()).message

    async def _call(self, call: SdkCall, *, modification: bool) -> dict[str, Any] | Refusal:
        """Run one SDK call in the pool; faults are raised, definite refusals returned."""
        try:
            body = await self._pool.run(self._in_thread, call)
        except Exception as exc:
            outcome = translate(exc, modification=modification)
            if isinstance(outcome, Refusal):
                return outcome
            raise outcome from exc
        if not isinstance(body, dict):
            raise Ambiguous("invalid_response", "Adyen answered 2xx without a JSON object")
        return body

    @staticmethod
    def _require_reference(ref: PaymentRef) -> str:
        if not ref.provider_reference:
            raise NotSent("missing_provider_reference",
                               "no Adyen pspReference known for this payment")
        return ref.provider_reference

    @staticmethod
    def _amount(value: int, currency: str) -> dict[str, Any]:
        """ISO minor units -> Adyen's ``amount`` (Adyen's decimals: :mod:`.amounts`)."""
        try:
            return {"value": to_wire(value, currency), "currency": currency.upper()}
        except (AmountError, ValueError) as exc:
            raise NotSent("invalid_amount", str(exc)) from None

    @staticmethod
    def _verify(got: Mapping[str, Any], amount: int, currency: str, what: str,
                provider_reference: str | None) -> None:
        """An answer that states an amount must state the one sent (else never success).
        Adyen's answers echo ``amount`` on modifications and partial authorizations."""
        cur = amount_currency(got)
        if cur is None:
            return
        value = iso_amount(got)
        if cur == currency.upper() and (value == amount or what == "PartiallyAuthorised"):
            return
        raise ProviderMismatch(
            f"Adyen answered {what} for {got.get('amount')!r} instead of {amount} "
            f"{currency.upper()} (ISO minor units)",
            provider_reference=provider_reference, released=False)

    # ------------------------------------------------------------ authorize / lookup

    def payment_request(self, req: AuthorizeRequest) -> dict[str, Any]:
        """The ``/payments`` body for ``req`` (public for tests and replay)."""
        body: dict[str, Any] = {
            "merchantAccount": self._merchant_account,
            "reference": req.payment_id,
            "amount": self._amount(req.amount, req.currency),
            "paymentMethod": {"type": "scheme", "storedPaymentMethodId": req.token},
            "shopperInteraction": "ContAuth",
            "recurringProcessingModel": "CardOnFile",
            "returnUrl": req.return_url or self._return_url,
        }
        if req.capture_manual:
            body["additionalData"] = {"manualCapture": "true"}
        if req.reference:
            body["merchantOrderReference"] = req.reference
        shopper = req.metadata.get("shopper_reference")
        if shopper:
            body["shopperReference"] = shopper
        if req.customer_country:
            body["countryCode"] = req.customer_country.upper()
        metadata = {k: v for k, v in req.metadata.items() if k != "shopper_reference"}
        if metadata:
            body["metadata"] = dict(list(metadata.items())[:20])  # Adyen allows 20 keys
        return body

    async def authorize(self, req: AuthorizeRequest) -> ProviderResult:
        body = self.payment_request(req)
        key = req.idempotency_key
        got = await self._call(
            lambda c: c.checkout.payments_api.payments(body, idempotency_key=key),
            modification=False)
        if isinstance(got, Refusal):
            return declined_payment(got, PaymentStatus.DECLINED)
        if "resultCode" not in got:
            raise Ambiguous("invalid_response", "Adyen /payments answer without resultCode")
        self._verify(got, req.amount, req.currency, str(got.get("resultCode")),
                     got.get("pspReference") if isinstance(got.get("pspReference"), str)
                     else None)
        return parse_payment(got, amount=req.amount, capture_manual=req.capture_manual,
                             return_url=body["returnUrl"])

    async def complete_action(self, ref: PaymentRef, returned: dict[str, str],
                              idempotency_key: str) -> ProviderResult:
        """After the shopper's redirect: ``POST /payments/details`` with
        ``{"details": {"redirectResult": ...}}``, what Adyen appended to the returnUrl
        (Checkout v71 ``PaymentDetailsRequest`` / ``PaymentCompletionDetails``). The answer
        (``PaymentDetailsResponse``: resultCode, pspReference, amount, merchantReference) is
        checked like an authorization: another pspReference, merchant reference, amount or
        currency is never a success. Without a ``redirectResult`` (the shopper has not come
        back) nothing is sent and the payment still requires action. A refusal of the
        details themselves (e.g. 422 for a redirectResult Adyen does not know) leaves the
        payment as it is (outcome DECLINED, status requires_action)."""
        redirect_result = returned.get("redirectResult")
        if not redirect_result:
            return ProviderResult(Outcome.SUCCEEDED, PaymentStatus.REQUIRES_ACTION,
                                  ref.provider_reference, None)
        body = {"details": {"redirectResult": redirect_result}}
        got = await self._call(
            lambda c: c.checkout.payments_api.payments_details(
                body, idempotency_key=idempotency_key), modification=False)
        if isinstance(got, Refusal):
            return declined_payment(got, PaymentStatus.REQUIRES_ACTION)
        if "resultCode" not in got:
            raise Ambiguous("invalid_response", "Adyen /payments/details answer without "
                            "resultCode")
        psp = got.get("pspReference") if isinstance(got.get("pspReference"), str) else None
        merchant_ref = got.get("merchantReference")
        if (psp and ref.provider_reference and psp != ref.provider_reference) or (
                isinstance(merchant_ref, str) and merchant_ref != ref.payment_id):
            raise ProviderMismatch(
                f"Adyen answered /payments/details for {psp or merchant_ref!r}, not for "
                f"{ref.provider_reference or ref.payment_id}", provider_reference=None,
                released=False)
        self._verify(got, ref.amount, ref.currency, str(got.get("resultCode")), psp)
        return parse_payment(got, amount=ref.amount, capture_manual=ref.capture_manual)

    async def lookup(
        self, ref: PaymentRef, authorize: AuthorizeRequest | None, *,
        sent_at: float | None = None, may_create: bool = True,
    ) -> ProviderResult:
        """Replay the original ``/payments`` with the same idempotency key.

        Proof (SPEC 5.1): Adyen deduplicates every POST by Idempotency-Key for at least
        31 days and answers a retry with the first response
        (``../shared/reference/providers.md`` 3.5); a request that never arrived runs now
        as the same attempt. Checkout has no GET by pspReference, so there is no lookup
        that cannot create: with ``may_create=False`` (past the replay window) this
        answers Ambiguous and the payment waits for a webhook or an operator. Adyen's
        lookup never proves absence (:class:`NotCreated`).
        """
        if not may_create:
            raise Ambiguous("replay_window_passed",
                            "Adyen can only be asked by replaying the create, which could "
                            "authorize a payment the customer gave up on")
        if authorize is None:
            raise Ambiguous("lookup_impossible",
                            "Adyen has no payment GET and no request to replay was given")
        return await self.authorize(authorize)

    # ------------------------------------------------------------ modifications

    def _modification_body(self, ref: PaymentRef, reference: str,
                           amount: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"merchantAccount": self._merchant_account,
                                "reference": reference}
        if amount is not None:
            body["amount"] = self._amount(amount, ref.currency)
        return body

    async def capture(self, ref: PaymentRef, amount: int, idempotency_key: str) -> ProviderResult:
        psp = self._require_reference(ref)
        body = self._modification_body(ref, ref.payment_id, amount)
        got = await self._call(
            lambda c: c.checkout.modifications_api.capture_authorised_payment(
                body, psp, idempotency_key=idempotency_key), modification=True)
        if isinstance(got, Refusal):
            return declined_payment(got, PaymentStatus.AUTHORIZED)
        self._verify(got, amount, ref.currency, Operation.CAPTURE, psp)
        return self._modification_result(Modification.CAPTURE, got, psp)

    async def void(self, ref: PaymentRef, idempotency_key: str) -> ProviderResult:
        psp = self._require_reference(ref)
        body = self._modification_body(ref, ref.payment_id, None)
        got = await self._call(
            lambda c: c.checkout.modifications_api.cancel_authorised_payment_by_psp_reference(
                body, psp, idempotency_key=idempotency_key), modification=True)
        if isinstance(got, Refusal):
            return declined_payment(got, PaymentStatus.AUTHORIZED)
        return self._modification_result(Modification.CANCEL, got, psp)

    async def refund(
        self, ref: PaymentRef, refund_id: str, amount: int, idempotency_key: str
    ) -> RefundResult:
        psp = self._require_reference(ref)
        body = self._modification_body(ref, refund_id, amount)
        got = await self._call(
            lambda c: c.checkout.modifications_api.refund_captured_payment(
                body, psp, idempotency_key=idempotency_key), modification=True)
        if isinstance(got, Refusal):
            return declined_refund(got)
        self._verify(got, amount, ref.currency, Operation.REFUND, psp)
        _same_payment(got, psp, "refund")
        if "status" not in got:
            raise Ambiguous("invalid_response", "Adyen refund answer without status")
        return parse_refund(got)

    @staticmethod
    def _modification_result(kind: Modification, got: Mapping[str, Any],
                             psp: str) -> ProviderResult:
        if "status" not in got:
            raise Ambiguous("invalid_response", f"Adyen {kind} answer without status")
        _same_payment(got, psp, str(kind))
        result = parse_payment_modification(kind, got, payment_psp=psp)
        if result.status is PaymentStatus.UNKNOWN:
            # unmapped (counted via status.on_unmapped): never success; the gateway
            # parks the payment in *_pending and the webhook decides
            raise Ambiguous("unmapped_status", f"unmapped {kind} status {result.raw_status!r}")
        return result
