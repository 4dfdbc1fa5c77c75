"""``POST /_sim/{provider}/disputes`` (SPEC sections 15, 16): what the simulators share.

Body: ``{"reference": <gateway payment id>, "action": "open"|"win"|"lose", "amount"?}``
(``amount`` in ISO 4217 minor units, like ``GET /_sim/{provider}/charges``; default: the
captured amount). Each simulator finds the captured charge for that gateway payment,
moves a dispute on it in its provider's own terms and sends that provider's real signed
notification to its webhook URL. The answer is ``{"dispute": {"id" (or Adyen's
"pspReference"), "status" (the provider's own), "amount" (ISO minor units), "currency",
...}, <what was sent>}``. Every refusal is a :class:`DisputeRefused` (a 4xx with
a code), rendered by the control API as ``{"error": {...}}``:

=====  ========================  ==================================================
400    invalid_json              the body is not a JSON object
400    invalid_reference         ``reference`` missing or not a non-empty string
400    invalid_action            ``action`` not one of open / win / lose
400    invalid_amount            ``amount`` not a positive integer (or given to win/lose,
                                 or not a whole amount in the provider's wire units)
400    amount_too_large          ``amount`` above the captured amount
404    unknown_reference         no charge for that gateway payment
409    not_captured              the payment has no captured amount to dispute
409    dispute_already_open      an open dispute exists (open again: refused)
409    already_disputed          the charge's dispute is closed (one per charge)
409    no_open_dispute           win / lose without an open dispute
=====  ========================  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACTIONS = ("open", "win", "lose")


class DisputeRefused(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(frozen=True)
class DisputeRequest:
    reference: str
    action: str
    amount: int | None = None


def parse_request(body: Any) -> DisputeRequest:
    if not isinstance(body, dict):
        raise DisputeRefused(400, "invalid_json", "body must be a JSON object")
    unknown = set(body) - {"reference", "action", "amount"}
    if unknown:
        raise DisputeRefused(400, "unknown_parameter", f"unknown key {sorted(unknown)[0]!r}",
                             sorted(unknown)[0])
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference:
        raise DisputeRefused(400, "invalid_reference",
                             "reference (the gateway payment id) is required", "reference")
    action = body.get("action")
    if action not in ACTIONS:
        raise DisputeRefused(400, "invalid_action",
                             f"action must be one of {', '.join(ACTIONS)}", "action")
    amount = body.get("amount")
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise DisputeRefused(400, "invalid_amount",
                                 "amount must be a positive integer (ISO minor units)", "amount")
        if action != "open":
            raise DisputeRefused(400, "invalid_amount",
                                 "amount is only taken when a dispute is opened", "amount")
    return DisputeRequest(reference, str(action), amount)


def unknown_reference(reference: str) -> DisputeRefused:
    return DisputeRefused(404, "unknown_reference",
                          f"no charge for gateway payment {reference!r}", "reference")


def not_captured(reference: str) -> DisputeRefused:
    return DisputeRefused(409, "not_captured",
                          f"gateway payment {reference!r} has no captured charge to dispute",
                          "reference")


def no_open_dispute(reference: str) -> DisputeRefused:
    return DisputeRefused(409, "no_open_dispute",
                          f"gateway payment {reference!r} has no open dispute", "reference")


def already_disputed(reference: str, open_: bool) -> DisputeRefused:
    if open_:
        return DisputeRefused(409, "dispute_already_open",
                              f"gateway payment {reference!r} already has an open dispute",
                              "reference")
    return DisputeRefused(409, "already_disputed",
                          f"the charge of gateway payment {reference!r} was already disputed",
                          "reference")


def too_large(amount: int, captured: int | float) -> DisputeRefused:
    return DisputeRefused(400, "amount_too_large",
                          f"amount {amount} is above the captured amount {captured}", "amount")


def bad_wire_amount(amount: int, currency: str) -> DisputeRefused:
    return DisputeRefused(400, "invalid_amount",
                          f"amount {amount} is not a whole {currency} amount for this provider",
                          "amount")


__all__ = ["ACTIONS", "DisputeRefused", "DisputeRequest", "already_disputed",
           "bad_wire_amount", "no_open_dispute", "not_captured", "parse_request", "too_large",
           "unknown_reference"]
