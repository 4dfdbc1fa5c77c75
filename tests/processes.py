"""Real processes for tests: the sandbox (ports chosen by the OS and read back from its
ready line, so no port race) and gateway servers (respawned on another port if the one
picked was taken meanwhile). Every process is stopped by PID."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

START_TIMEOUT_S = 30.0


def redis_answers(url: str) -> bool:
    """The Redis at ``url`` answers PING now."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


#: Ports handed out to listeners: below Linux's default ephemeral range (32768-60999),
#: from which every outgoing connection takes its local port. A port the kernel chose
#: with bind(0) comes from that range, and the many client connections a test makes can
#: take it before the server binds it ("Address already in use").
_LISTEN_PORTS = range(20000, 32000)
_rng = random.Random()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1, outside the ephemeral range."""
    for _ in range(200):
        port = _rng.choice(_LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS}")


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            **extra}


def spawn_gateway_cli(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(**env))


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@contextmanager
def sandbox_process(log: Path, providers: tuple[str, ...] = ("stripe", "braintree", "adyen"),
                    extra_args: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Run `gateway sandbox` on OS-chosen ports; yields its ready line (ports, URLs).
    ``providers``: the simulators the test uses. The sandbox runs all three whatever it
    is given, so every one gets an OS-chosen port (one left on its default port, 1211x,
    collides with another sandbox running at the same time).
    ``extra_args``: more `gateway sandbox` options (e.g. ``--webhook-url stripe=URL``)."""
    args = [sys.executable, "-m", "gateway", "sandbox", "--host", "127.0.0.1",
            "--control-port", "0"]
    for name in dict.fromkeys((*providers, "stripe", "braintree", "adyen")):
        args += [f"--{name}-port", "0"]
    args += list(extra_args)
    with log.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, env=child_env())
    ready: dict[str, Any] = {}

    def read_ready() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{") and '"sandbox_listening"' in line:
                ready.update(json.loads(line))
                break

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    try:
        if not ready:
            raise AssertionError(f"gateway sandbox did not start; log: {log.read_text()[-2000:]}")
        yield ready
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


async def _serve_on(port: int, config: Path, log: Path, session: aiohttp.ClientSession,
                    extra_args: tuple[str, ...] = (), **env: str
                    ) -> tuple[subprocess.Popen[bytes], str] | None:
    """Start `gateway serve` on ``port``; the process and its URL once /healthz answers,
    None (process stopped) if it died or did not answer in time."""
    proc = spawn_gateway_cli(["serve", "--config", str(config), "--port", str(port),
                              *extra_args], log, **env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if await http_ok(session, f"{base}/healthz"):
            return proc, base
        await _sleep(0.05)
    stop(proc)
    return None


async def start_gateway(config: Path, log: Path, session: aiohttp.ClientSession,
                        extra_args: tuple[str, ...] = (), **env: str
                        ) -> tuple[subprocess.Popen[bytes], str]:
    """Start `gateway serve` and wait for /healthz; retry on another port if it died."""
    for _ in range(3):
        started = await _serve_on(free_port(), config, log, session, extra_args, **env)
        if started is not None:
            return started
    raise AssertionError(f"gateway did not start; log: {_tail(log)}")


async def start_gateway_on(port: int, config: Path, log: Path, session: aiohttp.ClientSession
                           ) -> tuple[subprocess.Popen[bytes], str]:
    """Start `gateway serve` on a port chosen beforehand (e.g. the one the simulators of a
    sandbox process already send their webhooks to); wait for /healthz."""
    started = await _serve_on(port, config, log, session)
    if started is None:
        raise AssertionError(f"gateway did not start on port {port}; log: {_tail(log)}")
    return started


def kill_9(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process (no cleanup, no graceful shutdown) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def restart_gateway(proc: subprocess.Popen[bytes], base: str, config: Path, log: Path,
                          session: aiohttp.ClientSession) -> subprocess.Popen[bytes]:
    """Start the gateway again on the same port (after a crash)."""
    port = base.rsplit(":", 1)[1]
    new = spawn_gateway_cli(["serve", "--config", str(config), "--port", port], log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and new.poll() is None:
        if await http_ok(session, f"{base}/healthz"):
            return new
        await _sleep(0.05)
    stop(new)
    raise AssertionError(f"gateway did not restart; log: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


class RedisProcess:
    """A private redis-server on a port of its own, owned by PID. ``start()`` again after
    ``kill()`` restarts it on the same port and directory (so with ``--appendonly yes`` it
    reloads what it had acknowledged). ``args``: more redis-server options (the default
    keeps nothing: no AOF, no RDB)."""

    def __init__(self, directory: Path,
                 args: tuple[str, ...] = ("--save", "", "--appendonly", "no")) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory
        self.args = args
        self.log = directory / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import shutil

        exe = shutil.which("redis-server")
        assert exe, "redis-server is required"
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                 *self.args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def answers(self) -> bool:
        """PING answered (a restarted server answers once it has loaded its AOF)."""
        return redis_answers(self.url)

    async def wait_up(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                break
            if self.answers():
                return
            await _sleep(0.05)
        raise AssertionError(f"redis-server did not answer PING; log: {_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save; only what it had already written survives."""
        if self.proc is not None:
            kill_9(self.proc)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
