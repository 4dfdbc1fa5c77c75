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
(``_operation = {"op": "confirm", "await_customer": true, "lease_until": ...}``) for
:data:`ACTION_WINDOW_S`: reconciliation leaves it alone meanwhile (SPEC 9.1: its lease) and
afterwards looks it up once (Stripe: retrieve the PaymentIntent; Adyen: ``/payments/details``
if the customer's return was recorded) -- never a new authorization.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from gateway.model import audit, now
from providers import next_action as normalized
from providers.statuses import PaymentStatus

#: How long a customer has to finish the challenge before reconciliation looks it up.
ACTION_WINDOW_S = 900.0
#: What the return endpoint keeps of the return's query (Adyen's ``redirectResult``; Stripe's
#: ``payment_intent`` / ``redirect_status``), each at most Adyen's published 20,000 chars.
RETURN_PARAMS = ("redirectResult", "payment_intent", "redirect_status")
RETURN_VALUE_MAX = 20_000


def prepare(doc: dict[str, Any], body: dict[str, Any], base_url: str) -> None:
    """Give a new payment its return URLs (before it is first stored)."""
    token = secrets.token_urlsafe(18)
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
    started = now()
    doc["_action"] = {"since": started}
    if not doc.get("_operation"):
        doc["_operation"] = {"op": "confirm", "key": None, "await_customer": True,
                             "started_at": started, "lease_until": started + ACTION_WINDOW_S}


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


__all__ = ["ACTION_WINDOW_S", "entered_requires_action", "gateway_return_url",
           "merchant_return", "prepare", "public_next_action", "record_return"]
