"""Stripe JSON objects (plain dicts) -> ProviderResult / RefundResult."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers import next_action as normalized_action
from providers.amounts import AmountError
from providers.base import Failure, Outcome, ProviderResult, RefundResult
from providers.statuses import PaymentStatus, RefundStatus
from providers.stripe.amounts import from_wire
from providers.stripe.errors import Refusal
from providers.stripe.status import map_payment_intent_status, map_refund_status


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def iso_amount(obj: Mapping[str, Any], key: str) -> int | None:
    """``obj[key]`` (Stripe's wire units) in ISO minor units of ``obj["currency"]``; None
    when absent or not exactly convertible."""
    value, currency = _int(obj.get(key)), obj.get("currency")
    if value is None or not isinstance(currency, str):
        return None
    try:
        return from_wire(value, currency)
    except (AmountError, ValueError):
        return None


def _payment_error(pi: Mapping[str, Any]) -> Failure | None:
    err = pi.get("last_payment_error")
    if not isinstance(err, Mapping):
        return None
    code = err.get("code") or None
    return Failure("card_declined", str(err.get("message") or "card declined"),
                   err.get("decline_code") or None, code)


def parse_payment_intent(pi: Mapping[str, Any]) -> ProviderResult:
    """A PaymentIntent the API returned. ``declined`` (requires_payment_method after a
    failed confirmation) gives outcome DECLINED; every other status SUCCEEDED."""
    raw = pi.get("status")
    status, _mapped = map_payment_intent_status(raw if isinstance(raw, str) else None)
    amount = iso_amount(pi, "amount")
    authorized: int | None = None
    captured: int | None = None
    if status is PaymentStatus.AUTHORIZED:
        authorized, captured = iso_amount(pi, "amount_capturable") or amount, 0
    elif status is PaymentStatus.CAPTURED:
        captured = iso_amount(pi, "amount_received")
        authorized = amount
    next_action = pi.get("next_action") if status is PaymentStatus.REQUIRES_ACTION else None
    failure = _payment_error(pi) if status is PaymentStatus.DECLINED else None
    if status is PaymentStatus.DECLINED and failure is None:
        failure = Failure("card_declined", "payment method was not accepted")
    return ProviderResult(
        outcome=Outcome.DECLINED if status is PaymentStatus.DECLINED else Outcome.SUCCEEDED,
        status=status,
        provider_reference=pi.get("id") if isinstance(pi.get("id"), str) else None,
        raw_status=raw if isinstance(raw, str) else None,
        amount_authorized=authorized,
        amount_captured=captured,
        failure=failure,
        next_action=normalized_action.stripe(next_action),
    )


def parse_refund(refund: Mapping[str, Any]) -> RefundResult:
    raw = refund.get("status")
    status, _mapped = map_refund_status(raw if isinstance(raw, str) else None)
    failure = None
    if status is RefundStatus.FAILED:
        reason = str(refund.get("failure_reason") or raw or "refund failed")
        failure = Failure("refund_failed", reason, None, reason)
    return RefundResult(
        outcome=Outcome.SUCCEEDED,
        status=status,
        provider_reference=refund.get("id") if isinstance(refund.get("id"), str) else None,
        raw_status=raw if isinstance(raw, str) else None,
        failure=failure,
    )


def declined_payment(refusal: Refusal, current: PaymentStatus | None = None) -> ProviderResult:
    """A refusal as a payment result.

    Authorization refusals (card decline, invalid request) -> status ``declined``;
    refusals of a follow-up (``current`` given: capture/void on a payment in that
    state) leave the status unchanged.
    """
    pi = refusal.payment_intent or {}
    raw = pi.get("status") if isinstance(pi.get("status"), str) else None
    return ProviderResult(
        outcome=Outcome.DECLINED,
        status=current if current is not None else PaymentStatus.DECLINED,
        provider_reference=pi.get("id") if isinstance(pi.get("id"), str) else None,
        raw_status=raw,
        failure=refusal.failure,
    )


def declined_refund(refusal: Refusal) -> RefundResult:
    return RefundResult(outcome=Outcome.DECLINED, status=RefundStatus.FAILED,
                        failure=refusal.failure)
