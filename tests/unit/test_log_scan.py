"""tests/log_scan.py finds what it must: a leaked secret or card number in a session log
or a process log fails the session (the check itself runs at session finish)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.log_scan import SESSION_LOG_NAME, log_files, scan, session_problems


def _write(base: Path, name: str, lines: list[str]) -> Path:
    path = base / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Outside pytest's base temp dir: these synthetic leaks must not fail the session's
    own scan."""
    with tempfile.TemporaryDirectory(prefix="log-scan-") as d:
        yield Path(d)


def test_a_clean_session_has_no_problems(tmp_path: Path) -> None:
    _write(tmp_path, SESSION_LOG_NAME, ['{"msg":"payment authorized","amount":1000}'] * 3)
    _write(tmp_path, "proc/gateway.log", ['{"msg":"card [REDACTED]"}'])
    scanned, problems = scan(log_files(tmp_path), {"sk_live_secret_123"})
    assert (scanned, problems) == (4, [])


def test_a_leaked_secret_and_card_number_are_each_reported_with_file_and_line(
        tmp_path: Path) -> None:
    _write(tmp_path, SESSION_LOG_NAME, ['{"msg":"ok"}', '{"msg":"key sk_live_secret_123"}'])
    proc_log = _write(tmp_path, "proc/sandbox.log", ['{"msg":"pan 4242 4242 4242 4242"}'])
    _, problems = scan(log_files(tmp_path), {"sk_live_secret_123"})
    assert problems == [f"{tmp_path / SESSION_LOG_NAME}:2: secret sk_l...",
                        f"{proc_log}:1: card-like number"]


def test_the_known_test_secrets_are_checked(tmp_path: Path) -> None:
    _write(tmp_path, SESSION_LOG_NAME, ['{"msg":"Bearer test-admin-token"}'])
    assert session_problems(tmp_path) == [f"{tmp_path / SESSION_LOG_NAME}:1: secret test..."]
