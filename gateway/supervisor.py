"""``gateway serve --workers N``: N worker processes on one port, one metrics view.

The supervisor points every worker at one ``PROMETHEUS_MULTIPROC_DIR`` (so any worker's
/metrics shows the sum over all workers), starts them with SO_REUSEPORT on the same
host:port, forwards SIGHUP (routing reload) and SIGTERM/SIGINT, restarts a worker that
dies, and marks dead workers' metric files so live gauges stay true.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("gateway.supervisor")
RESTART_BACKOFF_S = 1.0


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], env=env)


def supervise(config: str, host: str, port: int, workers: int, log_level: str) -> int:
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    mp_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR")
                  or tempfile.mkdtemp(prefix="gateway-metrics-"))
    mp_dir.mkdir(parents=True, exist_ok=True)
    for stale in mp_dir.glob("*.db"):
        stale.unlink()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    args = ["--log-level", log_level, "serve", "--config", config, "--host", host,
            "--port", str(port), "--workers", "1", "--reuse-port"]
    children = {p.pid: p for p in (_spawn(args, env) for _ in range(workers))}
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("supervisor started", extra={"workers": workers, "port": port,
                                          "pids": sorted(children)})
    from prometheus_client import multiprocess

    try:
        while children:
            time.sleep(0.2)
            for pid, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                del children[pid]
                multiprocess.mark_process_dead(pid, str(mp_dir))
                if not stopping:
                    log.error("worker exited; restarting", extra={"pid": pid, "code": code})
                    time.sleep(RESTART_BACKOFF_S)
                    new = _spawn(args, env)
                    children[new.pid] = new
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
        if own_dir:
            shutil.rmtree(mp_dir, ignore_errors=True)
    return 0
