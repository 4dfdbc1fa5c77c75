"""gateway.yaml is strict (SPEC 14.1): an unknown key at any level is an error with file,
line and the allowed keys, all reported together -- by the loader and by check-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config

GOOD = """\
store: sqlite://g.db
merchants:
  - id: acme
    api_key_sha256: [{sha}]
    webhook: {{url: "https://acme.example/h", secret: s3cr3t-value}}
providers:
  stripe_main:
    type: stripe
    sandbox: true
    currencies: [EUR]
    breaker: {{fail_max: 3, reset_timeout_s: 5}}
  bt:
    type: braintree
    sandbox: true
    currencies: [EUR]
    lookup_proof_after_s: 120
reconciliation: {{interval_s: 5, min_age_s: 60}}
"""
SHA = "a" * 64


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text.format(sha=SHA))
    return path


def test_the_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.providers["stripe_main"].breaker.fail_max == 3


@pytest.mark.parametrize(("old", "new", "line", "where", "key"), [
    ("store:", "stroe:", 1, "gateway.yaml", "stroe"),
    ("reconciliation:", "reconcile:", 17, "gateway.yaml", "reconcile"),
    ("fail_max:", "failmax:", 11, "gateway.yaml.providers.stripe_main.breaker", "failmax"),
    ("lookup_proof_after_s", "lookup_proof_afters", 16, "gateway.yaml.providers.bt",
     "lookup_proof_afters"),
    ("    webhook: {{url", "    hook: {{url", 5, "gateway.yaml.merchants[0]", "hook"),
])
def test_a_typo_at_any_level_is_an_error_with_file_line_and_allowed_keys(
    tmp_path: Path, old: str, new: str, line: int, where: str, key: str
) -> None:
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:{line}: {where}: unknown key {key!r} (allowed: " in message, message


def test_a_key_of_another_provider_type_is_unknown(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("    sandbox: true\n    currencies: [EUR]\n    breaker",
                                         "    sandbox: true\n    hmac_key: abc\n"
                                         "    currencies: [EUR]\n    breaker", 1))
    with pytest.raises(ConfigError, match=r"stripe_main: unknown key 'hmac_key'"):
        load_config(path)


def test_every_unknown_key_is_reported_together_and_check_config_fails(
    tmp_path: Path, capsys
) -> None:
    text = GOOD.replace("store:", "stroe:").replace("fail_max:", "failmax:") \
        .replace("reconciliation:", "reconcile:")
    path = _write(tmp_path, text)
    assert main(["check-config", "--config", str(path)]) != 0
    err = capsys.readouterr().err
    for key in ("stroe", "failmax", "reconcile"):
        assert f"unknown key {key!r}" in err, err
