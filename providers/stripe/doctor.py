"""``gateway doctor`` for Stripe: ``GET /v1/balance`` with the configured key, and a
``balance.available`` test event signed like Stripe's (moves no payment)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

import aiohttp
import stripe

from providers.doctor_checks import (
    Answered,
    Check,
    SignedNotification,
    clock_check,
    endpoint,
    fail,
    header_value,
    ok,
    unreachable,
)
from providers.settings import ProviderSettings

STRIPE_PROBE = "GET /v1/balance"

async def stripe_checks(cfg: ProviderSettings) -> list[Check]:
    name, base_url = cfg.name, endpoint(cfg)
    api_key = cfg.credentials.get("api_key")
    if not api_key or not base_url:
        missing = "api_key" if not api_key else "base_url"
        return [fail(name, "credentials", f"{missing} is not configured"),
                clock_check(name, None)]
    stripe.enable_telemetry = False
    http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(
        total=cfg.timeout_s, sock_connect=cfg.connect_timeout_s))
    client = stripe.StripeClient(api_key, base_addresses={"api": base_url}, http_client=http,
                                 max_network_retries=0)
    sent = time.time()
    answered: Answered | None = None
    try:
        balance = await client.v1.balance.retrieve_async()
        response = balance.last_response
        answered = Answered(sent, time.time(), header_value(response.headers if response else None,
                                                       "Date"))
        code = response.code if response is not None else 200
        creds = ok(name, "credentials", f"accepted ({STRIPE_PROBE} {code})")
    except stripe.APIConnectionError as exc:
        creds = fail(name, "credentials", unreachable(exc, base_url))
    except stripe.StripeError as exc:
        answered = Answered(sent, time.time(), header_value(exc.headers, "Date"))
        what = f"{STRIPE_PROBE} {exc.http_status} {type(exc).__name__}"
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            creds = fail(name, "credentials", f"rejected ({what})")
        else:
            creds = fail(name, "credentials", f"not confirmed ({what})")
    finally:
        await http.close_async()
    return [creds, clock_check(name, answered)]


def stripe_notification(secret: str, now: int | None = None) -> SignedNotification:
    """A ``balance.available`` event (moves no payment), with Stripe's ``Stripe-Signature``
    (``t=<ts>,v1=HMAC-SHA256(secret, "<ts>.<body>")``)."""
    ts = int(time.time()) if now is None else now
    event = {"id": f"evt_doctor_{secrets.token_hex(12)}", "object": "event",
             "type": "balance.available", "created": ts, "livemode": False,
             "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
             "data": {"object": {"object": "balance", "available": [], "pending": [],
                                 "livemode": False}}}
    body = json.dumps(event, separators=(",", ":")).encode()
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return SignedNotification(body, {"Stripe-Signature": f"t={ts},v1={sig}",
                                   "Content-Type": "application/json"})
