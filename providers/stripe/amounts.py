"""ISO minor units <-> Stripe's ``amount`` integers.

Stripe's rules, from its published currency documentation (docs.stripe.com/currencies:
"Zero-decimal currencies", "Three-decimal currencies", "Special cases"; summarised in
``../shared/provider-specs/README.md``):

* zero-decimal currencies: the amount is in whole units (MGA is two-decimal in ISO 4217,
  so ISO minor units are divided by 100 and must be a multiple of 100);
* three-decimal currencies (BHD, JOD, KWD, OMR, TND): three decimals, and the last digit
  must be 0 (KWD 5124 cannot be charged);
* ISK: zero-decimal in ISO 4217 but sent two-decimal by Stripe (ISO ``550`` -> ``55000``);
  amounts are therefore always multiples of 100 on the wire;
* every other currency: two decimals.

``HUF`` and ``TWD`` are two-decimal for charges (Stripe's whole-unit rule for them
applies to payouts, not to PaymentIntents).
"""

from __future__ import annotations

from providers.amounts import AmountError, rescale
from providers.currency import minor_unit

ZERO_DECIMAL: frozenset[str] = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
THREE_DECIMAL: frozenset[str] = frozenset("BHD JOD KWD OMR TND".split())


def wire_exponent(currency: str) -> int:
    c = currency.upper()
    if c in ZERO_DECIMAL:
        return 0
    if c in THREE_DECIMAL:
        return 3
    return 2


def to_wire(amount: int, currency: str) -> int:
    """The Stripe ``amount`` for ``amount`` ISO minor units of ``currency``."""
    c = currency.upper()
    wire = rescale(amount, minor_unit(c), wire_exponent(c), f"Stripe {c}")
    if c in THREE_DECIMAL and wire % 10:
        raise AmountError(f"Stripe {c}: {amount} cannot be charged: Stripe needs the last of "
                          "the three decimals to be 0")
    return wire


def from_wire(wire: int, currency: str) -> int:
    """A Stripe ``amount`` back in ISO minor units (exact, or AmountError)."""
    c = currency.upper()
    return rescale(wire, wire_exponent(c), minor_unit(c), f"Stripe {c} answer")
