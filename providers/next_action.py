"""The gateway's one shape of ``next_action`` (SPEC 3: the payment object's customer action).

Every provider's own action object is turned into::

    {"type": "redirect_to_url",
     "redirect_to_url": {"url": "<where the browser goes>", "return_url": "<where it comes back>"}}

(Stripe's PaymentIntent ``next_action`` of type ``redirect_to_url``; Adyen's ``action`` of
type ``redirect``). Only these fields leave the adapter: a provider's raw action (Stripe's
``use_stripe_sdk`` payload, Adyen's ``paymentData`` / ``paymentMethodType``) never reaches
the public object. A redirect Adyen wants POSTed keeps ``method: "POST"`` and its form
``data`` (a browser cannot follow it otherwise). An action no browser can follow from a
URL keeps only its ``type`` (``use_stripe_sdk``, ``threeDS2``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REDIRECT_TO_URL = "redirect_to_url"


def redirect_to_url(url: str, return_url: str | None, *, method: str | None = None,
                    data: Mapping[str, str] | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"url": url, "return_url": return_url}
    if method and method.upper() != "GET":
        target["method"] = method.upper()
        if data:
            target["data"] = {str(k): str(v) for k, v in data.items()}
    return {"type": REDIRECT_TO_URL, REDIRECT_TO_URL: target}


def other(action_type: Any) -> dict[str, Any]:
    """An action a browser cannot follow from a URL: its type only."""
    return {"type": str(action_type) if action_type else "unknown"}


def stripe(next_action: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A PaymentIntent's ``next_action`` (spec3 ``payment_intent_next_action``)."""
    if not isinstance(next_action, Mapping):
        return None
    kind = next_action.get("type")
    target = next_action.get(REDIRECT_TO_URL)
    if kind == REDIRECT_TO_URL and isinstance(target, Mapping) and isinstance(
            target.get("url"), str):
        back = target.get("return_url")
        return redirect_to_url(target["url"], back if isinstance(back, str) else None)
    return other(kind)


def adyen(action: Mapping[str, Any] | None, return_url: str | None) -> dict[str, Any] | None:
    """A ``/payments`` answer's ``action`` (Checkout v71 ``CheckoutRedirectAction`` ...);
    ``return_url`` is the ``returnUrl`` the request sent (Adyen does not echo it)."""
    if not isinstance(action, Mapping):
        return None
    kind = action.get("type")
    if kind == "redirect" and isinstance(action.get("url"), str):
        method = action.get("method")
        data = action.get("data")
        return redirect_to_url(action["url"], return_url,
                               method=method if isinstance(method, str) else None,
                               data=data if isinstance(data, Mapping) else None)
    return other(kind)
