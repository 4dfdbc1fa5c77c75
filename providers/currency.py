"""ISO 4217 currencies of the merchant API (SPEC section 3).

Codes and minor units come from the maintained ``iso4217`` package, which ships the
ISO 4217 maintenance agency's table (list one, with the minor-unit column) and is
updated when ISO amends it -- never from a hand-written list. A code that is not in the
table, or has no minor unit there (funds codes, precious metals, ``XXX``, ``XTS``:
"N.A." in ISO's table), is not a currency a card payment can be made in.

Merchant amounts are integers in the ISO minor unit (``JPY 500`` = 500 yen,
``KWD 1230`` = 1.230 dinars). Each provider package converts them to its own wire
units (``providers/<name>/amounts.py``).
"""

from __future__ import annotations

from functools import cache

from iso4217 import Currency


class UnknownCurrency(ValueError):
    """Not an ISO 4217 code, or one without a minor unit (not tradeable)."""


@cache
def minor_unit(code: str) -> int:
    """The ISO 4217 minor unit (exponent) of ``code``: EUR 2, JPY 0, KWD 3."""
    try:
        currency = Currency(code)
    except ValueError:
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency code") from None
    if currency.exponent is None:
        raise UnknownCurrency(f"{code} has no minor unit in ISO 4217 (a fund, metal or test "
                              "code): payments cannot be made in it")
    return int(currency.exponent)


def tradeable() -> frozenset[str]:
    """Every ISO 4217 code with a minor unit."""
    return frozenset(c.code for c in Currency if c.exponent is not None)
