"""bench/settlement_day.py, the simulated day of issue #14's proof, run small: a gateway
process of its own with the three sandbox providers, payments, refunds and disputes, faults
injected at the simulators, each provider's report imported twice and the day reconciled.
Every injected fault must be found and nothing else; with ``--clean``, no drift at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.paths import REPO


def _run(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "settlement_day.py"), "--payments", "60",
         "--json", *args], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"}, check=False)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_every_fault_of_a_simulated_day_is_found_and_nothing_else(store: str) -> None:
    code, out = _run("--store", store)
    faults = out["faults"]
    kinds = {(r["provider"], r["fault"]) for r in faults}
    for provider in ("stripe_main", "braintree_main", "adyen_main"):
        for kind in ("unsettled_capture", "double_refund", "wrong_payout"):
            assert (provider, kind) in kinds, (provider, kind)
    assert ("stripe_main", "fee_changed") in kinds and ("adyen_main", "fee_changed") in kinds
    assert [r for r in faults if not r["found"]] == [] and out["unexpected"] == []
    assert all(i["second_import_new"] == 0 for i in out["imports"].values())
    assert out["cli_exit"] == 1 and "DRIFT FOUND" in out["table"]
    assert code == 0 and out["ok"] is True


def test_a_clean_simulated_day_has_no_drift() -> None:
    code, out = _run("--clean")
    assert out["faults"] == [] and out["unexpected"] == []
    assert out["tally"]["matched"]["count"] > 60  # captures, refunds, disputes
    for kind in ("missing_at_provider", "missing_in_gateway", "amount_drift", "fee_drift",
                 "payout_mismatch"):
        assert out["tally"][kind] == {"count": 0, "sum": 0}, kind
    assert out["cli_exit"] == 0 and "no drift" in out["table"]
    assert code == 0 and out["ok"] is True
