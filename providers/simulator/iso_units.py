"""ISO 4217 minor units for the simulators' charges view, from the ``iso4217`` package.

A simulator is a witness: it takes its facts from published data, never from the
gateway's code. Each simulator keeps its provider's own wire decimals (Stripe's
documented rules, Adyen's published table, Braintree's ISO decimals); this module only
answers "how many decimals does ISO 4217 give this currency" straight from the
``iso4217`` package (the ISO maintenance agency's table), so that
``GET /_sim/{provider}/charges`` reports every provider's amounts in the same unit:
the ISO minor units the charge represents.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

from iso4217 import Currency


@cache
def iso_exponent(code: str) -> int | None:
    """ISO 4217 minor unit of ``code`` (EUR 2, JPY 0, KWD 3); None when ISO has none
    (funds, metals, test codes) or does not list the code."""
    try:
        exponent = Currency(code.upper()).exponent
    except ValueError:
        return None
    return None if exponent is None else int(exponent)


def wire_to_iso(value: int, wire_exponent: int, currency: str) -> int | float:
    """``value`` in units of 10**-wire_exponent as ISO minor units of ``currency``.

    Exact when it can be (an int); a value ISO units cannot hold exactly (e.g. Adyen
    CLP 150 = 1.50 CLP, and CLP has no ISO decimals) is reported as the float it is, so
    a test comparing with a merchant's integer amount sees the difference. A currency
    ISO 4217 does not know is reported in wire units unchanged."""
    iso = iso_exponent(currency)
    if iso is None:
        return value
    exact = Fraction(value) * Fraction(10) ** (iso - wire_exponent)
    return int(exact) if exact.denominator == 1 else float(exact)


def iso_to_wire(value: int, wire_exponent: int, currency: str) -> int:
    """ISO minor units of ``currency`` as a provider's wire integer (10**-wire_exponent);
    ValueError when the wire units cannot hold it exactly. A currency ISO 4217 does not
    know is taken as already in wire units."""
    iso = iso_exponent(currency)
    if iso is None:
        return value
    exact = Fraction(value) * Fraction(10) ** (wire_exponent - iso)
    if exact.denominator != 1:
        raise ValueError(f"{value} {currency} minor units is not a whole wire amount")
    return int(exact)
