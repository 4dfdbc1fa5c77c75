"""Merchant API v1 handlers: /v1/payments (create, search and list) and its follow-ups."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import confirm, logs, three_ds
from gateway.api import validation
from gateway.api.auth import authenticate_merchant
from gateway.api.errors import ApiError, not_found
from gateway.appkeys import CONFIG, ORCHESTRATOR, PUBLIC_URL, STORE
from gateway.idempotency import Execution, Outcome, fingerprint, require_key, run_idempotent
from gateway.model import audit, derived_id, new_payment
from gateway.orchestrator import OperationError
from gateway.payment_types import Payment
from gateway.payment_writer import PaymentMissing
from gateway.store import AlreadyExists, PaymentSearch
from gateway.store.base import PaymentInsert, search_fields
from routing.select import ExclusionKind

routes = web.RouteTableDef()


async def _owned_payment(request: web.Request, merchant_id: str) -> dict[str, Any]:
    doc = await request.app[STORE].get_payment(request.match_info["payment_id"])
    if doc is None or doc["merchant_id"] != merchant_id:
        raise not_found()
    logs.payment_id_var.set(doc["id"])
    return doc


def _payment_response(status: int, doc: dict[str, Any], replayed: bool) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return web.json_response(Payment.public_of(doc), status=status, headers=headers)


def _operation_error(exc: OperationError) -> ApiError:
    headers = {"Retry-After": "5"} if exc.http_status == 503 else None
    return ApiError(exc.http_status, exc.type, exc.code, exc.message, param=exc.param,
                    headers=headers)


async def _idempotent_post(
    request: web.Request, merchant_id: str, body: dict[str, Any], execute,
    create: Callable[[str, str], tuple[PaymentInsert | None, str]] | None = None,
    answer: tuple[int, str] | None = None,
) -> web.Response:
    """``create(key, fingerprint)``: the new payment this request creates, written with
    the idempotency claim (None: nothing is), and its id; its answer (201) is stored
    with the request's last write (:func:`gateway.idempotency.run_idempotent`).
    ``answer``: (status, payment id) of a follow-up's success, likewise."""
    config, store = request.app[CONFIG], request.app[STORE]
    key = require_key(request.headers.get("Idempotency-Key"))
    fp = fingerprint(request.method, request.path, body)
    prepare: Callable[[], PaymentInsert | None] | None = None
    if create is not None:
        insert, payment_id = create(key, fp)
        prepare, answer = (lambda: insert), (201, payment_id)

    async def replay(response: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "error" in response:
            return response["status"], response["error"]
        doc = await store.get_payment(response["payment_id"])
        if doc is None:  # pragma: no cover - payments are never deleted
            raise not_found()
        return response["status"], Payment.public_of(doc)

    async def guarded(ex: Execution) -> Outcome:
        try:
            return await execute(ex)
        except OperationError as exc:
            raise _operation_error(exc) from None
        except PaymentMissing:
            raise not_found() from None

    status, result, replayed = await run_idempotent(
        store, (merchant_id, key, fp), config.request_deadline_s, config.idempotency_ttl_s,
        guarded, replay, prepare, answer,
    )
    if isinstance(result, Outcome):
        doc = result.payment or await store.get_payment(result.payment_id)
        assert doc is not None
        return _payment_response(status, doc, replayed)
    headers = {"Idempotent-Replayed": "true"}
    return web.json_response(result, status=status, headers=headers)


def _refuse_unchargeable(doc: dict[str, Any]) -> None:
    """No candidate can charge this currency, or this amount exactly: a 400 before
    anything is stored (never a 201 ``failed``, never a rounded amount)."""
    if doc["_candidates"]:
        return
    reasons = [f"{name}: {why}" for name, why, _kind in doc["_excluded"]]
    kinds = [ExclusionKind(kind) for _name, _why, kind in doc["_excluded"]]
    if ExclusionKind.THREE_DS_UNSUPPORTED in kinds:
        raise ApiError(400, "invalid_request", "three_d_secure_not_supported",
                       "the payment method needs 3-D Secure and no provider for this payment "
                       f"can complete a challenge ({'; '.join(reasons)})",
                       param="payment_method.three_d_secure")
    amount = [k for k in kinds if k is ExclusionKind.AMOUNT_NOT_REPRESENTABLE]
    currency = [k for k in kinds if k is ExclusionKind.CURRENCY]
    tokens = [k for k in kinds if k is ExclusionKind.NO_TOKEN]
    if not amount and (not currency or len(currency) + len(tokens) < len(reasons)):
        return  # other reasons (configuration): the payment fails as before
    if amount:
        raise ApiError(400, "invalid_request", "amount_not_representable",
                       f"no provider for this payment can charge {doc['amount']} "
                       f"{doc['currency']} exactly ({'; '.join(reasons)})", param="amount")
    raise ApiError(400, "invalid_request", "currency_not_supported",
                   f"no provider for this payment supports {doc['currency']}",
                   param="currency")


def _public_base(request: web.Request) -> str:
    """The gateway's own URL as customers' browsers reach it: the configured public URL,
    else the origin this request came to."""
    return request.app.get(PUBLIC_URL) or f"{request.scheme}://{request.host}"


@routes.post("/v1/payments")
async def create_payment(request: web.Request) -> web.Response:
    config, store, orch = request.app[CONFIG], request.app[STORE], request.app[ORCHESTRATOR]
    merchant_id = authenticate_merchant(request, config)
    body = validation.parse_json_body(await request.read())
    body = validation.validate_create(body)
    new: dict[str, Any] = {}

    def create(key: str, fp: str) -> tuple[PaymentInsert | None, str]:
        """The payment and its first attempt (the write-ahead record), built before the
        claim so that the claim writes them (one store write before the provider call)."""
        payment_id = derived_id("pay_", merchant_id, key)
        doc = new_payment(payment_id, merchant_id, body, fp)
        three_ds.prepare(doc, body, _public_base(request),
                         config.reconciliation.action_window_s)
        orch.route(doc, body)
        new["doc"] = doc
        try:
            _refuse_unchargeable(doc)
        except ApiError as refusal:  # answered after the claim, as a 400 (nothing stored)
            new["refusal"] = refusal
            return None, payment_id
        events = [audit("payment_created", "merchant", amount=doc["amount"],
                        currency=doc["currency"]), *orch.begin_first_attempt(doc)]
        new["insert"] = orch.writer.new_payment(doc, events)
        return new["insert"], payment_id

    async def execute(ex: Execution) -> Outcome:
        doc = new["doc"]
        payment_id = doc["id"]
        logs.payment_id_var.set(payment_id)
        if "refusal" in new:
            raise new["refusal"]
        if ex.created:  # written with the claim: the first attempt is begun
            return Outcome(201, payment_id, await orch.authorize(
                doc, begun=True, completion=ex.completion))
        existing = await store.get_payment(payment_id)
        if existing is None:  # pragma: no cover - the claim inserts unless it exists
            try:
                await store.insert_payment(doc, new["insert"].events)
            except AlreadyExists:
                existing = await store.get_payment(payment_id)
            else:
                return Outcome(201, payment_id, await orch.authorize(
                    doc, begun=True, completion=ex.completion))
        assert existing is not None
        if existing["_fingerprint"] != ex.fingerprint:
            raise ApiError(422, "idempotency_conflict", "idempotency_key_reused",
                           "this Idempotency-Key was used with a different request",
                           param="Idempotency-Key") from None
        # An earlier request with this key crashed (or its record expired): never
        # start a second authorization; bring the recorded payment up to date.
        return Outcome(201, payment_id, await orch.resolve(existing))

    return await _idempotent_post(request, merchant_id, body, execute, create)


@routes.get("/v1/payments")
async def list_payments(request: web.Request) -> web.Response:
    """Search and list (SPEC 3.1): the merchant's payments, newest first (created_at, then
    id, both descending), each the same payment object GET /v1/payments/{id} answers.

    ``starting_after`` continues strictly after that payment's (created_at, id), so pages
    neither repeat nor skip while payments are created (new ones are newer: page 1 only).
    An unknown id, or another merchant's, is a 400 ``resource_missing`` with
    ``param: starting_after`` (a bad parameter of this request, and the same answer for
    both, so nothing tells that another merchant's id exists).
    """
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    params = validation.validate_search(request.query, [k for k, _ in request.query.items()])
    store = request.app[STORE]
    after: tuple[float, str] | None = None
    if "starting_after" in params:
        cursor = await store.get_payment(params["starting_after"])
        position = None if cursor is None else search_fields(cursor)
        if cursor is None or position is None or position[0] != merchant_id:
            raise ApiError(400, "invalid_request", "resource_missing",
                           "starting_after must be the id of one of your payments",
                           param="starting_after")
        after = (position[1], str(cursor["id"]))
    docs, has_more = await store.search_payments(PaymentSearch(
        merchant_id=merchant_id, limit=params["limit"], reference=params.get("reference"),
        status=params.get("status"), provider=params.get("provider"),
        created_gte=params.get("created_gte"), created_lt=params.get("created_lt"),
        starting_after=after))
    return web.json_response({"object": "list", "data": [Payment.public_of(d) for d in docs],
                              "has_more": has_more})


@routes.get("/v1/payments/{payment_id}")
async def get_payment(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    doc = await _owned_payment(request, merchant_id)
    return web.json_response(Payment.public_of(doc))


@routes.get("/v1/payments/{payment_id}/events")
async def payment_events(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    doc = await _owned_payment(request, merchant_id)
    events = await request.app[STORE].list_events(doc["id"])
    return web.json_response({"object": "list", "payment_id": doc["id"], "data": events})


@routes.post("/v1/payments/{payment_id}/capture")
async def capture_payment(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    body = validation.parse_json_body(await request.read())
    amount = validation.validate_capture(body)
    doc = await _owned_payment(request, merchant_id)

    async def execute(ex: Execution) -> Outcome:
        done = await request.app[ORCHESTRATOR].capture(
            doc["id"], amount, ex.key, current=doc, completion=ex.completion)
        return Outcome(200, doc["id"], done)

    return await _idempotent_post(request, merchant_id, body, execute,
                                  answer=(200, doc["id"]))


@routes.post("/v1/payments/{payment_id}/void")
async def void_payment(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    body = validation.parse_json_body(await request.read())
    validation.validate_void(body)
    doc = await _owned_payment(request, merchant_id)

    async def execute(ex: Execution) -> Outcome:
        done = await request.app[ORCHESTRATOR].void(
            doc["id"], ex.key, current=doc, completion=ex.completion)
        return Outcome(200, doc["id"], done)

    return await _idempotent_post(request, merchant_id, body, execute,
                                  answer=(200, doc["id"]))


@routes.post("/v1/payments/{payment_id}/refunds")
async def refund_payment(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    body = validation.parse_json_body(await request.read())
    amount, reason = validation.validate_refund(body)
    doc = await _owned_payment(request, merchant_id)

    async def execute(ex: Execution) -> Outcome:
        refund_id = derived_id("ref_", ex.merchant_id, ex.key)
        done = await request.app[ORCHESTRATOR].refund(doc["id"], refund_id, amount, reason)
        return Outcome(201, doc["id"], done)

    return await _idempotent_post(request, merchant_id, body, execute)


@routes.post("/v1/payments/{payment_id}/confirm")
async def confirm_payment(request: web.Request) -> web.Response:
    """Finish a requires_action payment after the customer's 3-D Secure challenge (SPEC
    3.3; :mod:`gateway.confirm`). Body: empty or ``{}``."""
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    body = validation.parse_json_body(await request.read())
    validation.validate_confirm(body)
    doc = await _owned_payment(request, merchant_id)

    async def execute(ex: Execution) -> Outcome:
        done = await confirm.confirm(request.app[ORCHESTRATOR], doc["id"])
        return Outcome(200, doc["id"], done)

    return await _idempotent_post(request, merchant_id, body, execute)


@routes.get("/return/{payment_id}")
async def customer_return(request: web.Request) -> web.Response:
    """Where the provider sends the customer's browser after the challenge
    (:mod:`gateway.three_ds`): no merchant auth, but only with the payment's own secret
    ``rt``. Records what the return carried, then 303 to the merchant's return_url (or a
    small JSON answer when the payment has none)."""
    store = request.app[STORE]
    doc = await store.get_payment(request.match_info["payment_id"])
    token = request.query.get("rt", "")
    if doc is None or not doc.get("_return_token") or not hmac.compare_digest(
            str(doc["_return_token"]).encode(), token.encode()):
        raise not_found()
    logs.payment_id_var.set(doc["id"])
    query = {k: v for k, v in request.query.items() if k != "rt"}
    doc = await request.app[ORCHESTRATOR].writer.mutate(
        doc["id"], lambda d: three_ds.record_return(d, query))
    onward = three_ds.merchant_return(doc)
    if onward:
        raise web.HTTPSeeOther(onward)
    return web.json_response({"object": "payment_return", "payment_id": doc["id"],
                              "status": doc["status"]})
