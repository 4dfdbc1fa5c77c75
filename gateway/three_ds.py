"""3-D Secure on the payment document: the customer's way out and back (issue #13 item 4).

A payment a provider answers ``requires_action`` carries a public ``next_action`` in the
gateway's one shape (:mod:`providers.next_action`)::

    {"type": "redirect_to_url",
     "redirect_to_url": {"url": "<the provider's challenge page>", "return_url": "..."}}

The browser follows ``url``; the provider sends it back to the gateway's return endpoint,
``GET /return/{payment_id}?rt=<token>`` (:func:`gateway_return_url`, handed to the provider as
its return URL: Stripe ``return_url``, Adyen ``returnUrl``), which records what the return
carried (Adyen's ``redirectResult``) on the payment and sends the customer on to the
merchant's ``return_url`` (the create request's, with ``payment_id`` appended). The public
``next_action.redirect_to_url.return_url`` is that merchant URL when given. Then ``POST
/v1/payments/{id}/confirm`` (:mod:`gateway.confirm`) finishes the payment at the provider.

Internal fields (never public): ``_return_url`` (the merchant's), ``_return_token`` (a
random secret in the gateway's return URL: only a URL the gateway issued is accepted),
``_gateway_return``, ``_action`` (the payment went through requires_action: ``/confirm``
then answers its current state even after a webhook completed it) and ``_action_return``
(what the customer's return carried).

While the customer authenticates, the payment holds a confirm operation that only waits
(``_operation = {"op": "confirm", "await_customer": true, "lease_until": ...}``) for the
action window (``reconciliation.action_window_s`` in gateway.yaml, default
:data:`ACTION_WINDOW_S`; the value in force when the payment was created is kept on it as
``_action_window_s``). Reconciliation leaves it alone meanwhile (SPEC 9.1: its lease); a
merchant's confirm answered "not finished yet" re-arms the wait until the window's end.
After the window reconciliation looks the payment up (Stripe: retrieve the PaymentIntent;
Adyen: ``/payments/details`` if the customer's return was recorded) -- never a new
authorization -- and applies a definite answer. Still waiting for the customer: the
payment is ended (:mod:`gateway.confirm`) only on the provider's guarantee that nothing can
be charged any more (SPEC 5.1): Stripe cancels the PaymentIntent (reason ``abandoned``; a
canceled PaymentIntent can never be confirmed) and the payment becomes ``expired`` with
``failure.code`` :data:`EXPIRED_CODE`. A provider with no such answer (Adyen: no lookup
without the customer's ``redirectResult``, no cancel of an unfinished redirect) leaves it
``requires_action``, flagged for an operator, until its notification (Adyen
``AUTHORISATION``, or ``OFFER_CLOSED`` -> ``expired``) ends it.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from gateway.model import audit, now
from providers import next_action as normalized
from providers.base import Operation
from providers.statuses import PaymentStatus

#: How long a customer has to finish the challenge before reconciliation looks it up and
#: ends the payment (the default of ``reconciliation.action_window_s``).
ACTION_WINDOW_S = 900.0
#: ``failure.code`` of a payment ended because the customer never finished the challenge.
EXPIRED_CODE = "action_expired"
#: ``failure.code`` of one whose provider cancelled it before the window's end.
CANCELED_CODE = "canceled_at_provider"
#: What the return endpoint keeps of the return's query (Adyen's ``redirectResult``; Stripe's
#: ``payment_intent`` / ``redirect_status``), each at most Adyen's published 20,000 chars.
RETURN_PARAMS = ("redirectResult", "payment_intent", "redirect_status")
RETURN_VALUE_MAX = 20_000


def prepare(doc: dict[str, Any], body: dict[str, Any], base_url: str,
            window_s: float = ACTION_WINDOW_S) -> None:
    """Give a new payment its return URLs and action window (before it is first stored)."""
    token = secrets.token_urlsafe(18)
    doc["_action_window_s"] = float(window_s)
    doc["_return_url"] = body.get("return_url")
    doc["_return_token"] = token
    doc["_gateway_return"] = gateway_return_url(base_url, doc["id"], token)


def gateway_return_url(base_url: str, payment_id: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/return/{payment_id}?{urlencode({'rt': token})}"


def public_next_action(doc: dict[str, Any], action: dict[str, Any] | None
                       ) -> dict[str, Any] | None:
    """The adapter's normalized action with the merchant's return URL shown (when given)."""
    if not action:
        return None
    target = action.get(normalized.REDIRECT_TO_URL)
    if action.get("type") == normalized.REDIRECT_TO_URL and isinstance(target, dict):
        back = doc.get("_return_url") or target.get("return_url")
        return {**action, normalized.REDIRECT_TO_URL: {**target, "return_url": back}}
    return dict(action)


def entered_requires_action(doc: dict[str, Any]) -> None:
    """The payment has just become ``requires_action``: remember it, and hold the waiting
    confirm operation for the customer's window (unless a follow-up is already recorded)."""
    doc["_action"] = {"since": now()}
    if not doc.get("_operation"):
        await_customer(doc)


def window_s(doc: dict[str, Any]) -> float:
    return float(doc.get("_action_window_s") or ACTION_WINDOW_S)


def window_end(doc: dict[str, Any]) -> float:
    """When the customer's window closes (unix s)."""
    since = (doc.get("_action") or {}).get("since") or doc["created_at"]
    return float(since) + window_s(doc)


def window_passed(doc: dict[str, Any]) -> bool:
    return now() >= window_end(doc)


def await_customer(doc: dict[str, Any]) -> None:
    """Hold the waiting confirm operation until the window's end (at once, if it has
    passed): reconciliation then looks the payment up and ends it if still unfinished."""
    started = now()
    doc["_operation"] = {"op": Operation.CONFIRM, "key": None, "await_customer": True,
                         "started_at": started, "lease_until": max(started, window_end(doc))}


def record_return(doc: dict[str, Any], query: dict[str, str]) -> list[dict[str, Any]]:
    """Keep what the customer's return carried, for ``/confirm`` (only while the payment
    still requires action; a later return replaces an earlier one)."""
    if doc["status"] != PaymentStatus.REQUIRES_ACTION:
        return []
    kept = {k: v[:RETURN_VALUE_MAX] for k, v in query.items() if k in RETURN_PARAMS and v}
    doc["_action_return"] = kept
    return [audit("customer_returned", "customer", params=sorted(kept) or None)]


def merchant_return(doc: dict[str, Any]) -> str | None:
    """Where the return endpoint sends the customer on: the merchant's ``return_url`` with
    ``payment_id`` appended."""
    url = doc.get("_return_url")
    if not url:
        return None
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{urlencode({'payment_id': doc['id']})}"


__all__ = ["ACTION_WINDOW_S", "CANCELED_CODE", "EXPIRED_CODE", "await_customer",
           "entered_requires_action", "gateway_return_url", "merchant_return", "prepare",
           "public_next_action", "record_return", "window_end", "window_passed", "window_s"]
