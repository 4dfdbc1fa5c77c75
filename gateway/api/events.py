"""Merchant notification events and their delivery attempts.

* ``GET /v1/events/{event_id}`` - one event: the notification body as sent
  (``id``, ``type``, ``created``, ``data.object`` ...) plus ``delivery``:
  ``{"state": "pending" | "delivered" | "failed", "attempts": [...],
  "next_attempt_at", "delivered_at"}``.
* ``GET /v1/events?payment_id=pay_...`` - the payment's events, oldest first; without
  ``payment_id`` the merchant's events newest first in pages (``limit``,
  ``starting_after``); ``type`` and ``delivery`` (pending|delivered|failed) filter.
* ``POST /v1/events/{event_id}/redeliver`` - queue it again (SPEC 3.2; Idempotency-Key).

Another merchant's event or payment answers 404 exactly like a missing one.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.api.auth import authenticate_merchant
from gateway.api.errors import ApiError, not_found
from gateway.appkeys import CONFIG, NOTIFIER, STORE
from gateway.idempotency import Execution, Outcome, fingerprint, require_key, run_idempotent
from gateway.model import iso
from gateway.store import EventSearch

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


_LIST_PARAMS = frozenset({"payment_id", "type", "delivery", "limit", "starting_after"})
_DELIVERY = ("pending", "delivered", "failed")


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, "invalid_request", "parameter_invalid",
                       "limit must be an integer from 1 to 100", param="limit")
    return int(raw)


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    """``payment_id``: that payment's events, oldest first (all of them). Without it, the
    merchant's events newest first, ``limit`` (1-100, default 20) per page, the next page
    with ``starting_after=<last event id>``. ``type`` and ``delivery`` filter both."""
    merchant_id = authenticate_merchant(request, request.app[CONFIG])
    query = request.query
    unknown = sorted(set(query) - _LIST_PARAMS)
    if unknown:
        raise ApiError(400, "invalid_request", "parameter_unknown",
                       f"unknown query parameter: {unknown[0]}", param=unknown[0])
    for name in query:
        if len(query.getall(name)) > 1:
            raise ApiError(400, "invalid_request", "parameter_invalid",
                           f"{name} given more than once", param=name)
    delivery = query.get("delivery")
    if delivery is not None and delivery not in _DELIVERY:
        raise ApiError(400, "invalid_request", "parameter_invalid",
                       "delivery must be pending, delivered or failed", param="delivery")
    kind = query.get("type")
    if kind is not None and not kind:
        raise ApiError(400, "invalid_request", "parameter_invalid",
                       "type must not be empty", param="type")
    store = request.app[STORE]
    payment_id = query.get("payment_id")
    if payment_id is not None:
        if "limit" in query or "starting_after" in query:
            raise ApiError(400, "invalid_request", "parameter_invalid",
                           "a payment's events come in one list: no limit/starting_after "
                           "with payment_id", param="limit" if "limit" in query
                           else "starting_after")
        doc = await store.get_payment(payment_id)
        if doc is None or doc.get("merchant_id") != merchant_id:
            raise not_found()
        events = [e for e in await store.list_notifications(payment_id)
                  if e.get("merchant_id") == merchant_id
                  and (kind is None or e.get("type") == kind)
                  and (delivery is None or e.get("state") == delivery)]
        return web.json_response({"object": "list", "payment_id": payment_id,
                                  "data": [event_view(e) for e in events],
                                  "has_more": False})
    limit = _limit(query.get("limit"))
    after = query.get("starting_after")
    if after is not None:
        anchor = await store.get_notification(after)
        if anchor is None or anchor.get("merchant_id") != merchant_id:
            raise ApiError(400, "invalid_request", "parameter_invalid",
                           "starting_after is not one of your events", param="starting_after")
    found, has_more = await store.search_notifications(EventSearch(
        merchant_id, limit=limit, type=kind, state=delivery, starting_after=after))
    return web.json_response({"object": "list", "data": [event_view(e) for e in found],
                              "has_more": has_more})


@routes.post("/v1/events/{event_id}/redeliver")
async def redeliver_event(request: web.Request) -> web.Response:
    """Queue one event for delivery again (SPEC 3.2): 200 with the event. It goes out in
    its payment's order (after that payment's earlier pending events) with a fresh retry
    schedule. Needs an Idempotency-Key like every POST: a replay answers the event's
    current state and does not queue it again."""
    config, store = request.app[CONFIG], request.app[STORE]
    merchant_id = authenticate_merchant(request, config)
    key = require_key(request.headers.get("Idempotency-Key"))
    event_id = request.match_info["event_id"]
    if await request.read():
        raise ApiError(400, "invalid_request", "body_not_allowed",
                       "redeliver takes no request body")
    fp = fingerprint(request.method, request.path, {})

    async def current(eid: str) -> dict[str, Any]:
        stored = await store.get_notification(eid)
        if stored is None or stored.get("merchant_id") != merchant_id:
            raise _event_not_found()
        return stored

    requeued: list[dict[str, Any]] = []

    async def execute(_ex: Execution) -> Outcome:
        await current(event_id)
        doc = await store.requeue_notification(event_id, time.time())
        if doc is None:
            raise _event_not_found()  # pragma: no cover - events are never deleted
        requeued.append(doc)
        wake = request.app.get(NOTIFIER)
        if wake is not None:
            wake.wake()
        return Outcome(200, event_id)

    async def replay(response: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "error" in response:
            return response["status"], response["error"]
        return response["status"], event_view(await current(event_id))

    status, result, replayed = await run_idempotent(
        store, (merchant_id, key, fp), config.request_deadline_s, config.idempotency_ttl_s,
        execute, replay)
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    body = event_view(requeued[-1]) if isinstance(result, Outcome) else result
    return web.json_response(body, status=status, headers=headers)


__all__ = ["event_view", "routes"]
