"""``POST /webhooks/{provider_name}``: provider webhooks in (SPEC section 8).

``provider_name`` is a provider NAME from gateway.yaml (``stripe_main``...); an
unknown name is 404. No merchant authentication: the provider's signature is the
authentication, checked on the raw bytes by the provider package's
``verify_and_parse`` with that provider's secret:

* stripe: ``webhook_secret`` (option ``webhook_tolerance_s``, default 300 s);
* adyen: ``hmac_key`` (hex);
* braintree: ``public_key`` + ``private_key``.

A ``sandbox: true`` provider without that credential uses the simulator's signing
secret (the declaration's ``sandbox_credentials``). A non-sandbox provider without it rejects
every webhook (401).

Answers: bad / missing signature -> 401 (``invalid_signature``); valid signature but
stale timestamp -> 400 (``stale``); unparseable body -> 400 (``malformed``); else 200
``{"received": true, "results": [...]}`` after each event was deduplicated
(``duplicate``) and applied (see :mod:`gateway.webhook_apply`). Events that match no
payment are kept via ``store.save_unmatched_webhook`` (``unmatched``). An event is
recorded as done only once applied (:func:`_apply_once`): if the store fails (down,
full), the answer is 503 with Retry-After and the provider's redelivery is applied; a
delivery that arrives while another one of the same event is being applied gets 409
with Retry-After. Each outcome is counted in
``gateway_webhooks_total{provider, result}``.

``GET /webhooks/{provider_name}?bt_challenge=..`` answers Braintree's endpoint
verification challenge (a declaration's ``webhook_challenge``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.api.errors import ApiError
from gateway.appkeys import CONFIG, STORE
from gateway.config import ProviderConfig
from gateway.payment_writer import PaymentWriter
from gateway.provider_registry import declaration_of, effective
from gateway.webhook_apply import apply_webhook_event, unmatched_record
from providers.webhook_event import (
    InvalidSignature,
    MalformedWebhook,
    StaleTimestamp,
    WebhookEvent,
)

log = logging.getLogger("gateway.webhooks")

routes = web.RouteTableDef()

#: How long an event id is remembered (providers retry for up to a few days).
DEDUPE_TTL_S = 30 * 86400.0
#: How long one delivery may hold an event while applying it (a few store calls).
APPLY_LEASE_S = 30.0
#: Largest webhook body read (Adyen batches stay far below).
MAX_BODY_BYTES = 256 * 1024

def webhook_credentials(cfg: ProviderConfig) -> dict[str, str]:
    """The configured secrets, over the in-process simulator's under ``sandbox: true``."""
    return effective(cfg).credentials


def verify_and_parse(cfg: ProviderConfig, raw: bytes, headers: Mapping[str, str],
                     now: float | None = None) -> list[WebhookEvent]:
    """The provider folder's verifier, with ``cfg``'s secret(s)."""
    try:
        decl = declaration_of(cfg)
    except ValueError:
        raise InvalidSignature(f"no webhook verifier for provider type {cfg.type}") from None
    return decl.verify_webhook(effective(cfg), raw, headers, now)


def _provider(request: web.Request) -> ProviderConfig:
    name = request.match_info["provider_name"]
    cfg = request.app[CONFIG].providers.get(name)
    if cfg is None:
        raise ApiError(404, "not_found", "unknown_provider", "no such provider")
    return cfg


def _count(name: str, result: str) -> None:
    metrics.WEBHOOKS.labels(name, result).inc()


