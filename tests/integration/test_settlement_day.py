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
    assert out["fee_changed_refused"] == {"braintree_main": "409 fees_not_reported"}
    assert out["cli_exit"] == 1 and "DRIFT FOUND" in out["table"]
    assert code == 0 and out["ok"] is True


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_clean_simulated_day_has_no_drift(store: str) -> None:
    code, out = _run("--clean", "--store", store)
    assert out["faults"] == [] and out["unexpected"] == []
    assert out["tally"]["matched"]["count"] > 60  # captures, refunds, disputes
    for kind in ("missing_at_provider", "missing_in_gateway", "amount_drift", "fee_drift",
                 "payout_mismatch"):
        assert out["tally"][kind] == {"count": 0, "sum": 0}, kind
    assert out["cli_exit"] == 0 and "no drift" in out["table"]
    assert code == 0 and out["ok"] is True


def _report(*details: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    buckets: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for provider, currency, d in details:
        buckets.setdefault((provider, currency), []).append(d)
    return {"providers": [{"provider": p, "currency": c, "details": ds}
                          for (p, c), ds in buckets.items()]}


def test_the_days_check_counts_anything_not_injected() -> None:
    """bench/settlement_day.py's compare(): the right findings pass; a finding twice, a
    finding on a payment without a fault, a finding without a payment and a payout
    mismatch the moved captures do not explain are each reported as not injected."""
    from bench.settlement_day import Day, Planned, compare

    cap, ref, fee, moved, other = (Planned(n, "stripe_main", "EUR", 1000, "captured",
                                           pid=f"pay_{n}") for n in range(5))
    day = Day(payments=[cap, ref, fee, moved, other],
              faults={"stripe_main": {"unsettled_capture": [cap], "double_refund": [ref],
                                      "fee_changed": [fee], "wrong_payout": [moved]}})
    fees = {moved.pid: 29}
    right = [("stripe_main", "EUR", {"kind": "missing_at_provider", "amount": 1000,
                                     "payment_id": cap.pid}),
             ("stripe_main", "EUR", {"kind": "missing_in_gateway", "amount": 300,
                                     "payment_id": ref.pid}),
             ("stripe_main", "EUR", {"kind": "fee_drift", "amount": 29,
                                     "payment_id": fee.pid}),
             ("stripe_main", "EUR", {"kind": "payout_mismatch", "amount": 971,
                                     "payout_id": "po_1", "payout": 5000, "lines": 4029})]
    out = compare(day, _report(*right), fees)
    assert [r["found"] for r in out["faults"]] == [True] * 4 and out["unexpected"] == []
    extras = [
        ("stripe_main", "EUR", {"kind": "missing_in_gateway", "amount": 300,
                                "payment_id": ref.pid}),  # the same finding twice
        ("stripe_main", "EUR", {"kind": "amount_drift", "amount": 1,
                                "payment_id": other.pid}),  # no fault on that payment
        ("stripe_main", "EUR", {"kind": "fee_drift", "amount": 1, "line_id": "txn_x",
                                "why": "net is not gross - fee"}),  # no payment
        ("stripe_main", "EUR", {"kind": "payout_mismatch", "amount": 5,
                                "payout_id": "po_2", "payout": 10, "lines": 5}),
        ("stripe_main", "EUR", {"kind": "payout_mismatch", "amount": 971,  # a second
                                "payout_id": "po_3", "payout": 971, "lines": 0}),  # short
    ]
    for extra in extras:
        out = compare(day, _report(*right, extra), fees)
        assert len(out["unexpected"]) == 1, (extra, out["unexpected"])
    out = compare(day, _report(*right[:3]), fees)  # the payout was not found short
    assert [r["fault"] for r in out["faults"] if not r["found"]] == ["wrong_payout"]
