"""routing.select: first match, sticky weighted split, fallback, capability filter."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.loader import load_routing
from routing.rules import Conditions, RoutingTable, Rule
from routing.select import (
    ExclusionKind,
    NoRouteError,
    RouteRequest,
    decide,
    rule_order,
    split_bucket,
    split_order,
)
from tests.paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "routing"
ALL = frozenset({"USD", "EUR", "GBP", "JPY"})


@dataclass(frozen=True)
class P:
    currencies: frozenset[str]


PROVIDERS = {"stripe": P(ALL), "braintree": P(frozenset({"USD", "EUR"})),
             "adyen": P(frozenset({"EUR", "GBP", "JPY"}))}


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return load_routing(FIXTURES / "valid.yaml", PROVIDERS)


def req(**kw: object) -> RouteRequest:
    base = RouteRequest(payment_id="pay_1", amount=1000, currency="GBP", country="GB",
                        brand="visa", merchant_id="acme", metadata={})
    return replace(base, **kw)  # type: ignore[arg-type]


def ids_with_bucket(lo: int, hi: int, n: int = 1) -> list[str]:
    """Payment ids whose split bucket is in [lo, hi)."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        pid = f"pay_{i}"
        if lo <= split_bucket(pid) < hi:
            out.append(pid)
        i += 1
    return out


# --- first match -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"currency": "EUR", "amount": 200000, "country": "DE"}, "eur-big"),  # before eur-eu
        ({"currency": "EUR", "amount": 100000, "country": "US"}, "eur-big"),  # min inclusive
        ({"currency": "EUR", "amount": 500001, "country": "DE"}, "eur-eu"),   # above max
        ({"currency": "EUR", "amount": 50, "country": "FR"}, "eur-eu"),
        ({"currency": "USD", "brand": "amex"}, "usd-split"),  # usd-split precedes amex
        ({"currency": "EUR", "country": "US", "brand": "Amex"}, "amex"),
        ({"merchant_id": "globex", "metadata": {"tier": "gold"}}, "vip"),
        ({"merchant_id": "globex", "metadata": {"tier": "silver"}}, "default"),
        ({"merchant_id": "acme", "metadata": {"tier": "gold"}}, "default"),
        ({"currency": "EUR", "country": None, "brand": None}, "default"),
        ({}, "default"),
    ],
)
def test_first_match_wins(table: RoutingTable, changes: dict[str, object], rule: str) -> None:
    decision = decide(table, req(**changes), PROVIDERS)
    assert decision.rule == rule
    assert decision.version == table.version


def test_priority_list_order_and_dedup(table: RoutingTable) -> None:
    d = decide(table, req(merchant_id="globex", metadata={"tier": "gold"}), PROVIDERS)
    assert d.rule == "vip"
    assert d.candidates == ("stripe", "adyen")  # [stripe, stripe, adyen] -> first kept
    assert d.excluded == ()
    assert d.split_bucket is None and d.split_choice is None
    d = decide(table, req(currency="EUR", country="FR"), PROVIDERS)
    assert d.candidates == ("adyen", "stripe")


def test_no_matching_rule_raises() -> None:
    t = RoutingTable("v", (Rule("eur", Conditions(currencies=("EUR",)), ("adyen",)),), "x")
    with pytest.raises(NoRouteError):
        decide(t, req(currency="USD"), PROVIDERS)


# --- split -----------------------------------------------------------------------------


def test_split_bucket_is_deterministic_and_in_range() -> None:
    for i in range(1000):
        pid = f"pay_{i}"
        b = split_bucket(pid)
        assert 0 <= b < 100
        assert split_bucket(pid) == b
    # a known value pins the algorithm: sha256(id)[:8] big-endian mod 100
    import hashlib
    digest = hashlib.sha256(b"pay_explain").digest()
    assert split_bucket("pay_explain") == int.from_bytes(digest[:8], "big") % 100


def test_same_payment_id_always_gets_the_same_route(table: RoutingTable) -> None:
    for i in range(200):
        request = req(payment_id=f"pay_{i}", currency="USD")
        first = decide(table, request, PROVIDERS)
        reloaded = load_routing(FIXTURES / "valid.yaml", PROVIDERS) if i % 50 == 0 else table
        for _ in range(3):
            again = decide(reloaded, replace(request, amount=request.amount + 1), PROVIDERS)
            assert again.candidates == first.candidates
            assert again.split_choice == first.split_choice


