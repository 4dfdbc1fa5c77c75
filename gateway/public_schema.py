"""The merchant-visible shape of a payment, defined once (SPEC section 3).

The fields and their JSON-schema fragments are declared on the typed models
(:mod:`gateway.payment_types`: :func:`~gateway.payment_types.public` fields); these
lists are generated from them. The projection (:meth:`Payment.public_of
<gateway.payment_types.Payment.public_of>`) shows exactly these fields -- a field not
declared public never leaves the gateway, whatever the stored document holds -- and
``/openapi.json`` describes the same fields, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from gateway.payment_types import Attempt, Dispute, Payment, Refund, schema_fields
from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus

STATUSES = [s.value for s in PaymentStatus]
REFUND_STATUSES = [s.value for s in RefundStatus]
DISPUTE_STATUSES = [s.value for s in DisputeStatus]

ATTEMPT_FIELDS: dict[str, dict[str, Any]] = schema_fields(Attempt)
REFUND_FIELDS: dict[str, dict[str, Any]] = schema_fields(Refund)
DISPUTE_FIELDS: dict[str, dict[str, Any]] = schema_fields(Dispute)
PAYMENT_FIELDS: dict[str, dict[str, Any]] = schema_fields(Payment)


def payment_schema() -> dict[str, Any]:
    return {"type": "object", "required": list(PAYMENT_FIELDS), "properties": PAYMENT_FIELDS}
