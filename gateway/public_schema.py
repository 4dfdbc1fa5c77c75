"""The merchant-visible shape of a payment, defined once (SPEC section 3).

:func:`gateway.model.public_view` builds the payment object from these field lists --
a field not listed here never leaves the gateway, whatever the stored document holds --
and ``/openapi.json`` describes the same fields from the same schemas, so the two cannot
drift apart.
"""

from __future__ import annotations

from typing import Any

from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus

STATUSES = [s.value for s in PaymentStatus]
REFUND_STATUSES = [s.value for s in RefundStatus]
DISPUTE_STATUSES = [s.value for s in DisputeStatus]

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_NSTR: dict[str, Any] = {"type": "string", "nullable": True}
_FAILURE: dict[str, Any] = {"type": "object", "nullable": True, "properties": {
    "code": _STR, "message": _STR, "decline_code": _STR, "provider_code": _STR}}

ATTEMPT_FIELDS: dict[str, dict[str, Any]] = {
    "provider": _STR,
    "outcome": {"type": "string",
                "enum": ["in_flight", "succeeded", "declined", "rejected_safe", "ambiguous"]},
    "error_code": _STR,
    "started_at": {"type": "string", "format": "date-time"},
    "duration_ms": _INT,
}

REFUND_FIELDS: dict[str, dict[str, Any]] = {
    "id": _STR,
    "amount": _INT,
    "status": {"type": "string", "enum": REFUND_STATUSES},
    "provider_reference": _NSTR,
    "reason": _NSTR,
    "created_at": {"type": "string", "format": "date-time"},
    "failure": _FAILURE,
}

#: SPEC section 16. ``reason`` is the provider's own reason code; ``evidence_due_by`` the
#: deadline to answer, when the provider says one.
DISPUTE_FIELDS: dict[str, dict[str, Any]] = {
    "id": _STR,
    "amount": {"type": "integer", "nullable": True},  # None: the provider sent none
    "currency": _STR,
    "reason": _NSTR,
    "status": {"type": "string", "enum": DISPUTE_STATUSES},
    "evidence_due_by": {"type": "string", "format": "date-time", "nullable": True},
    "provider_reference": _STR,
}

PAYMENT_FIELDS: dict[str, dict[str, Any]] = {
    "id": _STR,
    "object": {"type": "string", "enum": ["payment"]},
    "status": {"type": "string", "enum": STATUSES},
    "amount": _INT,
    "currency": _STR,
    "capture": {"type": "string", "enum": ["automatic", "manual"]},
    "amount_authorized": _INT,
    "amount_captured": _INT,
    # a capture requested but not confirmed yet (status capture_pending, SPEC 3.3)
    "amount_capture_pending": _INT,
    "amount_refunded": _INT,
    "provider": _NSTR,
    "provider_reference": _NSTR,
    "reference": _NSTR,
    "routing": {"type": "object", "nullable": True, "properties": {
        "rule": _STR, "config_version": _STR}},
    "attempts": {"type": "array", "items": {"type": "object", "properties": ATTEMPT_FIELDS}},
    "refunds": {"type": "array", "items": {"type": "object", "properties": REFUND_FIELDS}},
    "disputes": {"type": "array", "items": {"type": "object", "properties": DISPUTE_FIELDS}},
    "failure": _FAILURE,
    # requires_action (3-D Secure): where the customer's browser goes and comes back
    # (providers/next_action.py; never the provider's own action object)
    "next_action": {"type": "object", "nullable": True, "required": ["type"], "properties": {
        "type": {"type": "string", "description": "redirect_to_url (the one a browser "
                 "follows); an action no URL can express keeps only its type"},
        "redirect_to_url": {"type": "object", "required": ["url", "return_url"],
                            "properties": {"url": _STR, "return_url": _NSTR,
                                           "method": {"type": "string", "enum": ["POST"]},
                                           "data": {"type": "object",
                                                    "additionalProperties": _STR}}}}},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "payment_method": {"type": "object", "properties": {"type": _STR, "brand": _STR}},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
}


def payment_schema() -> dict[str, Any]:
    return {"type": "object", "required": list(PAYMENT_FIELDS), "properties": PAYMENT_FIELDS}
