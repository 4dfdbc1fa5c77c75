"""Minor units <-> Braintree decimal amount strings, by currency exponent.

Braintree amounts are decimal strings in the currency's major unit ("10.50" EUR,
"500" JPY, "1.234" KWD), with the currency's ISO 4217 decimals (:mod:`providers.currency`).
The gateway counts integers in the minor unit. Conversion is exact and integer-only: no
float is ever involved.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from providers.amounts import AmountError
from providers.currency import UnknownCurrency, minor_unit

__all__ = ["AmountError", "exponent", "to_decimal_string", "to_minor_units"]

_AMOUNT = re.compile(r"^(\d+)(?:\.(\d+))?$")


def exponent(currency: str) -> int:
    """The ISO 4217 minor unit: Braintree amounts use the currency's ISO decimals."""
    try:
        return minor_unit(currency.upper())
    except UnknownCurrency as exc:
        raise AmountError(str(exc)) from None


def to_decimal_string(minor: int, currency: str) -> str:
    """``1050, "EUR" -> "10.50"``; ``500, "JPY" -> "500"``; ``1234, "KWD" -> "1.234"``."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise AmountError(f"amount must be an integer number of minor units, got {minor!r}")
    if minor < 0:
        raise AmountError("amount must not be negative")
    exp = exponent(currency)
    if exp == 0:
        return str(minor)
    whole, frac = divmod(minor, 10**exp)
    return f"{whole}.{frac:0{exp}d}"


def to_minor_units(amount: str | Decimal, currency: str) -> int:
    """Parse a Braintree amount back into minor units, exactly.

    Extra decimals are accepted only when they are zeros (``"500.00"`` JPY -> 500);
    anything that would need rounding raises :class:`AmountError`.
    """
    if isinstance(amount, Decimal):
        try:
            text = format(amount, "f")
        except (ValueError, InvalidOperation) as exc:  # pragma: no cover - NaN/inf
            raise AmountError(f"invalid amount {amount!r}") from exc
    elif isinstance(amount, str):
        text = amount.strip()
    else:
        raise AmountError(f"amount must be a decimal string, got {type(amount).__name__}")
    match = _AMOUNT.match(text)
    if match is None:
        raise AmountError(f"invalid amount {amount!r}")
    whole, frac = match.group(1), match.group(2) or ""
    exp = exponent(currency)
    if len(frac) > exp:
        if frac[exp:].strip("0"):
            raise AmountError(f"amount {text} has more decimals than {currency.upper()} allows")
        frac = frac[:exp]
    return int(whole) * 10**exp + (int(frac.ljust(exp, "0")) if exp else 0)
