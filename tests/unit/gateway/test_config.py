"""gateway.yaml loading: secret references, validation errors that never leak secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, resolve_secret, resolve_store_url
from tests.gateway_harness import write_config


def test_shipped_default_config_loads() -> None:
    cfg = load_config("config/gateway.yaml")
    assert cfg.store_url.startswith("sqlite:////")
    assert cfg.store_url.endswith("/data/gateway.db")
    assert set(cfg.merchants) == {"acme", "globex"}
    assert all(p.sandbox for p in cfg.providers.values())


def test_env_file_and_literal_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SECRET", "from-env-123")
    secret_file = tmp_path / "s.txt"
    secret_file.write_text("from-file-456\n")
    assert resolve_secret("${GW_TEST_SECRET}", "x") == "from-env-123"
    assert resolve_secret("${GW_UNSET_VAR:-fallback-789}", "x") == "fallback-789"
    assert resolve_secret(f"file:{secret_file}", "x") == "from-file-456"
    assert resolve_secret("literal-value", "x") == "literal-value"


def test_missing_secret_names_the_key_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_NOT_SET", raising=False)
    with pytest.raises(ConfigError) as exc:
        resolve_secret("${GW_NOT_SET}", "providers.stripe_main.api_key")
    assert "providers.stripe_main.api_key" in str(exc.value)
    assert "GW_NOT_SET" in str(exc.value)


def test_store_urls(tmp_path: Path) -> None:
    assert resolve_store_url("sqlite:///var/lib/gw.db", tmp_path) == "sqlite:////var/lib/gw.db"
    assert resolve_store_url("sqlite://data/gw.db", tmp_path) == (
        f"sqlite:///{tmp_path.resolve() / 'data' / 'gw.db'}")
    assert resolve_store_url("redis://127.0.0.1:6379/0", tmp_path) == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError):
        resolve_store_url("postgres://x", tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ({"providers": {"p": {"type": "paypal", "base_url": "http://x"}}}, "providers.p.type"),
    ({"providers": {"p": {"type": "stripe"}}}, "providers.p.base_url"),
    ({"providers": {"p": {"type": "stripe", "sandbox": True, "currencies": ["eur"]}}},
     "providers.p.currencies"),
    ({"merchants": [{"id": "a", "api_key_sha256": ["nothex"]}]}, "merchants[0].api_key_sha256"),
    ({"idempotency_ttl_s": 60}, "idempotency_ttl_s"),
    ({"candidates": ["nope"]}, "candidates"),
])
def test_invalid_configs_are_rejected_with_the_key(
    tmp_path: Path, override: dict, message: str
) -> None:
    path = write_config(tmp_path, "sqlite:///x.db", **override)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert message in str(exc.value)


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("store: sqlite:///x.db\nproviders: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "gateway.yaml" in str(exc.value) and "line" in str(exc.value)


# -- values are checked, every error of the file at once, each with file:line (SPEC 14.1) --

VALUES = """\
store: sqlite://g.db
request_deadline_s: 20
merchants:
  - id: acme
    api_key_sha256: [{sha}]
providers:
  adyen_eu:
    type: adyen
    api_key: test-key
    merchant_account: AcmeECOM
    hmac_key: {hmac}
    base_url: http://127.0.0.1:1
    timeout_s: {timeout}
    breaker: {{fail_max: {fail_max}, reset_timeout_s: 5}}
  bt:
    type: braintree
    merchant_id: m
    public_key: pub
    private_key: priv
    base_url: http://127.0.0.1:2
    currencies: [USD, JPY]
    merchant_account_ids: {{USD: acme_usd}}
retry: {{attempts: {attempts}, backoff_s: 0.1, backoff_max_s: 1}}
reconciliation: {{min_age_s: {min_age}}}
sandbox: {{control_port: {port}}}
"""
HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
FINE = {"sha": "a" * 64, "hmac": HMAC, "timeout": 5, "fail_max": 3, "attempts": 3,
        "min_age": 60, "port": 0}


def _values(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(VALUES.format(**{**FINE, **changes}))
    return path


def test_the_values_file_loads_once_braintree_jpy_has_its_account(tmp_path: Path) -> None:
    path = _values(tmp_path)
    path.write_text(path.read_text().replace("{USD: acme_usd}", "{USD: acme_usd, JPY: acme_jpy}"))
    cfg = load_config(path)
    assert cfg.providers["adyen_eu"].credentials["hmac_key"] == HMAC


@pytest.mark.parametrize(("changes", "line", "expected"), [
    ({"hmac": "not-hex-at-all"}, 11, "providers.adyen_eu.hmac_key: must be the hex HMAC key"),
    ({"hmac": "ABC"}, 11, "providers.adyen_eu.hmac_key: must be the hex HMAC key"),
    ({"timeout": 0}, 13, "providers.adyen_eu.timeout_s: must be > 0 (got 0)"),
    ({"timeout": "fast"}, 13, "providers.adyen_eu.timeout_s: expected number"),
    ({"fail_max": 0}, 14, "providers.adyen_eu.breaker.fail_max: must be >= 1 (got 0)"),
    ({"attempts": 0}, 23, "retry.attempts: must be >= 1 (got 0)"),
    ({"min_age": 5}, 24, "reconciliation.min_age_s: 5 is below request_deadline_s (20)"),
    ({"port": 70000}, 25, "sandbox.control_port: must be between 0 and 65535 (got 70000)"),
])
def test_a_bad_value_is_an_error_with_file_line_and_key(
    tmp_path: Path, changes: dict[str, object], line: int, expected: str
) -> None:
    path = _values(tmp_path, **changes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.errors
    assert any(e.startswith(f"{path}:{line}: {expected}") for e in lines), lines
    # the Braintree JPY account is missing in every variant: reported beside it
    assert any(e.startswith(f"{path}:21: providers.bt.currencies: JPY has no merchant")
               for e in lines), lines


def test_every_error_of_the_file_is_reported_together(tmp_path: Path) -> None:
    path = _values(tmp_path, hmac="zz", timeout=-1, fail_max=0, attempts=0, min_age=1,
                   port=-5)
    path.write_text(path.read_text().replace("store:", "stroe:"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    for key in ("unknown key 'stroe'", "store: required", "hmac_key", "timeout_s",
                "fail_max", "retry.attempts", "min_age_s", "control_port", "JPY"):
        assert sum(key in e for e in errors) >= 1, (key, errors)
    assert len(errors) == 9, errors
    assert str(info.value) == "\n".join(errors)


def test_check_config_and_serve_print_every_error_and_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    path = _values(tmp_path, hmac="zz", timeout=-1)
    assert main(["check-config", "--config", str(path)]) != 0
    err = capsys.readouterr().err
    assert f"error: {path}:11: providers.adyen_eu.hmac_key" in err
    assert f"error: {path}:13: providers.adyen_eu.timeout_s" in err
    assert "3 errors in" in err
    assert main(["serve", "--config", str(path), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert f"gateway: {path}:11: providers.adyen_eu.hmac_key" in err
    assert f"gateway: {path}:21: providers.bt.currencies: JPY" in err


def test_secrets_are_never_in_a_value_error(tmp_path: Path) -> None:
    path = _values(tmp_path, hmac="secret-not-hex-value-123")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "secret-not-hex-value-123" not in str(info.value)