def test_split_order_chosen_then_weight_desc_then_fallback() -> None:
    split = (("a", 20), ("b", 50), ("c", 30))  # buckets a: 0-19, b: 20-69, c: 70-99
    assert split_order(split, 0) == ("a", "b", "c")
    assert split_order(split, 19) == ("a", "b", "c")
    assert split_order(split, 20) == ("b", "c", "a")
    assert split_order(split, 69) == ("b", "c", "a")
    assert split_order(split, 70) == ("c", "b", "a")
    assert split_order(split, 99) == ("c", "b", "a")
    # equal weights keep the written order after the chosen one
    assert split_order((("x", 25), ("y", 25), ("z", 50)), 60) == ("z", "x", "y")
    rule = Rule("s", split=split, fallback=("d", "b"))
    [pid] = ids_with_bucket(70, 100)
    assert rule_order(rule, pid) == ("c", "b", "a", "d")  # fallback 'b' deduplicated


def test_split_decision_candidates(table: RoutingTable) -> None:
    [to_stripe] = ids_with_bucket(0, 70)
    [to_braintree] = ids_with_bucket(70, 100)
    d = decide(table, req(payment_id=to_stripe, currency="USD"), PROVIDERS)
    assert (d.rule, d.split_choice) == ("usd-split", "stripe")
    assert d.candidates == ("stripe", "braintree")
    assert d.excluded == (("adyen", "currency USD not supported"),)  # fallback filtered
    assert d.split_bucket is not None and d.split_bucket < 70
    d = decide(table, req(payment_id=to_braintree, currency="USD"), PROVIDERS)
    assert d.split_choice == "braintree"
    assert d.candidates == ("braintree", "stripe")


def test_split_fallback_order_when_it_supports_the_currency() -> None:
    t = RoutingTable("v", (Rule("s", split=(("stripe", 70), ("braintree", 30)),
                                fallback=("adyen",)),), "x")
    [pid] = ids_with_bucket(70, 100)
    d = decide(t, req(payment_id=pid, currency="EUR"), PROVIDERS)
    assert d.candidates == ("braintree", "stripe", "adyen")


@pytest.mark.parametrize("weights", [(70, 30), (50, 50), (90, 10), (20, 50, 30), (1, 99)])
def test_split_distribution_within_3_percent(weights: tuple[int, ...]) -> None:
    names = [f"p{i}" for i in range(len(weights))]
    rule = Rule("s", split=tuple(zip(names, weights, strict=True)))
    rng = random.Random(1234)
    n = 10_000
    counts = Counter(rule_order(rule, f"pay_{rng.getrandbits(96):024x}")[0] for _ in range(n))
    for name, weight in zip(names, weights, strict=True):
        share = counts[name] / n * 100
        assert abs(share - weight) <= 3, (name, weight, share)


@settings(max_examples=200)
@given(
    payment_id=st.text(min_size=1, max_size=40),
    weights=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=5)
    .filter(lambda w: sum(w) <= 100),
)
def test_split_properties(payment_id: str, weights: list[int]) -> None:
    weights = [*weights[:-1], weights[-1] + 100 - sum(weights)]  # make the sum 100
    split = tuple((f"p{i}", w) for i, w in enumerate(weights))
    order = split_order(split, split_bucket(payment_id))
    assert sorted(order) == sorted(n for n, _ in split)  # a permutation
    assert order == split_order(split, split_bucket(payment_id))  # sticky
    # the bucket lies inside the chosen provider's cumulative weight range
    bounds, upper = {}, 0
    for name, w in split:
        bounds[name] = (upper, upper + w)
        upper += w
    lo, hi = bounds[order[0]]
    assert lo <= split_bucket(payment_id) < hi
    rest = [dict(split)[n] for n in order[1:]]
    assert rest == sorted(rest, reverse=True)


# --- capability filtering --------------------------------------------------------------


def test_currency_filter_with_reason() -> None:
    t = RoutingTable("v", (Rule("d", providers=("braintree", "adyen", "stripe")),), "x")
    d = decide(t, req(currency="JPY"), PROVIDERS)
    assert d.candidates == ("adyen", "stripe")
    assert d.excluded == (("braintree", "currency JPY not supported"),)
    d = decide(t, req(currency="CHF"), PROVIDERS)
    assert d.candidates == ()
    assert d.excluded == (("braintree", "currency CHF not supported"),
                          ("adyen", "currency CHF not supported"),
                          ("stripe", "currency CHF not supported"))


def test_provider_tokens_filter() -> None:
    t = RoutingTable("v", (Rule("d", providers=("stripe", "adyen", "braintree")),), "x")
    d = decide(t, req(currency="EUR", provider_tokens=frozenset({"adyen", "braintree"})),
               PROVIDERS)
    assert d.candidates == ("adyen", "braintree")
    assert d.excluded == (("stripe", "no provider token"),)
    # currency is checked first: one reason per provider
    d = decide(t, req(currency="JPY", provider_tokens=frozenset({"stripe"})), PROVIDERS)
    assert d.candidates == ("stripe",)
    assert d.excluded == (("adyen", "no provider token"),
                          ("braintree", "currency JPY not supported"))
    # no provider_tokens (a single token) -> no token filtering
    assert decide(t, req(currency="EUR"), PROVIDERS).candidates == (
        "stripe", "adyen", "braintree")


