"""Shared bench helpers: run a gateway app in-process on a free port, a private Redis."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config

API_KEY = "gw_sk_bench"


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def write_config(directory: Path, store: str, providers: dict[str, Any],
                 routing: str | None = None, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "store": store, "merchants": [{"id": "bench", "api_key_sha256": [_sha(API_KEY)]}],
        "providers": providers, "reconciliation": {"enabled": False},
        # the benchmarks' private redis-server keeps nothing on disk
        "store_options": {"allow_volatile": True},
        "retry": {"attempts": 2, "backoff_s": 0.02, "backoff_max_s": 0.05, "jitter_s": 0.01},
        **extra,
    }
    if routing:
        (directory / "routing.yaml").write_text(routing)
        cfg["routing_file"] = "routing.yaml"
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.asynccontextmanager
async def running_gateway(config: Path) -> AsyncIterator[tuple[str, str]]:
    """(gateway base URL, simulator control URL)."""
    app = create_app(load_config(config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}"
    finally:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is needed for the Redis figures")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gateway-bench-"))


def headers(idem: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": idem,
            "Content-Type": "application/json"}
