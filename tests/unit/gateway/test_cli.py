"""The gateway command: keygen, check-config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway_harness import write_config


def test_keygen_prints_key_and_its_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].split(": ", 1)[1]
    digest = out[1].split(": ", 1)[1]
    assert key.startswith("gw_sk_") and len(key) > 30
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert main(["keygen"]) == 0
    assert capsys.readouterr().out.splitlines()[0] != out[0]  # a new key every time


def test_check_config_ok_and_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path / "good", "sqlite:///x.db")
    assert main(["check-config", "--config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = write_config(tmp_path / "bad", "sqlite:///x.db", candidates=["missing"])
    assert main(["check-config", "--config", str(bad)]) == 1
    assert "unknown provider 'missing'" in capsys.readouterr().err


def test_serve_on_an_unopenable_store_exits_with_one_clear_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.processes import child_env, free_port

    config = write_config(tmp_path, "sqlite:///proc/no-such-dir/gateway.db")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("gateway: ")]
    assert "/proc/no-such-dir/gateway.db" in line and "cannot open" in line
