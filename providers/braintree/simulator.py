"""Braintree XML gateway simulator: the unmodified ``braintree`` SDK works against it.

Routes (all under ``/merchants/{merchant_id}``; the route name is the operation
counted by ``GET /_sim/braintree/requests``):

    POST /transactions                               sale
    GET  /transactions/{id}                          find
    PUT  /transactions/{id}/submit_for_settlement    submit_for_settlement
    PUT  /transactions/{id}/void                     void
    POST /transactions/{id}/refund                   refund
    POST /transactions/advanced_search_ids           search_ids
    POST /transactions/advanced_search               search
    POST /settlement_batch_summary                   settlement_batch_summary
    POST /disputes/advanced_search?page=N            dispute_search
    GET  /merchant_accounts/{id}                     merchant_account_find
    GET  /merchant_accounts/?page=N                  merchant_account_list

* Auth: ``Authorization: Basic b64(public:private)``; wrong -> 401 with an empty body
  (the SDK raises AuthenticationError); another merchant id -> 403.
* Responses are XML with dashed tags. Declines: HTTP 422 ``<api-error-response>``
  holding the declined ``<transaction>``; validation errors: 422 with Braintree's
  codes (91504, 91505, 91506, 91507, 91512, 91521, 91522, 81502, 81503, 81531,
  91513, 91565); unknown transaction: 404 with an empty body.
* Idempotency by ``api_request_key`` (a body field): the same key replays the stored
  answer without acting again; the same key with other parameters -> 915232; while
  the first request still runs -> 915233. 404s are not stored.
* Settlement: a transaction submitted for settlement (and a refund) is answered as
  ``submitted_for_settlement`` and moves to ``settled`` right after the answer
  (``settle_delay_s=0``, the default) or after ``settle_delay_s`` seconds; a
  ``transaction_settled`` webhook follows when a webhook URL is configured.
  ``tok_pending`` sales stay ``authorizing`` for ``async_delay_s`` seconds.
* Search: ``order_id`` (is / is_not / starts_with / ends_with / contains), ``id``,
  ``ids``, ``status`` and ``type`` criteria; other criteria are ignored. Like
  Braintree's, the search index is eventually consistent: a transaction is found by
  ``advanced_search_ids`` / ``advanced_search`` only ``search_lag_ms`` (fault setting)
  after it was created (when the sale was processed, i.e. late under
  ``late_process``); ``find`` by id sees it at once.
* Merchant accounts (``gateway.merchant_account.find`` / ``.all``): the default account
  (id = the merchant id, currency ``default_currency``, ``default`` true), the accounts of
  ``merchant_accounts`` and, found by id only, any id ending in ``_xxx`` (currency XXX);
  all ``active``. An unknown id is 404 (the SDK's NotFoundError). The list is paginated
  like Braintree's (``current-page-number``, ``page-size``, ``total-items``).
* Settlement (:mod:`providers.braintree.sim_settlement`): a settled transaction carries
  ``settlement_batch_id`` (``<UTC day>_<merchant account>``) and ``disbursement_details``
  (disbursed the same day); ``POST /settlement_batch_summary`` answers the day's summary
  records (``settlement_batch_summary.generate``); search takes a ``settlement_batch_id``
  criterion; dispute search (``received_date`` / ``effective_date``) lists disputes;
  ``GET /_sim/braintree/settlement?date=`` serves the day's summary, settled
  transactions and disputes in one document. Braintree reports no fee per transaction.
* ``error_after_process``: the injected 5xx replaces the answer of a processed request;
  the ``api_request_key`` record keeps the real answer, so a retry with the same key
  gets the transaction that was created (Braintree binds the key to what it did).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from providers.braintree import sim_model as m
from providers.braintree import sim_settlement as sds
from providers.braintree.webhooks import FORM_CONTENT_TYPE, form_body
from providers.braintree.xml import Array, Repeated, XmlError, decode, encode
from providers.simulator import disputes as dsp
from providers.simulator import settlement as stl
from providers.simulator.idempotency import Claim, IdempotencyStore, StoredResponse
from providers.simulator.iso_units import iso_exponent
from providers.simulator.ledger import ChargeView
from providers.simulator.provider import SimulatedProvider
from providers.simulator.tokens import CardBehavior, SandboxCard, resolve_token

B = CardBehavior
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}
SANDBOX_MERCHANT_ID = "sandbox_merchant"
SANDBOX_PUBLIC_KEY = "sandbox_public_key"
SANDBOX_PRIVATE_KEY = "sandbox_private_key"
PAGE_SIZE = 50

#: Braintree's well-known sandbox nonces.
BRAINTREE_TEST_NONCES: Mapping[str, SandboxCard] = {
    "fake-valid-nonce": SandboxCard(B.APPROVE, "visa", "1881"),
    "fake-valid-visa-nonce": SandboxCard(B.APPROVE, "visa", "1881"),
    "fake-valid-mastercard-nonce": SandboxCard(B.APPROVE, "mastercard", "4444"),
    "fake-processor-declined-visa-nonce": SandboxCard(B.DECLINE, "visa", "0002"),
    "fake-processor-declined-mastercard-nonce": SandboxCard(B.DECLINE, "mastercard", "0002"),
}

_SUFFIX_CURRENCY = re.compile(r"[_-]([a-z]{3})$", re.IGNORECASE)

Result = tuple[int, str, Any]  # (HTTP status, root tag, value)
Operation = Callable[[web.Request, dict[str, Any]], Result]


class NotFound(Exception):
    """Unknown transaction: 404 with an empty body (the SDK raises NotFoundError)."""


def _xml(status: int, root: str, value: Any) -> StoredResponse:
    return StoredResponse(status, encode(root, value), dict(XML_HEADERS))


def _validation(exc: m.ValidationFailure) -> Result:
    error = {"code": exc.code, "attribute": exc.attribute, "message": exc.message}
    return 422, "api_error_response", {
        "errors": {"errors": Array("error", []),
                   exc.scope: {"errors": Array("error", [error])}},
        "message": exc.message,
    }


def _decline(txn: m.Transaction) -> Result:
    if txn.status == "gateway_rejected":
        message = f"Gateway Rejected: {txn.gateway_rejection_reason}"
    else:
        message = txn.processor_response_text or "Processor Declined"
    return 422, "api_error_response", {
        "errors": {"errors": Array("error", [])}, "message": message,
        "transaction": txn.to_xml(),
    }


def _fingerprint(request: web.Request, params: Any) -> str:
    clean = {k: v for k, v in params.items() if k != "api_request_key"} \
        if isinstance(params, dict) else params
    return json.dumps([request.method, request.path, clean], sort_keys=True, default=str)


class BraintreeSimulator(SimulatedProvider):
    name = "braintree"
    supports_search = True

    def __init__(
        self, *, merchant_id: str | None = None, public_key: str | None = None,
        private_key: str | None = None, webhook_url: str | None = None,
        webhook_secret: str | None = None, seed: int | None = None,
        settle_delay_s: float = 0.0, async_delay_s: float = 1.0,
        default_currency: str = "USD", merchant_accounts: Mapping[str, str] | None = None,
        processing_delay_s: float = 0.0,
    ) -> None:
        """``merchant_id`` / ``public_key`` / ``private_key`` = None accept any value.
        Webhooks are signed with ``public_key`` / ``private_key`` (sandbox defaults when
        None); ``webhook_secret``, if given, is used as the signing private key, like
        Braintree, which signs with the API private key. ``merchant_accounts`` maps
        merchant account id -> currency; an unlisted id ending in ``_xxx`` uses currency
        XXX; no id -> ``default_currency``."""
        super().__init__(seed=seed, webhook_url=webhook_url)
        self.merchant_id = merchant_id
        self.public_key = public_key
        self.private_key = private_key
        self.sign_public_key = public_key or SANDBOX_PUBLIC_KEY
        self.sign_private_key = webhook_secret or private_key or SANDBOX_PRIVATE_KEY
        self.settle_delay_s = settle_delay_s
        self.async_delay_s = async_delay_s
        self.default_currency = default_currency.upper()
        self.merchant_accounts = {k: v.upper() for k, v in (merchant_accounts or {}).items()}
        self.processing_delay_s = processing_delay_s
        self.transactions: dict[str, m.Transaction] = {}
        self.disputes: dict[str, m.Dispute] = {}  # by sale transaction id
        self.idempotency = IdempotencyStore()

    # ------------------------------------------------------------ framework hooks

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        base = "/merchants/{merchant_id}/transactions"
        r.add_post(base, self._api(self._sale), name="sale")
        r.add_post(base + "/advanced_search_ids", self._api(self._search_ids),
                   name="search_ids")
        r.add_post(base + "/advanced_search", self._api(self._search), name="search")
        r.add_get(base + "/{id}", self._api(self._find), name="find")
        r.add_put(base + "/{id}/submit_for_settlement", self._api(self._submit),
                  name="submit_for_settlement")
        r.add_put(base + "/{id}/void", self._api(self._void), name="void")
        r.add_post(base + "/{id}/refund", self._api(self._refund), name="refund")
        accounts = "/merchants/{merchant_id}/merchant_accounts/"
        r.add_get(accounts, self._api(self._list_accounts), name="merchant_account_list")
        r.add_get(accounts + "{id}", self._api(self._find_account),
                  name="merchant_account_find")
        r.add_post("/merchants/{merchant_id}/disputes/advanced_search",
                   self._api(self._dispute_search), name="dispute_search")
        r.add_post("/merchants/{merchant_id}/settlement_batch_summary",
                   self._api(self._settlement_batch_summary), name="settlement_batch_summary")
        r.add_route("*", "/{tail:.*}", self._unrecognized, name="unrecognized")

    def fault_response(self, status: int) -> web.Response:
        # The SDK decides by status alone (TooManyRequestsError, ServerError, ...).
        return web.Response(status=status, body=b"")

    def charges(self, reference: str) -> list[ChargeView]:
        out = []
        for txn in self.transactions.values():
            if txn.type != "sale" or txn.order_id != reference:
                continue
            captured = txn.amount if txn.status in m.CAPTURED_LIKE else 0
            out.append(ChargeView(txn.id, txn.authorized_amount, txn.currency, txn.status,
                                  captured, m.refunded_total(txn, self.transactions)))
        return out

    def reset_state(self) -> None:
        self.transactions.clear()
        self.disputes.clear()
        self.idempotency.clear()

    def dispute(self, request: dsp.DisputeRequest) -> dict[str, object]:
        """A dispute on the sale: ``open`` -> ``dispute_opened`` (status ``open``),
        ``win`` -> ``dispute_won``, ``lose`` -> ``dispute_lost``: the SDK's notification
        kinds, the subject a ``<dispute>`` as in its sample notifications."""
        ref = request.reference
        sales = [t for t in self.transactions.values()
                 if t.type == "sale" and t.order_id == ref]
        if not sales:
            raise dsp.unknown_reference(ref)
        captured = [t for t in sales if t.status in m.CAPTURED_LIKE]
        if not captured:
            raise dsp.not_captured(ref)
        txn = captured[-1]
        existing = self.disputes.get(txn.id)
        if request.action == "open":
            if existing is not None:
                raise dsp.already_disputed(ref, existing.open)
            amount = txn.amount if request.amount is None else request.amount
            if amount > txn.amount:
                raise dsp.too_large(amount, txn.amount)
            existing = self.disputes[txn.id] = m.Dispute(m.new_id(), amount, txn)
            kind = "dispute_opened"
        else:
            if existing is None or not existing.open:
                raise dsp.no_open_dispute(ref)
            existing.set_status("won" if request.action == "win" else "lost")
            kind = "dispute_won" if request.action == "win" else "dispute_lost"
        if self.webhooks.enabled:
            body = form_body(self.sign_public_key, self.sign_private_key, kind,
                             {"dispute": existing.to_xml()})
            self.webhooks.send(body, {"Content-Type": FORM_CONTENT_TYPE})
        return {"dispute": {"id": existing.id, "status": existing.status,
                            "amount": existing.amount, "currency": txn.currency,
                            "transaction_id": txn.id}, "kind": kind}

    async def close(self) -> None:
        self.reset_state()
        await super().close()

    # ------------------------------------------------------------ settlement

    def settlement_payout_id(self, day: dt.date, currency: str, account: str) -> str:
        return sds.payout_id(day, currency, account)

    def _record_settled(self, txn: m.Transaction) -> None:
        """A settled sale (capture) or credit (refund) joins its day's batch."""
        sale = txn.type == "sale"
        self.settlement.record(stl.Movement(
            line_id=txn.id, alt_line_id=m.new_id(), kind="capture" if sale else "refund",
            reference=txn.order_id,
            payment_id=txn.id if sale else txn.refunded_transaction_id or txn.id,
            currency=txn.currency, account=txn.merchant_account_id,
            amount=txn.amount if sale else -txn.amount, refund_id=None if sale else txn.id,
            at=txn.settled_at or stl.utc_now(), data={"txn": txn.id}))

    def _line_transaction(self, line: stl.DayLine) -> m.Transaction:
        return self.transactions[line.movement.data["txn"]]

    def settlement_report(self, day: dt.date) -> tuple[bytes, str]:
        body = sds.document(self.settlement.day(day), self._line_transaction,
                            self.disputes.values())
        return body, XML_HEADERS["Content-Type"]

    def settlement_fault(self, fault: stl.SettlementFault) -> dict[str, object]:
        """Braintree reports no fee per transaction: ``fee_changed`` has nothing to change."""
        if fault.kind == "fee_changed" and self.charges(fault.reference):
            raise stl.SettlementRefused(409, "fees_not_reported",
                                        "Braintree reports no per-transaction fee: a "
                                        "fee_changed fault has nothing to change",
                                        "kind")
        return super().settlement_fault(fault)

    def _batch_transactions(self, criterion: Any) -> list[dict[str, Any]]:
        """Search by ``settlement_batch_id`` (``is`` / ``starts_with`` / ...): the
        batches' transactions as the settlement shows them."""
        out = []
        for day in self.settlement.days():
            for line in self.settlement.day(day).lines:
                txn = self._line_transaction(line)
                if self._text_match(f"{day.isoformat()}_{txn.merchant_account_id}",
                                    criterion):
                    out.append(sds.transaction_xml(line, txn))
        return out

    def _dispute_search(self, request: web.Request, params: dict[str, Any]) -> Result:
        """``dispute.search`` (``POST /disputes/advanced_search?page=N``): the range
        criteria ``received_date`` and ``effective_date`` (a status history entry
        effective in the range), ``{"min", "max"}`` as dates; others are ignored. Pages of
        :data:`PAGE_SIZE`, newest first."""
        criteria = params if isinstance(params, dict) else {}

        def within(day: dt.date, crit: Any) -> bool:
            if not isinstance(crit, dict):
                return True
            bounds = {k: str(v)[:10] for k, v in crit.items() if k in ("min", "max", "is")}
            try:
                parsed = {k: dt.date.fromisoformat(v) for k, v in bounds.items()}
            except ValueError:
                raise m.ValidationFailure("97101", "Search criteria are invalid.",
                                          "search", "dispute") from None
            return (day >= parsed.get("min", day) and day <= parsed.get("max", day)
                    and day == parsed.get("is", day))

        found = [d for d in reversed(self.disputes.values())
                 if within(d.created_at.date(), criteria.get("received_date"))
                 and ("effective_date" not in criteria
                      or any(within(ts.date(), criteria["effective_date"])
                             for _, ts in d.history))]
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        chunk = found[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
        return 200, "disputes", {
            "current_page_number": page, "page_size": PAGE_SIZE, "total_items": len(found),
            "dispute": Repeated([d.to_xml() for d in chunk])}

    def _settlement_batch_summary(self, request: web.Request, params: dict[str, Any]
                                  ) -> Result:
        """``settlement_batch_summary.generate(settlement_date)`` (82301 required, 82302
        invalid; ``group_by_custom_field`` is accepted, the simulator keeps no custom
        fields)."""
        raw = params.get("settlement_date") if isinstance(params, dict) else None
        if not isinstance(raw, str) or not raw:
            raise m.ValidationFailure("82301", "Settlement Date is required",
                                      "settlement_date", "settlement_batch_summary")
        try:
            day = dt.date.fromisoformat(raw.strip())
        except ValueError:
            raise m.ValidationFailure("82302", "Settlement Date is invalid",
                                      "settlement_date", "settlement_batch_summary") from None
        records = sds.records(self.settlement.day(day).lines, self._line_transaction)
        return 200, "settlement_batch_summary", {"records": Array("record", records)}

    # ------------------------------------------------------------ request plumbing

    def _auth_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        public = private = ""
        if header.startswith("Basic "):
            try:
                public, _, private = base64.b64decode(header[6:], validate=True).decode(
                    ).partition(":")
            except (binascii.Error, UnicodeDecodeError):
                public = private = ""
        ok = bool(public and private)
        if ok and self.public_key is not None:
            ok = hmac.compare_digest(public, self.public_key)
        if ok and self.private_key is not None:
            ok = hmac.compare_digest(private, self.private_key)
        if not ok:
            return web.Response(status=401, body=b"")
        merchant = request.match_info.get("merchant_id", "")
        if self.merchant_id is not None and merchant != self.merchant_id:
            return web.Response(status=403, body=b"")
        return None

    def _api(self, op: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if (denied := self._auth_error(request)) is not None:
                return denied
            try:
                root, params = decode(await request.read())
            except XmlError as exc:
                return web.Response(status=400, text=str(exc))
            if not isinstance(params, dict):
                params = {}
            key = params.get("api_request_key") if root == "transaction" else None
            key = key if isinstance(key, str) and key else None
            scope = f"{request.match_info.get('merchant_id', '')}\x00{key}"
            if key is not None:
                claim = self.idempotency.claim(scope, _fingerprint(request, params))
                if claim.claim is Claim.REPLAY and claim.stored is not None:
                    return web.Response(body=claim.stored.body, status=claim.stored.status,
                                        headers=claim.stored.headers)
                if claim.claim in (Claim.MISMATCH, Claim.IN_FLIGHT):
                    code, message = (
                        ("915232", "API request key can be reused only with the same "
                                   "request.") if claim.claim is Claim.MISMATCH else
                        ("915233", "A request with this API request key is in flight; "
                                   "retry later."))
                    failure = m.ValidationFailure(code, message, "api_request_key")
                    stored = _xml(*_validation(failure))
                    return web.Response(body=stored.body, status=stored.status,
                                        headers=stored.headers)
            stored_response: StoredResponse | None = None
            try:
                if self.processing_delay_s:
                    await asyncio.sleep(self.processing_delay_s)
                try:
                    stored_response = _xml(*op(request, params))
                except m.ValidationFailure as exc:
                    stored_response = _xml(*_validation(exc))
                except NotFound:
                    return web.Response(status=404, body=b"")
            finally:
                if key is not None:
                    self.idempotency.finish(scope, stored_response)
            return web.Response(body=stored_response.body, status=stored_response.status,
                                headers=stored_response.headers)
        return handler

    async def _unrecognized(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        return web.Response(status=404, body=b"")

    def _txn(self, request: web.Request) -> m.Transaction:
        txn = self.transactions.get(request.match_info["id"])
        if txn is None:
            raise NotFound(request.match_info["id"])
        return txn

    def _currency_of(self, account: str | None, merchant: str | None = None) -> str:
        """The currency of the merchant account used (Braintree's sale has no currency
        field); an account whose currency ISO 4217 gives no decimals is invalid.
        ``merchant``: the merchant id of the request (the default account's id)."""
        if not account or account == (self.merchant_id or merchant):
            currency: str | None = self.default_currency
        elif account in self.merchant_accounts:
            currency = self.merchant_accounts[account]
        else:
            match = _SUFFIX_CURRENCY.search(account)
            currency = match.group(1).upper() if match else None
        if currency is None or iso_exponent(currency) is None:
            raise m.ValidationFailure("91513", "Merchant account ID is invalid.",
                                      "merchant_account_id")
        return currency

    # ------------------------------------------------------------ timers & webhooks

    def _notify(self, kind: str, txn: m.Transaction) -> None:
        if not self.webhooks.enabled:
            return
        body = form_body(self.sign_public_key, self.sign_private_key, kind,
                         {"transaction": txn.to_xml()})
        self.webhooks.send(body, {"Content-Type": FORM_CONTENT_TYPE})

    def _settle_now(self, txn_id: str) -> None:
        txn = self.transactions.get(txn_id)
        if txn is not None and m.settle(txn):
            self._record_settled(txn)
            self._notify("transaction_settled", txn)

    def _schedule_settle(self, txn: m.Transaction) -> None:
        if txn.status != "submitted_for_settlement":
            return
        if self.settle_delay_s <= 0:
            self._settle_now(txn.id)
        else:
            self.later(self.settle_delay_s, lambda: self._settle_now(txn.id))

    def _complete(self, txn_id: str, submit: bool) -> None:
        txn = self.transactions.get(txn_id)
        if txn is not None and m.complete_authorization(txn, submit):
            self._schedule_settle(txn)

    # ------------------------------------------------------------ operations

    def _sale(self, request: web.Request, params: dict[str, Any]) -> Result:
        if params.get("type", "sale") != "sale":
            raise m.ValidationFailure("91523", "Transaction type is invalid.", "type")
        account = params.get("merchant_account_id")
        account = account if isinstance(account, str) and account else None
        currency = self._currency_of(account, request.match_info.get("merchant_id"))
        amount = m.parse_amount(params.get("amount"), currency, required=True)
        assert amount is not None
        order_id = params.get("order_id")
        order_id = order_id if isinstance(order_id, str) and order_id else None
        if order_id is not None and len(order_id) > 255:
            raise m.ValidationFailure("91501", "Order ID is too long.", "order_id")
        nonce = params.get("payment_method_nonce")
        card = resolve_token(nonce if isinstance(nonce, str) else None, BRAINTREE_TEST_NONCES)
        if card is None:
            raise m.ValidationFailure("91565", "Unknown or expired payment_method_nonce.",
                                      "payment_method_nonce")
        options = params.get("options")
        submit = isinstance(options, dict) and options.get("submit_for_settlement") is True
        txn = m.sale(amount=amount, currency=currency,
                     merchant_account_id=account or f"{(self.merchant_id or 'sandbox')}_"
                     f"{currency.lower()}", order_id=order_id, card=card)
        self.transactions[txn.id] = txn
        if txn.declined:
            return _decline(txn)
        if txn.status == "authorizing":
            self.later(self.async_delay_s, lambda: self._complete(txn.id, submit))
            return 201, "transaction", txn.to_xml()
        if submit:
            txn.set_status("submitted_for_settlement")
        body = txn.to_xml()
        self._schedule_settle(txn)
        return 201, "transaction", body

    def _account(self, account_id: str, currency: str, default: bool) -> dict[str, Any]:
        return {"id": account_id, "currency_iso_code": currency, "status": "active",
                "default": default}

    def _find_account(self, request: web.Request, params: dict[str, Any]) -> Result:
        account_id = request.match_info["id"]
        merchant = request.match_info["merchant_id"]
        try:
            currency = self._currency_of(account_id, merchant)
        except m.ValidationFailure:
            raise NotFound(account_id) from None
        default = account_id == (self.merchant_id or merchant)
        return 200, "merchant_account", self._account(account_id, currency, default)

    def _list_accounts(self, request: web.Request, params: dict[str, Any]) -> Result:
        merchant = self.merchant_id or request.match_info["merchant_id"]
        accounts = [self._account(merchant, self.default_currency, True)]
        accounts += [self._account(a, c, False) for a, c in self.merchant_accounts.items()
                     if a != merchant]
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        chunk = accounts[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
        return 200, "merchant_accounts", {
            "current_page_number": page, "page_size": PAGE_SIZE, "total_items": len(accounts),
            "merchant_account": Repeated(chunk),
        }

    def _find(self, request: web.Request, params: dict[str, Any]) -> Result:
        return 200, "transaction", self._txn(request).to_xml()

    def _submit(self, request: web.Request, params: dict[str, Any]) -> Result:
        txn = self._txn(request)
        amount = m.parse_amount(params.get("amount"), txn.currency, required=False)
        m.submit_for_settlement(txn, amount)
        body = txn.to_xml()
        self._schedule_settle(txn)
        return 200, "transaction", body

    def _void(self, request: web.Request, params: dict[str, Any]) -> Result:
        txn = self._txn(request)
        m.void(txn)
        return 200, "transaction", txn.to_xml()

    def _refund(self, request: web.Request, params: dict[str, Any]) -> Result:
        txn = self._txn(request)
        amount = m.parse_amount(params.get("amount"), txn.currency, required=False)
        credit = m.refund(txn, amount, self.transactions)
        self.transactions[credit.id] = credit
        body = credit.to_xml()
        self._schedule_settle(credit)
        return 201, "transaction", body

    # ------------------------------------------------------------ search

    @staticmethod
    def _text_match(value: str | None, crit: Any) -> bool:
        if not isinstance(crit, dict):
            return True
        v = value or ""
        checks = {
            "is": lambda x: v == x, "is_not": lambda x: v != x,
            "starts_with": lambda x: v.startswith(x), "ends_with": lambda x: v.endswith(x),
            "contains": lambda x: x in v,
        }
        return all(checks[op](str(arg)) for op, arg in crit.items() if op in checks)

    def _matches(self, txn: m.Transaction, criteria: dict[str, Any]) -> bool:
        if "order_id" in criteria and not self._text_match(txn.order_id, criteria["order_id"]):
            return False
        if "id" in criteria and not self._text_match(txn.id, criteria["id"]):
            return False
        for key, attr in (("ids", txn.id), ("status", txn.status), ("type", txn.type)):
            wanted = criteria.get(key)
            if isinstance(wanted, str):
                wanted = [wanted]
            if isinstance(wanted, list) and attr not in wanted:
                return False
        return True

    def _found(self, params: dict[str, Any]) -> list[m.Transaction]:
        criteria = params if isinstance(params, dict) else {}
        return [t for t in self.transactions.values()
                if self.searchable(t.created_monotonic) and self._matches(t, criteria)]

    def _search_ids(self, request: web.Request, params: dict[str, Any]) -> Result:
        if isinstance(params, dict) and "settlement_batch_id" in params:
            ids = [t["id"] for t in self._batch_transactions(params["settlement_batch_id"])]
            return 200, "search_results", {"page_size": PAGE_SIZE, "ids": Array("item", ids)}
        ids = [t.id for t in self._found(params)]
        return 200, "search_results", {"page_size": PAGE_SIZE, "ids": Array("item", ids)}

    def _search(self, request: web.Request, params: dict[str, Any]) -> Result:
        if isinstance(params, dict) and "settlement_batch_id" in params:
            batch = self._batch_transactions(params["settlement_batch_id"])
            return 200, "credit_card_transactions", {
                "current_page_number": 1, "page_size": PAGE_SIZE, "total_items": len(batch),
                "transaction": Repeated(batch)}
        found = self._found(params)
        return 200, "credit_card_transactions", {
            "current_page_number": 1, "page_size": PAGE_SIZE, "total_items": len(found),
            "transaction": Repeated([t.to_xml() for t in found]),
        }

