"""`gateway serve --workers 2`: two worker processes on one port; /metrics of whichever
worker answers shows the sum over both (prometheus-client multiprocess mode); a killed
worker is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.gateway_harness import headers, payment_body, wait_for, write_config
from tests.processes import http_ok, sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow


def _requests_201(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_http_requests_total{") and 'route="/v1/payments"' in line \
                and 'status="201"' in line and 'method="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_workers_share_the_port_and_the_metrics(tmp_path: Path) -> None:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe",)) as ready:
        await _two_workers(tmp_path, ready["ports"]["stripe"])


async def _two_workers(tmp_path: Path, stripe_port: int) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", providers={
        "stripe_main": {"type": "stripe", "api_key": "sk_test_workers",
                        "base_url": f"http://127.0.0.1:{stripe_port}", "currencies": ["EUR"]}})
    mp_dir = tmp_path / "metrics"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        supervisor, base = await start_gateway(config, tmp_path / "gateway.log", session,
                                               ("--workers", "2"),
                                               PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
        try:
            async def both_workers_up() -> bool:
                pids = {m.group(1) for f in mp_dir.glob("*.db")
                        if (m := re.search(r"_(\d+)\.db$", f.name))}
                return len(pids) >= 2

            for i in range(24):
                # new connection per request so the kernel spreads them over both workers
                async with aiohttp.ClientSession() as fresh, fresh.post(
                        f"{base}/v1/payments", data=json.dumps(payment_body()),
                        headers=headers(idem=f"workers-{i}")) as r:
                    assert r.status == 201
            await wait_for(both_workers_up, timeout=10)

            for _ in range(6):  # every scrape, whichever worker answers, sees all 24
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert _requests_201(text) == 24
            assert shutil.which("promtool"), "promtool missing: .ci/run installs prometheus"
            check = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"],
                                            input=text.encode(), capture_output=True)
            assert check.returncode == 0, check

            def workers() -> list[str]:
                return subprocess.run(["pgrep", "-P", str(supervisor.pid)],
                                      capture_output=True, text=True).stdout.split()

            first = workers()
            assert len(first) == 2
            os.kill(int(first[0]), signal.SIGKILL)

            async def replaced() -> bool:
                now = workers()
                return len(now) == 2 and first[0] not in now

            await wait_for(replaced, timeout=20)
            await wait_for(lambda: http_ok(session, f"{base}/healthz"), timeout=20)
            async with session.post(f"{base}/v1/payments", data=json.dumps(payment_body()),
                                    headers=headers(idem="workers-after")) as r:
                assert r.status == 201
        finally:
            stop(supervisor)
