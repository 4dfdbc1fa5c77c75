"""One currency model (ISO 4217 from the ``iso4217`` package) and per-provider wire units,
checked currency by currency against the providers' own published tables -- never against
the adapters' tables.

Witness data used here:
* Adyen: its published currencyList.mjs (vendored at providers/adyen/published/, MIT),
  parsed by this test itself;
* Stripe: the rules of docs.stripe.com/currencies ("Zero-decimal currencies",
  "Three-decimal currencies", "Special cases"), written out below from that page;
* Braintree: amounts in the currency's ISO 4217 decimals, read from ``iso4217`` directly.
"""

from __future__ import annotations

import re

import pytest
from iso4217 import Currency

from providers.adyen import amounts as adyen_amounts
from providers.amounts import AmountError, wire_refusal
from providers.braintree.amounts import to_decimal_string, to_minor_units
from providers.currency import UnknownCurrency, minor_unit, tradeable
from providers.stripe import amounts as stripe_amounts
from tests.paths import REPO

ROOT = REPO
ISO = sorted(c.code for c in Currency if c.exponent is not None)

# docs.stripe.com/currencies, as published (not the adapter's copy).
STRIPE_DOCS_ZERO_DECIMAL = {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG",
                            "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
STRIPE_DOCS_THREE_DECIMAL = {"BHD", "JOD", "KWD", "OMR", "TND"}


def adyen_published_decimals() -> dict[str, int]:
    text = (ROOT / "providers/adyen/published/currencyList.mjs").read_text()
    rows = re.findall(r"Code:\s*'([A-Z]{3})'\s*,\s*Currency:\s*'(?:[^'\\]|\\.)*'\s*,"
                      r"\s*Decimals:\s*'(\d)'", text)
    assert len(rows) > 100, "the published table did not parse"
    return {code: int(decimals) for code, decimals in rows}


ADYEN = adyen_published_decimals()


# --------------------------------------------------------------- the merchant API's currencies


def test_iso_minor_units_come_from_the_iso_table() -> None:
    assert (minor_unit("EUR"), minor_unit("JPY"), minor_unit("KWD"), minor_unit("CLP"),
            minor_unit("ISK"), minor_unit("MGA"), minor_unit("IDR")) == (2, 0, 3, 0, 0, 2, 2)
    assert set(ISO) == tradeable() and len(ISO) > 150


@pytest.mark.parametrize("code", ["ZZZ", "XXX", "XTS", "XAU", "BTC", "eur", "EURO", ""])
def test_unknown_or_untradeable_codes_are_refused(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        minor_unit(code)


# --------------------------------------------------------------- every currency x provider


@pytest.mark.parametrize("code", ISO)
def test_adyen_wire_amount_matches_adyens_published_decimals(code: str) -> None:
    iso = minor_unit(code)
    if code not in ADYEN:
        assert wire_refusal("adyen", 10 ** max(iso, 2), code) is not None
        return
    scale = ADYEN[code] - iso
    assert adyen_amounts.wire_exponent(code) == ADYEN[code]
    sample = 12 * 10 ** max(0, -scale)  # a value that converts exactly
    expected = sample * 10 ** scale if scale >= 0 else sample // 10 ** -scale
    assert adyen_amounts.to_wire(sample, code) == expected
    assert adyen_amounts.from_wire(expected, code) == sample
    if scale < 0:  # Adyen counts fewer decimals: a value needing them is refused
        with pytest.raises(AmountError):
            adyen_amounts.to_wire(sample + 1, code)


@pytest.mark.parametrize("code", ISO)
def test_stripe_wire_amount_follows_stripes_published_rules(code: str) -> None:
    iso = minor_unit(code)
    if code in STRIPE_DOCS_ZERO_DECIMAL:
        stripe_exp = 0
    elif code in STRIPE_DOCS_THREE_DECIMAL:
        stripe_exp = 3
    else:
        stripe_exp = 2  # including ISK, "two-decimal on the wire" per Stripe
    sample = 120 * 10 ** max(0, iso - stripe_exp)
    expected = sample * 10 ** (stripe_exp - iso) if stripe_exp >= iso \
        else sample // 10 ** (iso - stripe_exp)
    assert stripe_amounts.to_wire(sample, code) == expected
    assert stripe_amounts.from_wire(expected, code) == sample
    if code in STRIPE_DOCS_THREE_DECIMAL:
        with pytest.raises(AmountError):
            stripe_amounts.to_wire(sample + 1, code)  # the last digit must be 0
    if code == "ISK":
        assert expected % 100 == 0


@pytest.mark.parametrize("code", ISO)
def test_braintree_decimal_string_uses_the_iso_decimals(code: str) -> None:
    exponent = Currency(code).exponent
    assert exponent is not None
    text = to_decimal_string(1234 * 10**exponent + (7 if exponent else 0), code)
    whole, _, frac = text.partition(".")
    assert whole == "1234" and len(frac) == exponent
    assert to_minor_units(text, code) == 1234 * 10**exponent + (7 if exponent else 0)


@pytest.mark.parametrize(("provider", "amount", "currency", "wire"), [
    ("stripe", 500, "JPY", 500), ("stripe", 55000, "MGA", 550), ("stripe", 550, "ISK", 55000),
    ("stripe", 1230, "KWD", 1230), ("stripe", 1050, "EUR", 1050),
    ("adyen", 500, "CLP", 50000), ("adyen", 550, "ISK", 55000), ("adyen", 1000, "IDR", 10),
    ("adyen", 1200, "CVE", 12), ("adyen", 1230, "KWD", 1230), ("adyen", 500, "JPY", 500),
])
def test_the_review_cases(provider: str, amount: int, currency: str, wire: int) -> None:
    """The currencies the review found 100x off (MGA, ISK at Stripe; CVE, IDR, CLP, ISK
    at Adyen)."""
    module = stripe_amounts if provider == "stripe" else adyen_amounts
    assert module.to_wire(amount, currency) == wire


@pytest.mark.parametrize(("provider", "amount", "currency"), [
    ("stripe", 5124, "KWD"), ("stripe", 5501, "MGA"), ("adyen", 1050, "IDR"),
    ("adyen", 1, "CVE"), ("adyen", 100, "MGA"),
])
def test_amounts_a_provider_cannot_take_exactly_are_refused_not_rounded(
    provider: str, amount: int, currency: str
) -> None:
    assert wire_refusal(provider, amount, currency) is not None
