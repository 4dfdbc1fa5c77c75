"""gateway_settlement_drift_minor_units under `gateway serve --workers 2` (SPEC 16): the
gauge is what the last reconciliation found, whichever worker ran it. Two workers each
reconcile a day with drift, then one reconciles a clean day: every scrape shows 0 (and so
the alert GatewaySettlementDrift stops), not the other worker's older drift."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.gateway_harness import headers, payment_body, wait_for, write_config
from tests.processes import sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"}
METRIC = "gateway_settlement_drift_minor_units"


def _workers_with_drift(mp_dir: Path) -> set[str]:
    """Worker pids whose gauge file holds a drift above 0 for stripe_main."""
    pids: set[str] = set()
    for f in mp_dir.glob("gauge_*.db"):
        m = re.search(r"_(\d+)\.db$", f.name)
        if m is None:
            continue
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(f)):
            metric, _name, labels, _help = json.loads(key)
            if metric == METRIC and labels.get("provider") == "stripe_main" and value > 0:
                pids.add(m.group(1))
    return pids


def _drift_samples(text: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(METRIC + "{") and 'provider="stripe_main"' in line]


async def test_a_clean_day_clears_the_drift_whichever_worker_reconciled_it(tmp_path: Path
                                                                           ) -> None:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe",)) as ready:
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", providers={
            "stripe_main": {"type": "stripe", "api_key": "sk_test_drift",
                            "base_url": f"http://127.0.0.1:{ready['ports']['stripe']}",
                            "currencies": ["EUR"]}})
        mp_dir = tmp_path / "metrics"
        today = dt.datetime.now(dt.UTC).date()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            supervisor, base = await start_gateway(config, tmp_path / "gateway.log", session,
                                                   ("--workers", "2"),
                                                   PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
            try:
                for i in range(3):  # captured today, no report imported: drift
                    async with session.post(f"{base}/v1/payments", headers=headers(
                            idem=f"drift-{i}"), data=json.dumps(payment_body(
                                capture="automatic", reference=f"drift-{i}"))) as r:
                        assert r.status == 201, await r.text()

                async def both_workers_found_drift() -> bool:
                    # a new connection per request: the kernel spreads them over both
                    async with aiohttp.ClientSession() as fresh, fresh.post(
                            f"{base}/admin/settlements/reconcile", headers=ADMIN,
                            data=json.dumps({"date": today.isoformat()})) as r:
                        assert r.status == 200 and (await r.json())["drift"] is True
                    return len(_workers_with_drift(mp_dir)) >= 2

                await wait_for(both_workers_found_drift, timeout=20)
                async with session.post(f"{base}/admin/settlements/reconcile", headers=ADMIN,
                                        data=json.dumps({"date": str(today + dt.timedelta(
                                            days=1))})) as r:
                    assert r.status == 200 and (await r.json())["drift"] is False
                for _ in range(6):  # whichever worker answers the scrape
                    async with aiohttp.ClientSession() as fresh, fresh.get(
                            f"{base}/metrics") as r:
                        samples = _drift_samples(await r.text())
                    assert samples and all(v == 0 for v in samples), samples
            finally:
                stop(supervisor)
