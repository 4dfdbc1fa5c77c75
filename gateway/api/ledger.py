"""``GET /v1/payments/{payment_id}/ledger`` (SPEC 16): the payment's ledger entries, oldest
first, as :func:`gateway.ledger.public_entry` lists them. Another merchant's payment answers
404 exactly like a missing one."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import authenticate_merchant
from gateway.api.errors import not_found
from gateway.appkeys import CONFIG, STORE
from gateway.ledger import public_entry

routes = web.RouteTableDef()


@routes.get("/v1/payments/{payment_id}/ledger")
async def payment_ledger(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    store = request.app[STORE]
    doc = await store.get_payment(request.match_info["payment_id"])
    if doc is None or doc.get("merchant_id") != merchant_id:
        raise not_found()
    entries = await store.list_ledger(str(doc["id"]))
    return web.json_response({"object": "list", "payment_id": doc["id"],
                              "data": [public_entry(e) for e in entries]})


__all__ = ["routes"]
