"""Stripe-format webhook events emitted by the simulator (signed like Stripe)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from providers.stripe.sim_model import new_id

API_VERSION = "2026-10-28.endive"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """``Stripe-Signature`` header value: ``t=<unix>,v1=<hex hmac-sha256>``."""
    ts = int(time.time()) if timestamp is None else timestamp
    signed = f"{ts}.".encode() + payload
    mac = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def build_event(
    event_type: str, obj: dict[str, Any], *, request_id: str | None = None,
    idempotency_key: str | None = None,
) -> bytes:
    event = {
        "id": new_id("evt"), "object": "event", "api_version": API_VERSION,
        "created": int(time.time()), "type": event_type, "livemode": False,
        "pending_webhooks": 1, "data": {"object": obj},
        "request": {"id": request_id, "idempotency_key": idempotency_key},
    }
    return json.dumps(event, separators=(",", ":")).encode()


#: Events that follow a PaymentIntent reaching a status.
PI_STATUS_EVENTS: dict[str, str] = {
    "requires_capture": "payment_intent.amount_capturable_updated",
    "succeeded": "payment_intent.succeeded",
    "canceled": "payment_intent.canceled",
    "processing": "payment_intent.processing",
    "requires_action": "payment_intent.requires_action",
    "requires_payment_method": "payment_intent.payment_failed",
}
