"""Braintree adapter: the official synchronous ``braintree`` SDK behind :class:`Provider`.

Every SDK call runs in a bounded thread pool owned by the adapter (created in
:meth:`start`, shut down in :meth:`close`) or in an executor the caller passes in --
never on the event loop. The SDK keeps one ``requests`` session per thread.

* amounts: minor units <-> decimal strings by currency exponent (:mod:`.amounts`);
* currency: a sale has no currency field: Braintree charges in the currency of the
  merchant account used, and without ``merchant_account_id`` in the default account's.
  So ``merchant_account_ids`` maps currency -> merchant account id, and
  ``default_currency`` declares the default account's currency; a currency with neither
  is refused before anything is sent (RejectedSafe ``currency_not_configured``; the
  config check rejects such a provider at start);
* every answer is checked against what was sent: a sale in another currency or for
  another amount is voided at once and raised as :class:`ProviderMismatch` (never a
  success);
* idempotency: ``api_request_key`` = the gateway's per-attempt idempotency key on
  sale, submit_for_settlement, void and refund; because its deduplication on the XML
  gateway is unverified, the gateway never retries a sale or a refund here
  (``retries_deduplicated = False``): one send, then a lookup;
* lookup: ``find(id)``; without an id (lost response) a search by ``order_id`` (= the
  gateway payment id): one -> its state, several -> Ambiguous, none -> see "proof";
* proof that nothing was created (SPEC 5.1): Braintree's XML gateway has no verified
  deduplicating replay (``api_request_key`` is documented as GraphQL-only,
  ``../shared/reference/providers.md`` 2.5) and its search is eventually consistent, while
  a sale that timed out on our side may still be processed (Braintree publishes no
  server-side deadline; the SDK's own default timeout is 60 s). So a search that finds
  nothing proves nothing unless it is made ``lookup_proof_after_s`` (default 300 s: the
  SDK's 60 s request lifetime plus a generous allowance for search indexing lag) after
  the sale was first sent; before that it is Ambiguous ``not_visible_yet`` and the
  payment stays ``unknown`` (never fails over) until reconciliation looks again;
* outcomes: exceptions -> :mod:`.errors` (never a decline); results -> :mod:`.parse`.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import braintree

from providers import sdk_pool
from providers.base import (
    Ambiguous,
    AuthorizeRequest,
    NotCreated,
    NotSent,
    PaymentRef,
    Provider,
    ProviderFault,
    ProviderMismatch,
    ProviderResult,
    RefundResult,
)
from providers.braintree.amounts import AmountError, to_decimal_string, to_minor_units
from providers.braintree.errors import translate
from providers.braintree.parse import (
    parse_payment_result,
    parse_refund_result,
    parse_refund_transaction,
    parse_transaction,
)
from providers.sdk_pool import SdkPool

T = TypeVar("T")
DEFAULT_WORKERS = sdk_pool.DEFAULT_THREADS
#: Most transactions a search by order_id may return before we stop reading.
SEARCH_LIMIT = 10
#: Transaction statuses a void releases (an authorization not yet settled).
VOIDABLE = frozenset({"authorized", "authorizing", "submitted_for_settlement"})
#: Seconds after a sale was first sent before an empty search proves it created nothing.
DEFAULT_LOOKUP_PROOF_AFTER_S = 300.0



def _same_transaction(txn: Any, txn_id: str, call: str) -> Any:
    """``txn`` when it is the transaction ``txn_id`` the call named; an answer about
    another one proves nothing about ours (integration fault, never a status)."""
    if txn is not None and getattr(txn, "id", None) != txn_id:
        raise Ambiguous("invalid_response", f"{call} of {txn_id}: Braintree answered about "
                        f"{getattr(txn, 'id', None)!r}")
    return txn

class _Environment(braintree.Environment):
    """A custom environment whose protocol follows the URL scheme, not the port."""

    def __init__(self, scheme: str, host: str, port: str) -> None:
        super().__init__("custom", host, port, f"{scheme}://{host}", scheme == "https",
                         True if scheme == "https" else None)
        self._scheme = scheme

    @property
    def protocol(self) -> str:
        return f"{self._scheme}://"


def make_environment(base_url: str) -> braintree.Environment:
    """``http://127.0.0.1:8081`` -> an Environment the SDK sends to (port as a str)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be http(s)://host[:port], got {base_url!r}")
    if parts.path not in ("", "/"):
        raise ValueError("the Braintree SDK cannot use a path prefix in base_url")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return _Environment(parts.scheme, host, str(port))


