"""Shared test fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.store import Store, make_store
from tests.log_scan import SESSION_LOG_NAME
from tests.processes import free_port, redis_answers, stop

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

REDIS_START_TIMEOUT_S = 10.0


def _start_private_redis(exe: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server in the foreground (we own its PID); wait until PING answers."""
    last_log = ""
    for _attempt in range(3):  # a port taken between free_port() and bind: try another
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    exe,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if redis_answers(url):
                return proc, url
            time.sleep(0.02)  # poll interval, bounded by the deadline
        stop(proc)
        last_log = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(f"private redis-server did not answer PING; its log:\n{last_log}", pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis for the whole session: $REDIS_URL, or a private redis-server."""
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        if not redis_answers(env_url):
            pytest.fail(f"REDIS_URL={env_url} does not answer PING", pytrace=False)
        yield env_url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not installed (apt-get install redis-server) "
            "and REDIS_URL is not set: the Redis store tests cannot run",
            pytrace=False,
        )
    log_path = tmp_path_factory.mktemp("redis") / "redis-server.log"
    proc, url = _start_private_redis(exe, log_path)
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session Redis, with its database emptied (FLUSHDB) before the test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server


# ---------------------------------------------------------------------------
# Stores: every test using these runs once per backend
# ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"], ids=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for each backend: a fresh SQLite file, or a flushed Redis database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'gateway.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened store built by make_store(store_url); closed afterwards."""
    s = make_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# ---------------------------------------------------------------------------
# Every log line of the session, as the gateway's formatter writes it, and every process
# log the tests wrote are checked for secrets and card numbers when the session finishes
# (tests/log_scan.py): a leak fails the run, whichever tests ran in whatever order.
# ---------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)  # after the tmpdir plugin made the base temp dir
def pytest_configure(config: pytest.Config) -> None:
    import logging

    from gateway.logs import JsonFormatter

    path = Path(config._tmp_path_factory.getbasetemp()) / SESSION_LOG_NAME  # type: ignore[attr-defined]
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))  # record INFO too
    config._gateway_session_log = path  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.log_scan import session_problems

    base = Path(session.config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    problems = session_problems(base)
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["secrets or card numbers in the session's logs:", *problems[:20]]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _dump_asyncio_tasks(signum: int, frame: object) -> None:
    """`kill -USR1 <pytest pid>` prints every asyncio task's stack (hang diagnosis)."""
    import asyncio
    import sys

    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop in this thread
        return
    for task in tasks:
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


def pytest_sessionstart(session: pytest.Session) -> None:
    import signal

    signal.signal(signal.SIGUSR1, _dump_asyncio_tasks)