def test_provider_missing_from_config_is_excluded() -> None:
    t = RoutingTable("v", (Rule("d", providers=("gone", "stripe")),), "x")
    d = decide(t, req(), PROVIDERS)
    assert d.candidates == ("stripe",)
    assert d.excluded == (("gone", "provider not configured"),)


def test_excluded_duplicates_reported_once() -> None:
    t = RoutingTable("v", (Rule("d", providers=("braintree", "stripe", "braintree")),), "x")
    d = decide(t, req(currency="GBP"), PROVIDERS)
    assert d.excluded == (("braintree", "currency GBP not supported"),)
    assert d.candidates == ("stripe",)


def test_from_body() -> None:
    body = {"amount": 1250, "currency": "EUR", "capture": "manual",
            "payment_method": {"type": "card", "token": "tok_visa", "brand": "visa",
                               "provider_tokens": {"adyen": "t1", "stripe": "t2"}},
            "reference": "order-1842", "customer": {"country": "DE"},
            "metadata": {"cart": "c-77"}}
    r = RouteRequest.from_body(body, payment_id="pay_9", merchant_id="acme")
    assert r == RouteRequest("pay_9", 1250, "EUR", "DE", "visa", "acme", {"cart": "c-77"},
                             frozenset({"adyen", "stripe"}))
    minimal = RouteRequest.from_body({"amount": 5, "currency": "USD",
                                      "payment_method": {"token": "t"}}, payment_id="p")
    assert minimal == RouteRequest("p", 5, "USD")
    assert minimal.provider_tokens is None


@dataclass(frozen=True)
class Typed:
    currencies: frozenset[str]
    type: str


def test_each_exclusion_has_a_kind() -> None:
    """The 400 a merchant gets for an unchargeable payment is chosen by these kinds, not by
    the reason text (which is for people and `gateway route`)."""
    providers = {"adyen": P(frozenset({"KWD"})), "braintree": P(frozenset({"USD"})),
                 "stripe": Typed(frozenset({"KWD", "EUR"}), "stripe")}
    t = RoutingTable("v", (Rule("d", providers=("gone", "braintree", "stripe", "adyen")),), "x")
    # Stripe takes KWD only with the last of its three decimals 0
    d = decide(t, req(currency="KWD", amount=615,
                      provider_tokens=frozenset({"gone", "braintree", "stripe"})), providers)
    assert d.candidates == ()
    assert dict(d.exclusion_kinds) == {
        "gone": ExclusionKind.NOT_CONFIGURED, "braintree": ExclusionKind.CURRENCY,
        "stripe": ExclusionKind.AMOUNT_NOT_REPRESENTABLE, "adyen": ExclusionKind.NO_TOKEN}
    assert [name for name, _ in d.excluded] == ["gone", "braintree", "stripe", "adyen"]


def test_three_ds_payments_skip_providers_that_cannot_challenge() -> None:
    """A payment method that needs 3-D Secure never goes to a provider whose declaration
    lacks the capability (Braintree: client-side only), whatever the split bucket."""
    providers = {"stripe": Typed(ALL, "stripe"), "braintree": Typed(ALL, "braintree"),
                 "adyen": Typed(ALL, "adyen")}
    t = RoutingTable("v", (Rule("d", split=(("braintree", 50), ("stripe", 50)),
                                fallback=("adyen",)),), "x")
    for pid in ids_with_bucket(0, 50, 3) + ids_with_bucket(50, 100, 3):
        d = decide(t, req(payment_id=pid, three_ds_required=True), providers)
        assert d.candidates[0] == "stripe" and "braintree" not in d.candidates
        assert d.exclusion_kinds == {"braintree": ExclusionKind.THREE_DS_UNSUPPORTED}
        assert dict(d.excluded)["braintree"].startswith(
            "3-D Secure challenge not supported by braintree")
        plain = decide(t, req(payment_id=pid), providers)
        assert "braintree" in plain.candidates and not plain.excluded


@pytest.mark.parametrize(("pm", "needed"), [
    ({"token": "tok_visa"}, False),
    ({"token": "tok_visa", "three_d_secure": "required"}, True),
    ({"token": "tok_visa", "three_d_secure": "automatic"}, False),
    ({"token": "tok_3ds"}, True),  # the shared sandbox token that always challenges
    ({"provider_tokens": {"a": "tok_visa", "b": "tok_3ds"}}, True),
    ({"token": "pm_card_threeDSecure2Required"}, False),  # Stripe's own: opaque here
])
def test_what_says_a_payment_needs_three_ds(pm: dict[str, object], needed: bool) -> None:
    body = {"amount": 5, "currency": "USD", "payment_method": {"type": "card", **pm}}
    assert RouteRequest.from_body(body, payment_id="p").three_ds_required is needed
