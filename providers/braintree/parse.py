"""Braintree SDK results (``SuccessfulResult`` / ``ErrorResult`` / ``Transaction``)
-> :class:`ProviderResult` / :class:`RefundResult`.

* a ``Transaction`` (successful result, ``find`` or search) -> its mapped status;
  a declined status (processor_declined / gateway_rejected / failed) -> outcome
  DECLINED with a :class:`Failure` read from the processor response fields;
* an ``ErrorResult`` carrying a transaction (a decline) -> the same;
* an ``ErrorResult`` without a transaction (validation errors, e.g. 91506) ->
  DECLINED with failure code ``invalid_request`` (authorize) or
  ``invalid_state`` / ``amount_too_large`` (capture, void, refund), except the
  api_request_key errors, which are faults (see :mod:`providers.braintree.errors`).
"""

from __future__ import annotations

from typing import Any

from providers.base import Failure, Outcome, ProviderResult, RefundResult
from providers.braintree.amounts import AmountError, to_minor_units
from providers.braintree.errors import idempotency_fault, validation_failure_code
from providers.braintree.status import map_refund_status, map_transaction_status
from providers.statuses import PaymentStatus, RefundStatus

#: Processor response codes -> gateway decline codes (Braintree's documented codes).
DECLINE_CODES: dict[str, str] = {
    "2000": "do_not_honor",
    "2001": "insufficient_funds",
    "2002": "limit_exceeded",
    "2003": "activity_limit_exceeded",
    "2004": "expired_card",
    "2005": "invalid_number",
    "2006": "invalid_expiry_date",
    "2010": "incorrect_cvc",
    "2014": "fraudulent",
    "2015": "transaction_not_allowed",
    "2038": "processor_declined",
    "2044": "call_issuer",
    "2046": "generic_decline",
    "2047": "pickup_card",
    "3000": "processor_network_unavailable",
}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def minor_amount(txn: Any, currency: str | None = None) -> int | None:
    """The transaction amount in minor units; None when it cannot be read exactly or
    the transaction's currency is not the expected one (a merchant account for another
    currency: its amount must not be mistaken for the payment's)."""
    own = _str(getattr(txn, "currency_iso_code", None))
    if own and currency and own.upper() != currency.upper():
        return None
    cur = own or currency
    if cur is None:
        return None
    try:
        return to_minor_units(getattr(txn, "amount", None), cur)  # type: ignore[arg-type]
    except AmountError:
        return None


def decline_failure(txn: Any) -> Failure:
    """The failure details of a declined transaction."""
    raw = getattr(txn, "status", None)
    code = _str(getattr(txn, "processor_response_code", None))
    text = _str(getattr(txn, "processor_response_text", None))
    if raw == "gateway_rejected":
        reason = _str(getattr(txn, "gateway_rejection_reason", None)) or "unknown"
        return Failure("gateway_rejected", f"Gateway Rejected: {reason}", reason, reason)
    return Failure("card_declined", text or str(raw or "declined"),
                   DECLINE_CODES.get(code or ""), code)


def parse_transaction(txn: Any, currency: str | None = None) -> ProviderResult:
    """A sale transaction the gateway returned (or that ``find``/search found)."""
    raw = getattr(txn, "status", None)
    status, _mapped = map_transaction_status(raw if isinstance(raw, str) else None)
    amount = minor_amount(txn, currency)
    authorized: int | None = None
    captured: int | None = None
    if status is PaymentStatus.AUTHORIZED:
        authorized, captured = amount, 0
    elif status is PaymentStatus.CAPTURED:
        captured = amount
    declined = status is PaymentStatus.DECLINED
    return ProviderResult(
        outcome=Outcome.DECLINED if declined else Outcome.SUCCEEDED,
        status=status,
        provider_reference=_str(getattr(txn, "id", None)),
        raw_status=raw if isinstance(raw, str) else None,
        amount_authorized=authorized,
        amount_captured=captured,
        failure=decline_failure(txn) if declined else None,
    )


def _codes(result: Any) -> list[str]:
    errors = getattr(result, "errors", None)
    deep = getattr(errors, "deep_errors", None) or []
    return [str(getattr(e, "code", "")) for e in deep]


def _message(result: Any) -> str:
    msg = _str(getattr(result, "message", None))
    if msg:
        return msg
    deep = getattr(getattr(result, "errors", None), "deep_errors", None) or []
    return "; ".join(str(getattr(e, "message", "")) for e in deep) or "request refused"


def validation_failure(result: Any, *, authorize: bool) -> Failure:
    codes = _codes(result)
    idem = idempotency_fault(codes, _message(result))
    if idem is not None:
        raise idem
    return Failure(validation_failure_code(codes, authorize=authorize), _message(result), None,
                   ",".join(codes) or None)


def parse_payment_result(
    result: Any, *, authorize: bool, current: PaymentStatus = PaymentStatus.AUTHORIZED,
    currency: str | None = None,
) -> ProviderResult:
    """A sale / submit_for_settlement / void result. ``current`` is the status to
    report when a validation error left the transaction unchanged."""
    if getattr(result, "is_success", False):
        return parse_transaction(result.transaction, currency)
    txn = getattr(result, "transaction", None)
    if txn is not None:
        parsed = parse_transaction(txn, currency)
        if parsed.outcome is Outcome.DECLINED or authorize:
            return parsed
        # A follow-up refused with the transaction echoed: report its current state.
        failure = validation_failure(result, authorize=False)
        return ProviderResult(Outcome.DECLINED, parsed.status, parsed.provider_reference,
                              parsed.raw_status, parsed.amount_authorized,
                              parsed.amount_captured, failure)
    failure = validation_failure(result, authorize=authorize)
    status = PaymentStatus.DECLINED if authorize else current
    return ProviderResult(Outcome.DECLINED, status, failure=failure)


def parse_refund_transaction(txn: Any) -> RefundResult:
    raw = getattr(txn, "status", None)
    status, _mapped = map_refund_status(raw if isinstance(raw, str) else None)
    failed = status is RefundStatus.FAILED
    return RefundResult(
        outcome=Outcome.DECLINED if failed and raw in ("processor_declined", "gateway_rejected",
                                                       "failed") else Outcome.SUCCEEDED,
        status=status,
        provider_reference=_str(getattr(txn, "id", None)),
        raw_status=raw if isinstance(raw, str) else None,
        failure=decline_failure(txn) if failed else None,
    )


def parse_refund_result(result: Any) -> RefundResult:
    if getattr(result, "is_success", False):
        return parse_refund_transaction(result.transaction)
    txn = getattr(result, "transaction", None)
    if txn is not None and getattr(txn, "type", None) == "credit":
        parsed = parse_refund_transaction(txn)
        failure = parsed.failure or decline_failure(txn)
        return RefundResult(Outcome.DECLINED, RefundStatus.FAILED, parsed.provider_reference,
                            parsed.raw_status, failure)
    failure = validation_failure(result, authorize=False)
    return RefundResult(Outcome.DECLINED, RefundStatus.FAILED, failure=failure)
