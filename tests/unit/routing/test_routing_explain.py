"""routing.explain (explanation text) and the `gateway route` / `gateway check-config`
bodies in gateway.cli."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import check_main, route_main
from routing.explain import explain
from routing.loader import load_routing
from routing.select import RouteRequest, decide, split_bucket
from tests.paths import FIXTURES_DIR, REPO

REPO = REPO
FIXTURES = FIXTURES_DIR / "routing"

GATEWAY_YAML = """\
store: sqlite://gw.db
{routing}
merchants:
  - id: acme
    api_key_sha256: [cc7bcc17414a64baa53d38489d5e2b7687d77511467d7641905956e3ac9e15c9]
  - id: globex
    api_key_sha256: [6c8c377af894d65de90c52bf467c6eaa7e372c0a2670edc733909a6fc330795b]
providers:
  local_stripe: {{type: stripe, sandbox: true, api_key: sk_test_x,
                 currencies: [USD, EUR, GBP, JPY]}}
  local_braintree: {{type: braintree, sandbox: true, currencies: [USD, EUR]}}
  local_adyen: {{type: adyen, sandbox: true, currencies: [EUR, GBP, JPY]}}
candidates: [local_adyen, local_stripe]
"""

BODY = {"amount": 1250, "currency": "USD", "capture": "manual",
        "payment_method": {"type": "card", "token": "tok_visa", "brand": "visa"},
        "reference": "order-1842", "customer": {"country": "US"},
        "metadata": {"cart": "c-77"}}


def write_config(tmp_path: Path, routing_text: str | None) -> Path:
    if routing_text is None:
        routing_line = ""
    else:
        (tmp_path / "routing.yaml").write_text(routing_text, encoding="utf-8")
        routing_line = "routing_file: routing.yaml"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(GATEWAY_YAML.format(routing=routing_line), encoding="utf-8")
    return cfg


def write_request(tmp_path: Path, body: object, name: str = "request.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(body), encoding="utf-8")
    return p


@pytest.fixture
def shipped_routing() -> str:
    return (REPO / "config" / "routing.yaml").read_text(encoding="utf-8")


# --- explain() ---------------------------------------------------------------------------


def test_explain_text_names_skipped_rules_candidates_and_exclusions() -> None:
    providers = {"stripe": _P({"USD", "EUR", "GBP"}), "braintree": _P({"USD"}),
                 "adyen": _P({"EUR", "JPY"})}
    table = load_routing(FIXTURES / "valid.yaml", providers)
    request = RouteRequest("pay_7", 1250, "GBP", "GB", "visa", "acme", {"tier": "silver"},
                           provider_tokens=frozenset({"stripe", "braintree", "adyen"}))
    text = explain(decide(table, request, providers), table)
    lines = text.splitlines()
    assert lines[0] == f"routing: {table.source} (version {table.version})"
    assert lines[1] == ("request: payment pay_7: 1250 GBP, country GB, brand visa, merchant "
                        "acme, metadata {tier='silver'}, provider tokens for [adyen, braintree, "
                        "stripe]")
    assert "  rule 'eur-big' (line 4) skipped: currency GBP not in [EUR]" in lines
    assert "  rule 'eur-eu' (line 7) skipped: currency GBP not in [EUR]" in lines
    assert "  rule 'usd-split' (line 13) skipped: currency GBP not in [USD]" in lines
    assert "  rule 'amex' (line 17) skipped: brand visa not in [amex]" in lines
    assert "  rule 'vip' (line 20) skipped: merchant acme not in [globex]" in lines
    assert "  rule 'default' (line 23) matched: no conditions (catch-all)" in lines
    assert "priority: stripe, braintree" in lines
    i = lines.index("candidates (in order; open circuit breakers are skipped at run time):")
    assert lines[i + 1:i + 2] == ["  1. stripe"]
    assert lines[-2:] == ["excluded:", "  - braintree: currency GBP not supported"]
    # the skipped rules come in table order, before the match
    assert lines.index("  rule 'eur-big' (line 4) skipped: currency GBP not in [EUR]") < \
        lines.index("  rule 'default' (line 23) matched: no conditions (catch-all)")


def test_explain_split_and_later_rules() -> None:
    providers = {"stripe": _P({"USD"}), "braintree": _P({"USD"}), "adyen": _P({"USD"})}
    table = load_routing(FIXTURES / "valid.yaml", providers)
    request = RouteRequest("pay_7", 10, "USD")
    bucket = split_bucket("pay_7")
    choice = "stripe" if bucket < 70 else "braintree"
    other = "braintree" if choice == "stripe" else "stripe"
    text = explain(decide(table, request, providers), table)
    assert "  rule 'usd-split' (line 13) matched: currency in [USD]" in text
    assert "  (3 later rules not evaluated)" in text
    assert (f"split: stripe 70, braintree 30; payment bucket {bucket} of 100 -> {choice} "
            "first, then the others by weight") in text
    assert "fallback: adyen" in text
    assert f"  1. {choice}\n  2. {other}\n  3. adyen\n" in text
    assert "excluded" not in text
    assert "no country, no brand, no merchant" in text


def test_explain_no_candidates() -> None:
    providers = {"stripe": _P({"USD"}), "braintree": _P({"USD"}), "adyen": _P({"USD"})}
    table = load_routing(FIXTURES / "valid.yaml", providers)
    text = explain(decide(table, RouteRequest("p", 10, "CHF"), providers), table)
    assert "candidates: none - no configured provider can take this payment" in text
    assert "  - stripe: currency CHF not supported\n  - braintree: currency CHF not supported" \
        in text


class _P:
    def __init__(self, currencies: set[str]) -> None:
        self.currencies = frozenset(currencies)


# --- check_main ----------------------------------------------------------------------------


def test_check_ok_prints_version(tmp_path: Path, shipped_routing: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    table = load_routing(tmp_path / "routing.yaml",
                         {"local_stripe", "local_braintree", "local_adyen"})
    assert check_main(cfg) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1
    assert out.startswith(f"ok: {cfg.resolve()} (3 providers, 2 merchants); routing ")
    assert f"version {table.version} ({len(table.rules)} rules)" in out


def test_check_without_routing_file_succeeds(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, None)
    assert check_main(cfg) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "no routing_file: static candidates [local_adyen, local_stripe]" in out


def test_check_reports_every_routing_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - name: usd-split\n"
        "    when: {currency: [USD]}\n"
        "    split: {local_stripe: 60, local_braintree: 30}\n"
        "  - name: eur\n"
        "    when: {currency: [EUR]}\n"
        "    providers: [adyen_eu]\n"
    )
    cfg = write_config(tmp_path, text)
    assert check_main(cfg) == 1
    out, err = capsys.readouterr()
    assert out == ""
    routing = tmp_path.resolve() / "routing.yaml"
    assert err.splitlines() == [
        f"error: {routing}:5: rule 'usd-split': split weights sum to 90, must be 100",
        f"error: {routing}:6: rule 'eur': no catch-all: the last rule must have no 'when' (or "
        "an empty one) so that every request is routed",
        f"error: {routing}:8: rule 'eur': providers: unknown provider 'adyen_eu' (configured "
        "in gateway.yaml: local_adyen, local_braintree, local_stripe)",
        "3 errors in the routing file",
    ]


def test_check_missing_routing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "x")
    (tmp_path / "routing.yaml").unlink()
    assert check_main(cfg) == 1
    _, err = capsys.readouterr()
    assert "routing.yaml: cannot read" in err


def test_check_bad_gateway_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("store: sqlite://x.db\nproviders: {}\n", encoding="utf-8")
    assert check_main(cfg) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and "providers" in err


def test_check_shipped_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    # the default config may or may not reference routing.yaml yet; either way it is valid
    assert check_main(REPO / "config" / "gateway.yaml") == 0
    out, _ = capsys.readouterr()
    assert out.startswith("ok: ")


# --- route_main ----------------------------------------------------------------------------


def test_route_explains_shipped_rules(tmp_path: Path, shipped_routing: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    body = {**BODY, "currency": "EUR", "customer": {"country": "DE"}}
    assert route_main(cfg, write_request(tmp_path, body), "acme") == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "request: payment pay_explain: 1250 EUR, country DE, brand visa, merchant acme" in out
    assert "rule 'eur-high-value' (line 9) skipped: amount 1250 below min 500001" in out
    assert "rule 'eur-to-adyen' (line 14) matched: currency in [EUR] and country in" in out
    assert "  1. local_adyen\n  2. local_stripe\n" in out
    assert "excluded" not in out


def test_route_uses_id_from_json_for_the_split(tmp_path: Path, shipped_routing: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    results = {}
    for pid in ("pay_a", "pay_b", "pay_c", "pay_d", "pay_e", "pay_f"):
        assert route_main(cfg, write_request(tmp_path, {**BODY, "id": pid}), None) == 0
        out, _ = capsys.readouterr()
        assert f"request: payment {pid}: 1250 USD" in out
        assert f"payment bucket {split_bucket(pid)} of 100" in out
        first = "local_stripe" if split_bucket(pid) < 70 else "local_braintree"
        assert f"  1. {first}\n" in out
        assert "  - local_adyen: currency USD not supported" in out
        results[pid] = out
    # explaining the same request twice gives the same answer
    assert route_main(cfg, write_request(tmp_path, {**BODY, "id": "pay_a"}), None) == 0
    assert capsys.readouterr().out == results["pay_a"]


def test_route_provider_tokens_and_merchant_rule(tmp_path: Path, shipped_routing: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    body = {**BODY, "currency": "GBP",
            "payment_method": {"type": "card", "provider_tokens": {"local_adyen": "t"}}}
    assert route_main(cfg, write_request(tmp_path, body), "globex") == 0
    out = capsys.readouterr().out
    assert "matched: currency in [GBP] and merchant in [globex]" in out
    assert "  1. local_adyen\n" in out
    assert "  - local_stripe: no provider token" in out


def test_route_explains_a_three_ds_exclusion(tmp_path: Path, shipped_routing: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway route` says why Braintree is left out of a 3-D Secure payment."""
    cfg = write_config(tmp_path, shipped_routing)
    body = {**BODY, "currency": "EUR", "customer": {"country": "US"},
            "payment_method": {"type": "card", "token": "tok_visa",
                               "three_d_secure": "required"}}
    assert route_main(cfg, write_request(tmp_path, body), "acme") == 0
    out = capsys.readouterr().out
    assert "3-D Secure required" in out and "rule 'eur-default'" in out
    assert "  1. local_adyen\n  2. local_stripe\n" in out
    assert ("  - local_braintree: 3-D Secure challenge not supported by braintree (the "
            "payment method needs 3-D Secure)") in out


