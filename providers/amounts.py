"""Merchant amounts (integers in the ISO 4217 minor unit) -> each provider's wire units.

Every provider package owns its table in ``providers/<name>/amounts.py`` (taken from that
provider's published data, and tested against it); this module only shares the error
type and the exact integer rescaling, so that no amount is ever rounded silently: a value
a provider cannot represent exactly raises :class:`AmountError` before anything is sent.
"""

from __future__ import annotations


class AmountError(ValueError):
    """An amount that cannot be sent to (or read from) a provider exactly."""


def rescale(amount: int, from_exp: int, to_exp: int, what: str) -> int:
    """``amount`` in units of 10**-from_exp -> units of 10**-to_exp, exactly or not at all."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise AmountError(f"amount must be an integer number of minor units, got {amount!r}")
    if to_exp >= from_exp:
        return amount * 10 ** (to_exp - from_exp)
    step = 10 ** (from_exp - to_exp)
    if amount % step:
        raise AmountError(f"{what}: {amount} cannot be sent exactly (it must be a multiple "
                          f"of {step} in the ISO minor unit)")
    return amount // step


def currency_refusal(provider_type: str | None, currency: str) -> str | None:
    """Why a provider of ``provider_type`` cannot charge ``currency`` at all (Adyen: not in
    its published table), or None."""
    from providers.registry import DECLARATIONS  # the declarations import this module

    decl = DECLARATIONS.get(provider_type or "")
    if decl is None or decl.currency_refusal is None:
        return None
    return decl.currency_refusal(currency)


def wire_refusal(provider_type: str | None, amount: int, currency: str) -> str | None:
    """Why a provider of ``provider_type`` cannot be sent ``amount`` ``currency`` exactly,
    or None when it can (or the type is not registered)."""
    from providers.registry import DECLARATIONS  # the declarations import this module

    decl = DECLARATIONS.get(provider_type or "")
    if decl is None:
        return None
    try:
        decl.amount_to_wire(amount, currency)
    except (AmountError, ValueError) as exc:
        return str(exc)
    return None