async def _read(request: web.Request) -> bytes:
    """The raw body, already read (within the body timeout) and bounded by the app's
    ``client_max_size`` (MAX_BODY_BYTES) in the request middleware."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "invalid_request", "body_too_large", "webhook body too large")
    return await request.read()


async def _apply_once(writer: PaymentWriter, name: str, event: WebhookEvent
                      ) -> tuple[str, str | None] | None:
    """Apply ``event`` unless it was applied before (None: a duplicate).

    The event is recorded as done only AFTER it was applied, under a lease on it that
    keeps a concurrent delivery of the same event out (409 with Retry-After: the provider
    delivers it again later). A store that fails in between (down, full, read-only)
    leaves the event unrecorded, so the provider's redelivery is applied; recording
    first and dropping the record on failure would lose the event whenever the drop
    fails too (the store is still down) -- then the redelivery is taken for a
    duplicate. A failure after applying and before recording means the redelivery is
    applied again, which the state machine makes a no-op (forward edges only)."""
    store = writer.store
    if await store.webhook_event_seen(name, event.event_id):
        return None
    lease, owner = f"webhook:{name}:{event.event_id}", uuid.uuid4().hex
    if not await store.acquire_lease(lease, owner, APPLY_LEASE_S):
        raise ApiError(409, "invalid_state", "webhook_in_progress",
                       "this notification is being applied by another delivery; send it "
                       "again later", headers={"Retry-After": "5"})
    try:
        if await store.webhook_event_seen(name, event.event_id):
            return None  # the delivery that held the lease before us applied it
        result, payment_id = await apply_webhook_event(writer, name, event)
        if result == "unmatched":
            await store.save_unmatched_webhook(name, unmatched_record(name, event))
        await store.record_webhook_event(name, event.event_id, DEDUPE_TTL_S)
        return result, payment_id
    finally:
        with contextlib.suppress(Exception):  # else it lapses after APPLY_LEASE_S
            await store.release_lease(lease, owner)


@routes.post("/webhooks/{provider_name}")
async def receive_webhook(request: web.Request) -> web.Response:
    cfg = _provider(request)
    name = cfg.name
    raw = await _read(request)
    try:
        events = verify_and_parse(cfg, raw, request.headers)
    except InvalidSignature as exc:
        _count(name, "invalid_signature")
        log.warning("webhook rejected: invalid signature",
                    extra={"provider": name, "reason": str(exc)})
        raise ApiError(401, "authentication_failed", "invalid_signature",
                       "webhook signature verification failed") from None
    except StaleTimestamp:
        _count(name, "stale")
        raise ApiError(400, "invalid_request", "stale_timestamp",
                       "webhook timestamp outside the tolerance") from None
    except (MalformedWebhook, ValueError, RecursionError) as exc:
        # ValueError covers JSON/UTF-8 errors of a body whose scheme parses it first
        _count(name, "malformed")
        log.warning("webhook rejected: malformed", extra={"provider": name, "reason": str(exc)})
        raise ApiError(400, "invalid_request", "malformed_webhook",
                       "webhook body cannot be parsed") from None

    writer = PaymentWriter(request.app[STORE], request.app[CONFIG])
    results: list[dict[str, Any]] = []
    for event in events:
        applied = await _apply_once(writer, name, event)
        if applied is None:
            _count(name, "duplicate")
            results.append({"event_id": event.event_id, "result": "duplicate"})
            continue
        result, payment_id = applied
        _count(name, result)
        log.info("webhook event", extra={"provider": name, "event_kind": event.kind,
                                         "result": result, "payment_id": payment_id})
        results.append({"event_id": event.event_id, "result": result})
    return web.json_response({"received": True, "results": results})


@routes.get("/webhooks/{provider_name}")
async def webhook_challenge(request: web.Request) -> web.Response:
    """The provider's endpoint verification (Braintree's ``bt_challenge``)."""
    cfg = _provider(request)
    challenge = declaration_of(cfg).webhook_challenge
    value = request.query.get(challenge[0]) if challenge else None
    if challenge is None or not value:
        raise ApiError(405, "invalid_request", "method_not_allowed",
                       "webhooks are delivered with POST")
    try:
        answer = challenge[1](effective(cfg), value)
    except LookupError:
        raise ApiError(404, "not_found", "unknown_provider",
                       f"no {cfg.type} webhook keys configured") from None
    except MalformedWebhook:
        raise ApiError(400, "invalid_request", "malformed_webhook",
                       f"{challenge[0]} must be 20-32 hex characters") from None
    return web.Response(text=answer, content_type="text/plain")


__all__ = ["routes", "verify_and_parse", "webhook_credentials"]