def test_route_without_routing_file_uses_static_candidates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, None)
    assert route_main(cfg, write_request(tmp_path, BODY), None) == 0
    out = capsys.readouterr().out
    assert "has no routing_file" in out
    assert "  1. local_stripe\n" in out
    assert "  - local_adyen: currency USD not supported" in out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**BODY, "currency": "usd"}, "invalid request: currency: "),
        ({**BODY, "amount": "12"}, "invalid request: amount: "),
        ({k: v for k, v in BODY.items() if k != "payment_method"},
         "invalid request: payment_method: "),
        ({**BODY, "id": 7}, "id must be a non-empty string"),
        ({**BODY, "colour": "red"}, "invalid request: colour: unknown parameter"),
        ([1, 2], "invalid request: body: "),
    ],
)
def test_route_rejects_invalid_requests(tmp_path: Path, shipped_routing: str,
                                        capsys: pytest.CaptureFixture[str], body: object,
                                        message: str) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    assert route_main(cfg, write_request(tmp_path, body), None) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and message in err


def test_route_rejects_card_numbers_without_echoing(tmp_path: Path, shipped_routing: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    body = {**BODY, "payment_method": {"type": "card", "number": "4242424242424242"}}
    assert route_main(cfg, write_request(tmp_path, body), None) == 1
    _, err = capsys.readouterr()
    assert "raw card data" in err and "4242424242424242" not in err


def test_route_errors(tmp_path: Path, shipped_routing: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, shipped_routing)
    req = write_request(tmp_path, BODY)
    assert route_main(cfg, tmp_path / "missing.json", None) == 1
    assert "missing.json: cannot read" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    assert route_main(cfg, tmp_path / "bad.json", None) == 1
    assert "invalid request" in capsys.readouterr().err
    assert route_main(cfg, req, "initech") == 1
    assert "unknown merchant 'initech' (configured: acme, globex)" in capsys.readouterr().err
    assert route_main(tmp_path / "nope.yaml", req, None) == 1
    assert "cannot read" in capsys.readouterr().err


def test_route_with_invalid_routing_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "version: 1\nrules:\n  - name: d\n    providers: [nope]\n")
    assert route_main(cfg, write_request(tmp_path, BODY), None) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert ":4: rule 'd': providers: unknown provider 'nope'" in err
    assert err.splitlines()[-1] == "1 error in the routing file"


def test_explain_says_whether_declines_cascade(tmp_path: Path) -> None:
    providers = {"stripe": _P({"EUR"}), "adyen": _P({"EUR"})}
    text = ("version: 1\nrules:\n  - name: soft\n    when: {currency: [EUR]}\n"
            "    providers: [adyen, stripe]\n    cascade_on: [issuer_not_available]\n"
            "  - name: default\n    providers: [stripe]\n")
    (tmp_path / "r.yaml").write_text(text)
    table = load_routing(tmp_path / "r.yaml", providers)
    eur = decide(table, RouteRequest("pay_1", 100, "EUR"), providers)
    assert eur.cascade_on == frozenset({"issuer_not_available"})
    assert ("cascade on decline: issuer_not_available (moves to the next candidate; any other "
            "decline is final)") in explain(eur, table).splitlines()
    usd = decide(table, RouteRequest("pay_1", 100, "USD"), providers)
    assert usd.cascade_on == frozenset()
    assert "cascade on decline: off (every decline is final)" in explain(usd, table).splitlines()