class BraintreeProvider(Provider):
    type = "braintree"
    # The XML gateway's api_request_key deduplication is unverified
    # (../shared/reference/providers.md 2.5): a retried sale or refund could be a second one.
    retries_deduplicated = False

    def __init__(
        self, name: str, *, merchant_id: str, public_key: str, private_key: str,
        base_url: str, currencies: frozenset[str], timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0, executor: concurrent.futures.Executor | None = None,
        merchant_account_ids: dict[str, str] | None = None,
        lookup_proof_after_s: float = DEFAULT_LOOKUP_PROOF_AFTER_S,
        default_currency: str | None = None, max_workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.name = name
        self.default_currency = default_currency.upper() if default_currency else None
        self.lookup_proof_after_s = float(lookup_proof_after_s)
        self.currencies = frozenset(c.upper() for c in currencies)
        self._base_url = base_url.rstrip("/")
        self._merchant_accounts = {k.upper(): v for k, v in (merchant_account_ids or {}).items()}
        self._pool = SdkPool(f"braintree-{name}", max_workers, executor)
        self._config = braintree.Configuration(
            environment=make_environment(self._base_url), merchant_id=merchant_id,
            public_key=public_key, private_key=private_key,
            timeout=(connect_timeout_s, timeout_s), wrap_http_exceptions=True,
        )
        self._gateway = braintree.BraintreeGateway(self._config)

    def __repr__(self) -> str:  # never show the keys
        return f"BraintreeProvider(name={self.name!r}, base_url={self._base_url!r})"

    @property
    def gateway(self) -> braintree.BraintreeGateway:
        """The SDK gateway (e.g. ``gateway.webhook_notification.parse`` for webhooks)."""
        return self._gateway

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._pool.executor()

    async def close(self) -> None:
        # Threads stuck in a request end at the SDK timeout; waited for off the loop.
        await self._pool.close(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one SDK call in the pool; every exception becomes a fault."""
        try:
            return await self._pool.run(fn, *args)
        except Exception as exc:
            raise translate(exc) from exc

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _amount(amount: int, currency: str) -> str:
        try:
            return to_decimal_string(amount, currency)
        except AmountError as exc:
            raise NotSent("invalid_amount", str(exc)) from None

    @staticmethod
    def _require_reference(ref: PaymentRef) -> str:
        if not ref.provider_reference:
            raise NotSent("missing_provider_reference",
                               "no Braintree transaction id known for this payment")
        return ref.provider_reference

    def _sale_params(self, req: AuthorizeRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "amount": self._amount(req.amount, req.currency),
            "payment_method_nonce": req.token,
            "order_id": req.payment_id,
            "options": {"submit_for_settlement": not req.capture_manual},
            "api_request_key": req.idempotency_key,
        }
        account = self._merchant_accounts.get(req.currency.upper())
        if account:
            params["merchant_account_id"] = account
        elif req.currency.upper() != self.default_currency:
            raise NotSent("currency_not_configured",
                               f"no Braintree merchant account for {req.currency.upper()} "
                               "(and it is not the declared default_currency)")
        return params

    # ------------------------------------------------------------ operations

    async def authorize(self, req: AuthorizeRequest) -> ProviderResult:
        params = self._sale_params(req)
        result = await self._run(self._gateway.transaction.sale, params)
        if getattr(result, "is_success", False):
            await self._verify(getattr(result, "transaction", None), req.amount, req.currency,
                               release=True)
        return parse_payment_result(result, authorize=True, currency=req.currency)

    async def _verify(self, txn: Any, amount: int | None, currency: str, *,
                      release: bool = False) -> None:
        """The transaction must be in ``currency`` (and for ``amount`` when given);
        otherwise raise :class:`ProviderMismatch` (never a success), after voiding the
        transaction when ``release`` (a fresh sale)."""
        if txn is None:
            return
        own = getattr(txn, "currency_iso_code", None)
        raw_amount = getattr(txn, "amount", None)
        problems = []
        if isinstance(own, str) and own.upper() != currency.upper():
            # one problem: in another currency the amount cannot be compared at all
            problems.append(f"currency {own.upper()} instead of {currency.upper()}")
        elif amount is not None and raw_amount is not None and isinstance(own, str):
            try:
                got = to_minor_units(raw_amount, own)
            except AmountError:
                got = None
            if got != amount:
                problems.append(f"amount {raw_amount} {own.upper()} for "
                                f"{to_decimal_string(amount, currency)} {currency.upper()}")
        if not problems:
            return
        txn_id = getattr(txn, "id", None)
        released = False
        if release and isinstance(txn_id, str) and getattr(txn, "status", None) in VOIDABLE:
            try:
                voided = await self._run(self._gateway.transaction.void, txn_id)
                released = bool(getattr(voided, "is_success", False))
            except ProviderFault:
                released = False
        raise ProviderMismatch(
            f"Braintree answered {'; '.join(dict.fromkeys(problems))}"
            + ("; the transaction was voided" if released else
               "; the transaction could not be voided"),
            provider_reference=txn_id if isinstance(txn_id, str) else None, released=released)

    async def capture(self, ref: PaymentRef, amount: int, idempotency_key: str) -> ProviderResult:
        txn_id = self._require_reference(ref)
        result = await self._run(
            self._gateway.transaction.submit_for_settlement, txn_id,
            self._amount(amount, ref.currency), {"api_request_key": idempotency_key})
        if getattr(result, "is_success", False):
            txn = _same_transaction(getattr(result, "transaction", None), txn_id, "capture")
            await self._verify(txn, amount, ref.currency)
        return parse_payment_result(result, authorize=False, currency=ref.currency)

    async def void(self, ref: PaymentRef, idempotency_key: str) -> ProviderResult:
        txn_id = self._require_reference(ref)
        result = await self._run(self._gateway.transaction.void, txn_id,
                                 {"api_request_key": idempotency_key})
        if getattr(result, "is_success", False):
            txn = _same_transaction(getattr(result, "transaction", None), txn_id, "void")
            await self._verify(txn, None, ref.currency)
        return parse_payment_result(result, authorize=False, currency=ref.currency)

    async def refund(
        self, ref: PaymentRef, refund_id: str, amount: int, idempotency_key: str
    ) -> RefundResult:
        txn_id = self._require_reference(ref)
        options = {"amount": self._amount(amount, ref.currency),
                   "api_request_key": idempotency_key}
        result = await self._run(self._gateway.transaction.refund, txn_id, options)
        if getattr(result, "is_success", False):
            credit = getattr(result, "transaction", None)
            refunded = getattr(credit, "refunded_transaction_id", None)
            if credit is not None and refunded != txn_id:
                raise Ambiguous("invalid_response", f"refund of {txn_id}: Braintree answered "
                                f"a refund of {refunded!r}")
            await self._verify(credit, amount, ref.currency)
        return parse_refund_result(result)

    async def retrieve_refund(self, refund_reference: str) -> RefundResult:
        """Current state of a refund (its credit transaction), for reconciliation."""
        txn = await self._run(self._gateway.transaction.find, refund_reference)
        return parse_refund_transaction(txn)

    def _search_order(self, payment_id: str) -> list[Any]:
        """Runs in the pool: sale transactions whose order_id is ``payment_id``."""
        search = braintree.TransactionSearch
        collection = self._gateway.transaction.search(search.order_id == payment_id)
        found: list[Any] = []
        for txn in collection.items:
            is_sale = getattr(txn, "type", "sale") != "credit"
            if is_sale and getattr(txn, "order_id", None) == payment_id:
                found.append(txn)
            if len(found) > SEARCH_LIMIT:
                break
        return found

    async def lookup(
        self, ref: PaymentRef, authorize: AuthorizeRequest | None, *,
        sent_at: float | None = None, may_create: bool = True,
    ) -> ProviderResult:
        """``find`` by id, else search by order id (never creates: ``may_create`` is moot).
        An empty search is :class:`NotCreated` only ``lookup_proof_after_s`` after
        ``sent_at``; earlier (or with ``sent_at`` unknown) it proves nothing."""
        if ref.provider_reference:
            txn = await self._run(self._gateway.transaction.find, ref.provider_reference)
            txn = _same_transaction(txn, ref.provider_reference, "find")
            await self._verify(txn, None, ref.currency)
            return parse_transaction(txn, ref.currency)
        found = await self._run(self._search_order, ref.payment_id)
        if len(found) > 1:
            raise Ambiguous("multiple_transactions",
                            f"{len(found)} Braintree transactions with order_id "
                            f"{ref.payment_id}")
        if found:
            await self._verify(found[0], None, ref.currency)
            return parse_transaction(found[0], ref.currency)
        if sent_at is not None and time.time() >= sent_at + self.lookup_proof_after_s:
            raise NotCreated(f"no Braintree transaction with order_id {ref.payment_id} "
                             f"{self.lookup_proof_after_s:g} s after the sale was sent")
        raise Ambiguous(Ambiguous.NOT_VISIBLE_YET,
                        f"no Braintree transaction with order_id {ref.payment_id} yet; the "
                        "sale may still be processed or not yet searchable")
