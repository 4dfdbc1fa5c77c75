"""routing.rules: condition matching (SPEC section 7)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.rules import Conditions, RoutingTable, Rule
from routing.select import RouteRequest

BASE = RouteRequest(
    payment_id="pay_1",
    amount=1250,
    currency="EUR",
    country="DE",
    brand="visa",
    merchant_id="acme",
    metadata={"cart": "c-77", "channel": "web"},
)


@pytest.mark.parametrize(
    ("conditions", "request_changes", "expected_reason"),
    [
        (Conditions(currencies=("EUR", "GBP")), {}, None),
        (Conditions(currencies=("EUR", "GBP")), {"currency": "USD"},
         "currency USD not in [EUR, GBP]"),
        (Conditions(amount_min=1250), {}, None),  # inclusive
        (Conditions(amount_min=1251), {}, "amount 1250 below min 1251"),
        (Conditions(amount_max=1250), {}, None),  # inclusive
        (Conditions(amount_max=1249), {}, "amount 1250 above max 1249"),
        (Conditions(amount_min=0, amount_max=10**12), {}, None),
        (Conditions(countries=("DE", "FR")), {}, None),
        (Conditions(countries=("DE", "FR")), {"country": "US"}, "country US not in [DE, FR]"),
        (Conditions(countries=("DE",)), {"country": None},
         "no customer country (rule needs [DE])"),
        (Conditions(brands=("visa", "mastercard")), {}, None),
        (Conditions(brands=("visa",)), {"brand": "VISA"}, None),  # case-insensitive
        (Conditions(brands=("amex",)), {}, "brand visa not in [amex]"),
        (Conditions(brands=("amex",)), {"brand": None},
         "no payment_method brand (rule needs [amex])"),
        (Conditions(merchants=("acme",)), {}, None),
        (Conditions(merchants=("globex",)), {}, "merchant acme not in [globex]"),
        (Conditions(merchants=("globex",)), {"merchant_id": None},
         "no merchant (rule needs [globex])"),
        (Conditions(metadata={"cart": "c-77"}), {}, None),
        (Conditions(metadata={"cart": "c-77", "channel": "web"}), {}, None),
        (Conditions(metadata={"channel": "app"}), {},
         "metadata channel='web' (rule needs channel='app')"),
        (Conditions(metadata={"tier": "gold"}), {},
         "metadata tier missing (rule needs tier='gold')"),
    ],
)
def test_each_condition_type(conditions: Conditions, request_changes: dict[str, object],
                             expected_reason: str | None) -> None:
    request = replace(BASE, **request_changes)  # type: ignore[arg-type]
    assert conditions.mismatch(request) == expected_reason
    assert conditions.matches(request) is (expected_reason is None)


def test_conditions_are_anded_and_first_failure_is_reported() -> None:
    cond = Conditions(currencies=("EUR",), amount_max=5000, countries=("DE",),
                      brands=("visa",), merchants=("acme",), metadata={"channel": "web"})
    assert cond.matches(BASE)
    assert not cond.is_catch_all
    for change, reason_start in [
        ({"currency": "USD"}, "currency"),
        ({"amount": 5001}, "amount"),
        ({"country": "FR"}, "country"),
        ({"brand": "amex"}, "brand"),
        ({"merchant_id": "globex"}, "merchant"),
        ({"metadata": {"channel": "app"}}, "metadata"),
    ]:
        req = replace(BASE, **change)  # type: ignore[arg-type]
        reason = cond.mismatch(req)
        assert reason is not None and reason.startswith(reason_start), (change, reason)
        assert not cond.matches(req)


def test_empty_conditions_are_a_catch_all() -> None:
    assert Conditions().is_catch_all
    assert Conditions().describe() == "no conditions (catch-all)"
    for attr, value in [("currencies", ("EUR",)), ("amount_min", 0), ("amount_max", 1),
                        ("countries", ("DE",)), ("brands", ("visa",)),
                        ("merchants", ("acme",)), ("metadata", {"k": "v"})]:
        assert not replace(Conditions(), **{attr: value}).is_catch_all, attr  # type: ignore[arg-type]


def test_describe_lists_every_condition() -> None:
    cond = Conditions(currencies=("EUR",), amount_min=1, amount_max=500000,
                      countries=("DE", "FR"), brands=("visa",), merchants=("acme",),
                      metadata={"tier": "gold"})
    assert cond.describe() == (
        "currency in [EUR] and amount >= 1 and amount <= 500000 and country in [DE, FR] "
        "and brand in [visa] and merchant in [acme] and metadata tier='gold'"
    )


@given(
    amount=st.integers(min_value=1, max_value=10**12),
    currency=st.from_regex(r"\A[A-Z]{3}\Z"),
    country=st.none() | st.from_regex(r"\A[A-Z]{2}\Z"),
    brand=st.none() | st.text(max_size=10),
    merchant=st.none() | st.text(max_size=10),
    metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_catch_all_matches_every_request(amount: int, currency: str, country: str | None,
                                         brand: str | None, merchant: str | None,
                                         metadata: dict[str, str]) -> None:
    req = RouteRequest("pay_x", amount, currency, country, brand, merchant, metadata)
    assert Conditions().matches(req)


def test_rule_provider_names_and_table_lookup() -> None:
    split = Rule(name="s", split=(("a", 70), ("b", 30)), fallback=("c",))
    plain = Rule(name="p", providers=("b", "a"))
    assert split.is_split and not plain.is_split
    assert split.provider_names() == ("a", "b", "c")
    table = RoutingTable(version="0" * 12, rules=(split, plain), source="x.yaml")
    assert table.rule("p") is plain
    with pytest.raises(KeyError):
        table.rule("missing")
