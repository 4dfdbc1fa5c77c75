"""Runs last (file name): the whole session's logs -- this process's records as the
gateway's formatter writes them, and every log file of the gateway, sandbox and helper
processes the tests started -- contain no configured secret, no API key and no 13-19 digit
Luhn-valid number."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import logs
from tests.conftest import SESSION_LOG_NAME
from tests.gateway_harness import ACME_KEY, GLOBEX_KEY

KNOWN_SECRETS = {ACME_KEY, GLOBEX_KEY, "test-admin-token", "gw_sk_demo_acme",
                 "gw_sk_demo_globex", "sk_test_gateway", "whsec_sandbox_stripe",
                 "sandbox_private_key"}


def test_no_secret_or_card_number_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    files = [base / SESSION_LOG_NAME, *sorted(p for p in Path(base).rglob("*.log"))]
    assert files[0].exists()
    secrets = KNOWN_SECRETS | set(logs._secrets)
    scanned = 0
    problems: list[str] = []
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            scanned += 1
            leaked = [s for s in secrets if s in line]
            if leaked:
                problems.append(f"{path.name}:{n}: secret {leaked[0][:4]}...")
            if logs.contains_card_number(line):
                problems.append(f"{path.name}:{n}: card-like number")
    assert scanned > 100, f"only {scanned} log lines: the capture is not working"
    assert not problems, "\n".join(problems[:20])
