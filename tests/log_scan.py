"""The redaction check over a test session's logs: this process's records as the
gateway's formatter writes them, and every log file of the gateway, sandbox and helper
processes the tests started. Run by tests/conftest.py when the session finishes, whatever
the order or subset of tests run (a leak fails the session); unit-tested in
tests/unit/test_log_scan.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gateway import logs
from tests.gateway_harness import ACME_KEY, GLOBEX_KEY

SESSION_LOG_NAME = "session-logs.jsonl"
KNOWN_SECRETS = frozenset({ACME_KEY, GLOBEX_KEY, "test-admin-token", "gw_sk_demo_acme",
                           "gw_sk_demo_globex", "sk_test_gateway", "whsec_sandbox_stripe",
                           "sandbox_private_key"})


def log_files(base: Path) -> list[Path]:
    return [base / SESSION_LOG_NAME, *sorted(p for p in base.rglob("*.log"))]


def scan(files: Iterable[Path], secrets: Iterable[str]) -> tuple[int, list[str]]:
    """(lines scanned, problems): a configured secret or a card-like number in a line."""
    secrets = set(secrets)
    scanned = 0
    problems: list[str] = []
    for path in files:
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            scanned += 1
            leaked = [s for s in secrets if s in line]
            if leaked:
                problems.append(f"{path}:{n}: secret {leaked[0][:4]}...")
            if logs.contains_card_number(line):
                problems.append(f"{path}:{n}: card-like number")
    return scanned, problems


def session_problems(base: Path) -> list[str]:
    """What the session's logs leaked (registered secrets included)."""
    _, problems = scan(log_files(base), KNOWN_SECRETS | set(logs._secrets))
    return problems
