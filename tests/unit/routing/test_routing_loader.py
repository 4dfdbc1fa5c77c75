"""routing.loader: parsing and validation of routing.yaml, with file and line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from routing.loader import (
    RoutingConfigError,
    RoutingIssue,
    load_routing,
    parse_routing,
    version_of,
)
from routing.rules import Conditions
from tests.paths import FIXTURES_DIR, REPO

FIXTURES = FIXTURES_DIR / "routing"
REPO = REPO
PROVIDERS = {"stripe", "braintree", "adyen"}


def issues_of(text: str, providers: set[str] = PROVIDERS) -> list[tuple[int | None, str | None,
                                                                         str]]:
    with pytest.raises(RoutingConfigError) as info:
        parse_routing(text, "routing.yaml", providers)
    for issue in info.value.errors:
        assert issue.file == "routing.yaml"
    return [(i.line, i.rule, i.message) for i in info.value.errors]


# --- valid files ---------------------------------------------------------------------------


def test_valid_fixture_parses_every_field_with_rule_lines() -> None:
    path = FIXTURES / "valid.yaml"
    table = load_routing(path, PROVIDERS)
    assert table.source == str(path)
    assert table.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert [(r.name, r.line) for r in table.rules] == [
        ("eur-big", 4), ("eur-eu", 7), ("usd-split", 13), ("amex", 17), ("vip", 20),
        ("default", 23),
    ]
    big, eu, split, amex, vip, default = table.rules
    assert big.when == Conditions(currencies=("EUR",), amount_min=100000, amount_max=500000)
    assert big.providers == ("adyen",)
    assert eu.when == Conditions(currencies=("EUR",), countries=("DE", "FR"))
    assert eu.providers == ("adyen", "stripe")
    assert split.when == Conditions(currencies=("USD",))  # a single string is accepted
    assert split.providers == ()
    assert split.split == (("stripe", 70), ("braintree", 30))
    assert split.fallback == ("adyen",)
    assert amex.when == Conditions(brands=("amex",))  # lower-cased
    assert vip.when == Conditions(merchants=("globex",), metadata={"tier": "gold"})
    assert vip.providers == ("stripe", "stripe", "adyen")  # repeats allowed, deduped later
    assert default.when.is_catch_all  # `when: {}`


def test_shipped_config_routing_yaml_is_valid() -> None:
    names = {"local_stripe", "local_braintree", "local_adyen"}
    table = load_routing(REPO / "config" / "routing.yaml", names)
    assert table.rules[-1].when.is_catch_all
    assert not any(r.when.is_catch_all for r in table.rules[:-1])
    used = {n for r in table.rules for n in r.provider_names()}
    assert used == names
    usd = next(r for r in table.rules if r.split)
    assert dict(usd.split) == {"local_stripe": 70, "local_braintree": 30}
    assert usd.fallback == ("local_adyen",)


def test_version_is_content_hash_of_raw_bytes() -> None:
    text = "version: 1\nrules:\n  - name: default\n    providers: [stripe]\n"
    table = parse_routing(text, "r.yaml", PROVIDERS)
    assert table.version == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert len(table.version) == 12
    assert version_of(text.encode()) == table.version
    # any byte change (even a comment) changes the version; the same bytes never do
    assert parse_routing(text + "# x\n", "r.yaml", PROVIDERS).version != table.version
    assert parse_routing(text, "other.yaml", PROVIDERS).version == table.version


def test_load_and_parse_agree(tmp_path: Path) -> None:
    text = "# règles de routage\nversion: 1\nrules:\n  - name: default\n    providers: [stripe]\n"
    p = tmp_path / "routing.yaml"
    p.write_text(text, encoding="utf-8")
    loaded = load_routing(p, PROVIDERS)
    assert loaded.version == hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    assert loaded.version == parse_routing(text, str(p), PROVIDERS).version
    assert loaded.rules[0].line == 4


def test_providers_may_be_a_mapping() -> None:
    text = "version: 1\nrules:\n  - name: default\n    providers: [stripe]\n"
    table = parse_routing(text, "r.yaml", {"stripe": object()})
    assert table.rules[0].providers == ("stripe",)


def test_when_null_is_a_catch_all() -> None:
    text = "version: 1\nrules:\n  - name: default\n    when:\n    providers: [stripe]\n"
    assert parse_routing(text, "r.yaml", PROVIDERS).rules[0].when.is_catch_all


# --- error format --------------------------------------------------------------------------


def test_issue_str_format() -> None:
    issue = RoutingIssue("routing.yaml", 12, "usd-split", "split weights sum to 90, must be 100")
    assert str(issue) == "routing.yaml:12: rule 'usd-split': split weights sum to 90, must be 100"
    assert str(RoutingIssue("r.yaml", None, None, "cannot read")) == "r.yaml: cannot read"
    err = RoutingConfigError([issue, RoutingIssue("r.yaml", 1, None, "x")])
    assert str(err).splitlines() == [str(issue), "r.yaml:1: x"]
    assert isinstance(err, ValueError)


def test_many_errors_fixture_reports_all_with_exact_lines() -> None:
    path = FIXTURES / "many_errors.yaml"
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, PROVIDERS)
    f = str(path)
    assert [str(i) for i in info.value.errors] == [
        f"{f}:4: rule 'eur-to-adyen': when.currency: 'eur' is not a 3-letter upper-case "
        "currency code",
        f"{f}:4: rule 'eur-to-adyen': when.country: 'DEU' is not a 2-letter upper-case "
        "country code",
        f"{f}:5: rule 'eur-to-adyen': providers: unknown provider 'paypal' (configured in "
        "gateway.yaml: adyen, braintree, stripe)",
        f"{f}:9: rule 'usd-split': when.amount: min 500 is greater than max 100",
        f"{f}:10: rule 'usd-split': split weights sum to 90, must be 100",
        f"{f}:12: rule 'eur-to-adyen': duplicate rule name (first on line 3)",
        f"{f}:14: rule 'eur-to-adyen': unknown key 'colour' (allowed: name, description, "
        "when, providers, split, fallback, cascade_on)",
        f"{f}:15: rule 'late': unreachable: follows catch-all rule 'eur-to-adyen' (line 12), "
        "which matches every request",
    ]


def test_bad_yaml_fixture_reports_line() -> None:
    path = FIXTURES / "bad_yaml.yaml"
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, PROVIDERS)
    [issue] = info.value.errors
    assert issue.file == str(path)
    assert issue.line == 5  # where the parser gave up ...
    assert issue.message.startswith("invalid YAML: ")
    assert "started on line 4" in issue.message  # ... and where the list was opened


def test_no_catch_all_fixture() -> None:
    with pytest.raises(RoutingConfigError) as info:
        load_routing(FIXTURES / "no_catch_all.yaml", PROVIDERS)
    [issue] = info.value.errors
    assert (issue.line, issue.rule) == (6, "usd")
    assert issue.message.startswith("no catch-all")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RoutingConfigError) as info:
        load_routing(tmp_path / "nope.yaml", PROVIDERS)
    [issue] = info.value.errors
    assert issue.line is None and "cannot read" in issue.message


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_bytes(b"version: 1\n\xff\xfe\n")
    with pytest.raises(RoutingConfigError, match="not valid UTF-8"):
        load_routing(p, PROVIDERS)


RULE_OK = "  - name: default\n    providers: [stripe]\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [(1, None, "empty file")], id="empty"),
        pytest.param("- a\n- b\n", [(1, None, "top level must be a mapping")], id="top-list"),
        pytest.param("rules:\n" + RULE_OK, [(1, None, "missing 'version: 1'")],
                     id="no-version"),
        pytest.param("version: 2\nrules:\n" + RULE_OK,
                     [(1, None, "version: unsupported version 2 (expected 1)")],
                     id="version-2"),
        pytest.param("version: '1'\nrules:\n" + RULE_OK,
                     [(1, None, "version: unsupported version '1' (expected 1)")],
                     id="version-string"),
        pytest.param("version: 1\n", [(1, None, "missing 'rules'")], id="no-rules"),
        pytest.param("version: 1\nrules: {}\n",
                     [(2, None, "rules: expected a list of rules, got a mapping")],
                     id="rules-mapping"),
        pytest.param("version: 1\nrules: []\n", [(2, None, "rules: at least one rule")],
                     id="rules-empty"),
        pytest.param("version: 1\nextra: true\nrules:\n" + RULE_OK,
                     [(2, None, "top level: unknown key 'extra'")], id="unknown-top-key"),
        pytest.param("version: 1\nversion: 1\nrules:\n" + RULE_OK,
                     [(2, None, "top level: duplicate key 'version' (first on line 1)")],
                     id="duplicate-key"),
        pytest.param("version: 1\nrules:\n  - providers: [stripe]\n",
                     [(3, None, "rules[0]: 'name' is required")], id="no-name"),
        pytest.param("version: 1\nrules:\n  - name: 'bad name!'\n    providers: [stripe]\n",
                     [(3, None, "rules[0]: name must be a string")], id="bad-name"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers: [stripe]\n"
                     "    providr: [x]\n",
                     [(5, "d", "unknown key 'providr'")], id="unknown-rule-key"),
        pytest.param("version: 1\nrules:\n  - name: d\n",
                     [(3, "d", "needs 'providers' (a priority list) or 'split'")],
                     id="no-providers-or-split"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers: [stripe]\n"
                     "    split: {stripe: 100}\n",
                     [(5, "d", "use either 'providers' or 'split', not both")],
                     id="providers-and-split"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers: []\n",
                     [(4, "d", "providers: must not be empty")], id="empty-providers"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers: stripe\n",
                     [(4, "d", "providers: expected a list of a provider name, got a scalar")],
                     id="providers-scalar"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers:\n      - stripe\n"
                     "      - paypal\n",
                     [(6, "d", "providers: unknown provider 'paypal'")],
                     id="unknown-provider-line-of-item"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split:\n      stripe: 70\n"
                     "      paypal: 30\n",
                     [(6, "d", "split: unknown provider 'paypal'")], id="unknown-split"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split: {stripe: 100}\n"
                     "    fallback: [adyen, paypal]\n",
                     [(5, "d", "fallback: unknown provider 'paypal'")],
                     id="unknown-fallback"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split: {stripe: 70, adyen: 20}\n",
                     [(4, "d", "split weights sum to 90, must be 100")], id="sum-90"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split: {stripe: 70, adyen: 40}\n",
                     [(4, "d", "split weights sum to 110, must be 100")], id="sum-110"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split:\n      stripe: 100\n"
                     "      adyen: 0\n",
                     [(6, "d", "split: weight of 'adyen' must be a positive integer, got 0")],
                     id="zero-weight"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split:\n      stripe: 110\n"
                     "      adyen: -10\n",
                     [(6, "d", "split: weight of 'adyen' must be a positive integer, got -10")],
                     id="negative-weight"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split: {stripe: 50.5, adyen: 49.5}\n",
                     [(4, "d", "split: weight of 'stripe' must be a positive integer, got 50.5"),
                      (4, "d", "split: weight of 'adyen' must be a positive integer, got 49.5")],
                     id="float-weights"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split: [stripe, adyen]\n",
                     [(4, "d", "split: expected a mapping of provider: weight, got a list")],
                     id="split-list"),
        pytest.param("version: 1\nrules:\n  - name: d\n    split: {}\n",
                     [(4, "d", "split: must not be empty")], id="split-empty"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers: [stripe]\n"
                     "    fallback: [adyen]\n",
                     [(5, "d", "fallback is only valid with 'split'")], id="fallback-no-split"),
        pytest.param("version: 1\nrules:\n  - name: d\n    providers: [stripe]\n"
                     "  - name: d\n    providers: [adyen]\n",
                     [(5, "d", "duplicate rule name (first on line 3)"),
                      (5, "d", "unreachable: follows catch-all rule 'd' (line 3)")],
                     id="duplicate-name"),
        pytest.param("version: 1\nrules:\n  - name: a\n    providers: [stripe]\n"
                     "  - name: b\n    when: {currency: [EUR]}\n    providers: [adyen]\n"
                     "  - name: c\n    providers: [adyen]\n",
                     [(5, "b", "unreachable: follows catch-all rule 'a' (line 3)"),
                      (8, "c", "unreachable: follows catch-all rule 'a' (line 3)")],
                     id="unreachable"),
        pytest.param("version: 1\nrules:\n  - name: a\n    when: {currency: [EUR]}\n"
                     "    providers: [stripe]\n",
                     [(3, "a", "no catch-all")], id="no-catch-all"),
        pytest.param("version: 1\nrules:\n  - name: a\n    when: {currency: [EUR]}\n"
                     "    providers: [stripe]\n  - default\n",
                     [(6, None, "rules[1]: expected a mapping, got a scalar")],
                     id="rule-not-mapping"),
    ],
)
def test_structure_errors(text: str, expected: list[tuple[int, str | None, str]]) -> None:
    got = issues_of(text)
    assert len(got) == len(expected), got
    for (line, rule, message), (eline, erule, eprefix) in zip(got, expected, strict=True):
        assert (line, rule) == (eline, erule), (got, expected)
        assert message.startswith(eprefix), (message, eprefix)


def _when(when_block: str) -> str:
    """A file whose first rule (line 3) has the given `when:` block starting on line 4,
    followed by a catch-all."""
    return ("version: 1\nrules:\n  - name: r\n" + when_block
            + "    providers: [stripe]\n  - name: default\n    providers: [stripe]\n")


@pytest.mark.parametrize(
    ("when_block", "expected"),
    [
        pytest.param("    when: [EUR]\n", [(4, "when: expected a mapping, got a list")],
                     id="when-list"),
        pytest.param("    when: {colour: red}\n", [(4, "when: unknown key 'colour'")],
                     id="when-unknown"),
        pytest.param("    when:\n      currency: [EUR, usd]\n",
                     [(5, "when.currency: 'usd' is not a 3-letter upper-case currency code")],
                     id="currency-lower"),
        pytest.param("    when:\n      currency:\n        - EUR\n        - EURO\n",
                     [(7, "when.currency: 'EURO' is not a 3-letter upper-case currency code")],
                     id="currency-line-of-item"),
        pytest.param("    when: {currency: 978}\n",
                     [(4, "when.currency: 978 is not a 3-letter upper-case currency code")],
                     id="currency-number"),
        pytest.param("    when: {currency: []}\n", [(4, "when.currency: must not be empty")],
                     id="currency-empty"),
        pytest.param("    when: {currency: {EUR: 1}}\n",
                     [(4, "when.currency: expected a list of a 3-letter upper-case currency "
                          "code, got a mapping")], id="currency-mapping"),
        pytest.param("    when:\n      amount: {min: -1}\n",
                     [(5, "when.amount.min: must be a non-negative integer (minor units), "
                          "got -1")], id="amount-negative"),
        pytest.param("    when:\n      amount:\n        max: 12.5\n",
                     [(6, "when.amount.max: must be a non-negative integer (minor units), "
                          "got 12.5")], id="amount-float"),
        pytest.param("    when:\n      amount:\n        max: '100'\n",
                     [(6, "when.amount.max: must be a non-negative integer")],
                     id="amount-string"),
        pytest.param("    when:\n      amount:\n        max: true\n",
                     [(6, "when.amount.max: must be a non-negative integer")],
                     id="amount-bool"),
        pytest.param("    when:\n      amount: {min: 10, max: 5}\n",
                     [(5, "when.amount: min 10 is greater than max 5")], id="amount-min-gt-max"),
        pytest.param("    when:\n      amount: {}\n",
                     [(5, "when.amount: give min and/or max")], id="amount-empty"),
        pytest.param("    when:\n      amount: {minimum: 1}\n",
                     [(5, "when.amount: unknown key 'minimum'")], id="amount-unknown-key"),
        pytest.param("    when:\n      amount: 100\n",
                     [(5, "when.amount: expected a mapping")], id="amount-scalar"),
        pytest.param("    when:\n      country: [DE, deu, USA]\n",
                     [(5, "when.country: 'deu' is not a 2-letter upper-case country code"),
                      (5, "when.country: 'USA' is not a 2-letter upper-case country code")],
                     id="country-bad"),
        pytest.param("    when:\n      brand: [visa, 7]\n",
                     [(5, "when.brand: 7 is not a brand name")], id="brand-not-string"),
        pytest.param("    when:\n      brand: ['']\n",
                     [(5, "when.brand: '' is not a brand name")], id="brand-empty-string"),
        pytest.param("    when:\n      merchant: [[acme]]\n",
                     [(5, "when.merchant: a list is not a merchant id")], id="merchant-nested"),
        pytest.param("    when:\n      metadata:\n        tier: gold\n        level: 3\n",
                     [(7, "when.metadata.level: value must be a string, got 3 (quote it)")],
                     id="metadata-int"),
        pytest.param("    when:\n      metadata: [tier]\n",
                     [(5, "when.metadata: expected a mapping of key: value, got a list")],
                     id="metadata-list"),
        pytest.param("    when:\n      metadata: {}\n",
                     [(5, "when.metadata: must not be empty")], id="metadata-empty"),
        pytest.param("    when:\n      metadata: {1: x}\n",
                     [(5, "when.metadata: keys must be strings")], id="metadata-int-key"),
    ],
)
def test_when_type_errors(when_block: str, expected: list[tuple[int, str]]) -> None:
    got = issues_of(_when(when_block))
    # an invalid `when` never makes the rule a catch-all, so nothing else is reported
    assert len(got) == len(expected), got
    for (line, rule, message), (eline, eprefix) in zip(got, expected, strict=True):
        assert (line, rule) == (eline, "r"), got
        assert message.startswith(eprefix), (message, eprefix)


def test_errors_are_collected_across_rules_in_file_order() -> None:
    text = (
        "version: 1\n"                                  # 1
        "rules:\n"                                      # 2
        "  - name: a\n"                                 # 3
        "    when: {currency: [eur]}\n"                 # 4
        "    providers: [paypal]\n"                     # 5
        "  - name: b\n"                                 # 6
        "    split: {stripe: 50, braintree: 40}\n"      # 7
        "    fallback: [klarna]\n"                      # 8
        "  - name: c\n"                                 # 9
        "    providers: [adyen]\n"                      # 10
    )
    assert issues_of(text) == [
        (4, "a", "when.currency: 'eur' is not a 3-letter upper-case currency code"),
        (5, "a", "providers: unknown provider 'paypal' (configured in gateway.yaml: adyen, "
                 "braintree, stripe)"),
        (7, "b", "split weights sum to 90, must be 100"),
        (8, "b", "fallback: unknown provider 'klarna' (configured in gateway.yaml: adyen, "
                 "braintree, stripe)"),
        (9, "c", "unreachable: follows catch-all rule 'b' (line 6), which matches every "
                 "request"),
    ]


def test_invalid_yaml_reports_line() -> None:
    got = issues_of("version: 1\nrules:\n  - name: a\n    providers: [stripe]\n"
                    "   bad: indentation\n")
    assert len(got) == 1
    line, rule, message = got[0]
    assert line == 5 and rule is None and message.startswith("invalid YAML: ")


def test_tab_indentation_is_invalid_yaml() -> None:
    [(line, _, message)] = issues_of("version: 1\nrules:\n\t- name: a\n")
    assert line == 3 and message.startswith("invalid YAML")


def test_unknown_tag_is_not_a_crash() -> None:
    got = issues_of("version: !!python/int 1\nrules:\n" + RULE_OK)
    assert got == [(1, None, "version: unsupported version an unreadable value (expected 1)")]


def test_merge_keys_are_rejected() -> None:
    text = ("version: 1\nrules:\n  - &base\n    name: a\n    providers: [stripe]\n"
            "  - <<: *base\n    name: b\n")
    got = issues_of(text)
    assert (6, "b", "YAML merge keys (<<) are not supported") in got


def test_no_providers_configured_says_none() -> None:
    [(_, _, message)] = issues_of("version: 1\nrules:\n" + RULE_OK, providers=set())
    assert message == "providers: unknown provider 'stripe' (configured in gateway.yaml: none)"


# --- cascade_on (SPEC 7.1) -------------------------------------------------------------------


def test_cascade_on_is_parsed_deduplicated_and_off_by_default() -> None:
    text = ("version: 1\nrules:\n"
            "  - name: soft\n    when: {currency: [EUR]}\n    providers: [adyen, stripe]\n"
            "    cascade_on: [issuer_not_available, try_again_later, issuer_not_available]\n"
            "  - name: default\n    providers: [stripe]\n")
    table = parse_routing(text, "r.yaml", PROVIDERS)
    assert table.rule("soft").cascade_on == ("issuer_not_available", "try_again_later")
    assert table.rule("default").cascade_on == ()


def test_cascade_on_codes_come_from_the_providers_tables() -> None:
    """Codes only one provider's table produces (Braintree 3000, Adyen 'Blocked Card')
    are canonical too; a code no table produces is refused with its line."""
    from providers.decline_codes import canonical_decline_codes

    known = canonical_decline_codes()
    assert "braintree" in known["processor_network_unavailable"]
    assert "adyen" in known["blocked_card"]
    assert "stripe" in known["do_not_honor"]
    text = ("version: 1\nrules:\n  - name: default\n    providers: [stripe]\n"
            "    cascade_on: [processor_network_unavailable, isuer_not_available, 7]\n")
    assert issues_of(text) == [
        (5, "default", "cascade_on: 7 is not a decline code"),
        (5, "default", "cascade_on: 'isuer_not_available' is not a canonical decline code "
                       "(did you mean 'issuer_not_available'?)"),
    ]


@pytest.mark.parametrize("value", ["[]", "issuer_not_available", "{a: 1}"])
def test_cascade_on_must_be_a_non_empty_list(value: str) -> None:
    text = ("version: 1\nrules:\n  - name: default\n    providers: [stripe]\n"
            f"    cascade_on: {value}\n")
    [(line, rule, message)] = issues_of(text)
    assert (line, rule) == (5, "default") and message.startswith("cascade_on: ")
