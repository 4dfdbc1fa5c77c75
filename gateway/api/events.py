"""Merchant notification events and their delivery attempts.

* ``GET /v1/events/{event_id}`` - one event: the notification body as sent
  (``id``, ``type``, ``created``, ``data.object`` ...) plus ``delivery``:
  ``{"state": "pending" | "delivered" | "failed", "attempts": [...],
  "next_attempt_at", "delivered_at"}``.
* ``GET /v1/events?payment_id=pay_...`` - the payment's events, oldest first.

Another merchant's event or payment answers 404 exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import authenticate_merchant
from gateway.api.errors import ApiError, not_found
from gateway.appkeys import CONFIG, STORE
from gateway.model import iso

routes = web.RouteTableDef()


def _iso_or_none(ts: Any) -> str | None:
    return iso(float(ts)) if isinstance(ts, int | float) and not isinstance(ts, bool) else None


def event_view(stored: dict[str, Any]) -> dict[str, Any]:
    """What the merchant sees of a stored outbox event (no lease internals)."""
    out: dict[str, Any] = dict(stored.get("payload") or {})
    out.setdefault("id", stored["id"])
    out.setdefault("object", "event")
    out.setdefault("type", stored.get("type"))
    attempts = []
    for a in stored.get("attempts") or []:
        view = {k: v for k, v in a.items() if k in ("status", "error", "duration_ms")}
        view["at"] = _iso_or_none(a.get("at"))
        attempts.append(view)
    out["delivery"] = {
        "state": stored.get("state"),
        "attempts": attempts,
        "next_attempt_at": (_iso_or_none(stored.get("next_attempt_at"))
                            if stored.get("state") == "pending" else None),
        "delivered_at": _iso_or_none(stored.get("delivered_at")),
    }
    return out


def _event_not_found() -> ApiError:
    return ApiError(404, "not_found", "resource_missing", "no such event")


@routes.get("/v1/events/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    stored = await request.app[STORE].get_notification(request.match_info["event_id"])
    if stored is None or stored.get("merchant_id") != merchant_id:
        raise _event_not_found()
    return web.json_response(event_view(stored))


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    payment_id = request.query.get("payment_id")
    if not payment_id:
        raise ApiError(400, "invalid_request", "parameter_missing",
                       "payment_id is required", param="payment_id")
    store = request.app[STORE]
    doc = await store.get_payment(payment_id)
    if doc is None or doc.get("merchant_id") != merchant_id:
        raise not_found()
    events = [e for e in await store.list_notifications(payment_id)
              if e.get("merchant_id") == merchant_id]
    return web.json_response({"object": "list", "payment_id": payment_id,
                              "data": [event_view(e) for e in events]})


__all__ = ["event_view", "routes"]
