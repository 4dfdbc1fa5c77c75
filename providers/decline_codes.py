"""The canonical decline codes: the vocabulary of a payment's ``failure.decline_code``.

The gateway speaks Stripe's published card decline codes (https://docs.stripe.com/declines/codes);
each provider's table maps its own codes into them (Adyen ``refusalReasonCode`` ->
``providers/adyen/parse.py``, Braintree processor response codes ->
``providers/braintree/parse.py``), adding a few where Stripe has no equivalent. Routing rules
name these codes in ``cascade_on`` (SPEC 7.1); :func:`canonical_decline_codes` is what they
are checked against.
"""

from __future__ import annotations

#: Stripe's card decline codes, as published.
STRIPE_DECLINE_CODES: frozenset[str] = frozenset({
    "authentication_required", "approve_with_id", "call_issuer", "card_not_supported",
    "card_velocity_exceeded", "currency_not_supported", "do_not_honor", "do_not_try_again",
    "duplicate_transaction", "expired_card", "fraudulent", "generic_decline",
    "incorrect_number", "incorrect_cvc", "incorrect_pin", "incorrect_zip",
    "insufficient_funds", "invalid_account", "invalid_amount", "invalid_cvc",
    "invalid_expiry_month", "invalid_expiry_year", "invalid_number", "invalid_pin",
    "issuer_not_available", "lost_card", "merchant_blacklist",
    "new_account_information_available", "no_action_taken", "not_permitted",
    "offline_pin_required", "online_or_offline_pin_required", "pickup_card",
    "pin_try_exceeded", "processing_error", "reenter_transaction", "restricted_card",
    "revocation_of_all_authorizations", "revocation_of_authorization", "security_violation",
    "service_not_allowed", "stolen_card", "stop_payment_order", "testmode_decline",
    "transaction_not_allowed", "try_again_later", "withdrawal_count_limit_exceeded",
})


def canonical_decline_codes() -> dict[str, tuple[str, ...]]:
    """Every canonical decline code -> the provider types that can answer it."""
    from providers.registry import DECLARATIONS  # the declarations import provider tables

    out: dict[str, list[str]] = {}
    for decl in DECLARATIONS.values():
        for code in decl.decline_codes:
            out.setdefault(code, []).append(decl.type)
    return {code: tuple(types) for code, types in sorted(out.items())}


__all__ = ["STRIPE_DECLINE_CODES", "canonical_decline_codes"]
