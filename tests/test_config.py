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
