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


# -- gateway payments show|sync|resolve (SPEC 9.2, 13): on the configured store, in-process
# like `gateway reconcile`; 0 done, 1 refused, 2 invalid configuration. -------------------

def _seed_unknown(store_url: str, payment_id: str, age_s: float = 400.0) -> None:
    """An authorization whose answer was lost (unknown), recorded long enough ago that no
    request owns it any more (SPEC 9.1), well inside the replay window."""
    import asyncio
    import time

    from gateway.model import audit, iso, new_payment
    from gateway.store import make_store
    from tests.gateway_harness import payment_body

    async def run() -> None:
        store = make_store(store_url)
        await store.open()
        try:
            doc = new_payment(payment_id, "acme", payment_body(), "fp")
            then = time.time() - age_s
            doc.update(status="unknown", provider="stripe_main", created_at=then,
                       updated_at=then, _candidates=["stripe_main"],
                       attempts=[{"provider": "stripe_main", "outcome": "ambiguous",
                                  "error_code": "connection_lost", "started_at": iso(then),
                                  "duration_ms": 10, "_key": f"{payment_id}:1:authorize",
                                  "_sent_at": then, "_live_until": then + 30}])
            await store.insert_payment(doc, [audit("payment_created", "merchant")])
        finally:
            await store.close()

    asyncio.run(run())


def _json_out(capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    import json

    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_payments_show_sync_resolve_on_the_store(
        tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.metrics import REGISTRY

    cfg = str(write_config(tmp_path, store_url))
    _seed_unknown(store_url, "pay_cli_sync")
    _seed_unknown(store_url, "pay_cli_resolve")

    assert main(["payments", "show", "--config", cfg, "pay_cli_sync"]) == 0
    shown, _ = _json_out(capsys)
    assert shown["payment"]["status"] == "unknown" and shown["unresolved"] is True
    assert shown["resolvable"] is True
    assert shown["live_until"] is None and shown["merchant_id"] == "acme"
    assert [e["type"] for e in shown["events"]] == ["payment_created"]

    # the provider (this process's sandbox Stripe) is asked with the attempt's own key
    assert main(["payments", "sync", "--config", cfg, "pay_cli_sync"]) == 0
    synced, summary = _json_out(capsys)
    assert synced["status"] == "authorized" and synced["provider_reference"]
    assert "corrected pay_cli_sync (stripe_main): unknown -> authorized" in summary

    applied = REGISTRY.get_sample_value("gateway_operator_actions_total",
                                        {"action": "resolve", "result": "applied"}) or 0
    assert main(["payments", "resolve", "--config", cfg, "pay_cli_resolve", "--status",
                 "failed", "--reason", "OPS-7: no charge at Stripe"]) == 0
    resolved, summary = _json_out(capsys)
    assert resolved["status"] == "failed" and "resolved pay_cli_resolve: failed" in summary
    assert REGISTRY.get_sample_value("gateway_operator_actions_total", {
        "action": "resolve", "result": "applied"}) == applied + 1
    assert main(["payments", "show", "--config", cfg, "pay_cli_resolve"]) == 0
    shown, _ = _json_out(capsys)
    [change] = [e for e in shown["events"] if e["type"] == "status_changed"]
    assert (change["source"], change["reason"]) == ("operator", "OPS-7: no charge at Stripe")

    # refused: exit 1 with the reason on stderr, nothing printed on stdout
    for argv, words in [
        (["resolve", "pay_cli_resolve", "--status", "failed", "--reason", "again"],
         "payment_not_unresolved"),
        (["resolve", "pay_cli_sync", "--status", "failed", "--reason", "x"],
         "payment_not_unresolved"),
        (["resolve", "pay_nope", "--status", "failed", "--reason", "x"], "resource_missing"),
        (["resolve", "pay_cli_resolve", "--status", "failed", "--reason", " "],
         "parameter_invalid (reason)"),
        (["resolve", "pay_cli_resolve", "--status", "bogus", "--reason", "x"],
         "parameter_invalid (status)"),
        (["show", "pay_nope"], "no such payment pay_nope"),
        (["sync", "pay_nope"], "resource_missing"),
    ]:
        verb, *rest = argv
        assert main(["payments", verb, "--config", cfg, *rest]) == 1, argv
        out = capsys.readouterr()
        assert out.out == "" and "refused" in out.err and words in out.err, (argv, out.err)


def test_payments_cli_config_error_and_usage(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_config(tmp_path, "sqlite:///x.db", candidates=["missing"])
    for verb in ("show", "sync"):
        assert main(["payments", verb, "--config", str(bad), "pay_x"]) == 2
        assert "unknown provider 'missing'" in capsys.readouterr().err
    assert main(["payments", "resolve", "--config", str(bad), "pay_x", "--status", "failed",
                 "--reason", "x"]) == 2
    with pytest.raises(SystemExit) as usage:  # argparse: --reason is required
        main(["payments", "resolve", "--config", str(bad), "pay_x", "--status", "failed"])
    assert usage.value.code == 2
