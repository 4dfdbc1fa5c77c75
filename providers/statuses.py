"""The canonical statuses (SPEC section 4) that providers map their own states to.

Shared by the provider adapters (status tables, parsers, webhooks) and the gateway's state
machine (:mod:`gateway.state_machine`, which owns the transitions); it lives under
``providers`` because providers import nothing of the gateway.
"""

from __future__ import annotations

from enum import StrEnum


class PaymentStatus(StrEnum):
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    UNKNOWN = "unknown"
    AUTHORIZED = "authorized"
    CAPTURE_PENDING = "capture_pending"
    CAPTURED = "captured"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    VOID_PENDING = "void_pending"
    VOIDED = "voided"
    DECLINED = "declined"
    FAILED = "failed"
    EXPIRED = "expired"


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class DisputeStatus(StrEnum):
    """A dispute's (chargeback's) status, SPEC section 16's vocabulary."""

    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"
