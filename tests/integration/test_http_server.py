"""Connection hygiene of ``gateway serve`` (gateway/http_server.py; issue #11 item 4):
header, body and keep-alive timeouts, a connection limit below the file-descriptor limit,
and a slowloris of 2,000 connections against a real gateway process limited to 1,024 file
descriptors that does not delay another merchant's payments."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import metrics
from gateway.app import create_app
from gateway.config import ConfigError, ServerSettings, load_config
from gateway.http_server import Listener, listen
from tests.gateway_harness import headers, payment_body, wait_for, write_config
from tests.processes import child_env, free_port, http_ok, stop

PARTIAL_HEADERS = b"POST /v1/payments HTTP/1.1\r\nHost: gateway\r\nX-Slow: 1\r\n"


def _closed(reason: str) -> float:
    return metrics.HTTP_CONNECTIONS_CLOSED.labels(reason)._value.get()


async def _listener(tmp_path: Path, **server: Any) -> Listener:
    config = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}",
                                      server=server))
    return await listen(create_app(config), "127.0.0.1", 0, config.server)


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Listener]:
    listener = await _listener(tmp_path, **getattr(request, "param", {}))
    try:
        yield listener
    finally:
        await listener.close()


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not
    close it within ``seconds``)."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def _pay(session: aiohttp.ClientSession, base: str, idem: str) -> int:
    async with session.post(f"{base}/v1/payments", data=json.dumps(payment_body()),
                            headers=headers(idem=idem)) as r:
        return r.status


FAST = {"header_timeout_s": 0.4, "keepalive_timeout_s": 0.6, "body_timeout_s": 0.5}


@pytest.mark.parametrize("served", [FAST], indirect=True)
async def test_incomplete_headers_are_cut_at_the_header_timeout(served: Listener) -> None:
    before = _closed("header_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    t0 = time.monotonic()
    writer.write(PARTIAL_HEADERS)
    for _ in range(3):  # trickling more header bytes does not extend the deadline
        await asyncio.sleep(0.1)
        writer.write(b"X-More: 1\r\n")
    assert await _eof_within(reader, 3) == b""
    assert 0.35 <= time.monotonic() - t0 < 2.0
    assert _closed("header_timeout") == before + 1
    writer.close()


@pytest.mark.parametrize("served", [FAST], indirect=True)
async def test_a_connection_that_sends_nothing_is_cut_at_the_header_timeout(
        served: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    t0 = time.monotonic()
    assert await _eof_within(reader, 3) == b""
    assert 0.35 <= time.monotonic() - t0 < 2.0
    writer.close()


@pytest.mark.parametrize("served", [FAST], indirect=True)
async def test_an_idle_kept_alive_connection_is_closed_at_the_keepalive_timeout(
        served: Listener) -> None:
    before = _closed("keepalive_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 2)
    assert status.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    await _eof_within(reader, 4)  # the rest of the answer, then the close
    assert 0.5 <= time.monotonic() - t0 < 3.0
    assert _closed("keepalive_timeout") == before + 1
    writer.close()


@pytest.mark.parametrize("served", [FAST], indirect=True)
async def test_a_body_that_does_not_arrive_in_time_is_a_408_and_nothing_is_stored(
        served: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    body = json.dumps(payment_body()).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers(idem="slow-body").items())
    writer.write(f"POST /v1/payments HTTP/1.1\r\nHost: gateway\r\n{head}"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    answer = await _eof_within(reader, 4)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
    writer.close()
    async with aiohttp.ClientSession() as session:  # the key was not taken: a new payment
        r = await session.post(f"http://127.0.0.1:{served.port}/v1/payments", data=body,
                               headers=headers(idem="slow-body"))
        assert r.status == 201, await r.text()
        assert r.headers.get("Idempotent-Replayed") != "true"


@pytest.mark.parametrize("served", [{"max_connections": 3, "header_timeout_s": 30}],
                         indirect=True)
async def test_at_the_limit_the_longest_waiting_connection_makes_room_for_a_new_one(
        served: Listener) -> None:
    before = _closed("evicted")
    slow = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
    for _, w in slow:
        w.write(PARTIAL_HEADERS)
        await asyncio.sleep(0.02)  # a known order: slow[0] waits longest
    await wait_for(lambda: _async(len(served.guard) == 3), timeout=3)
    base = f"http://127.0.0.1:{served.port}"
    async with aiohttp.ClientSession() as session:
        assert await _pay(session, base, "limit-1") == 201
    assert await _eof_within(slow[0][0], 2) == b""  # the oldest was closed
    assert _closed("evicted") == before + 1
    for r, w in slow[1:]:
        assert not r.at_eof()
        w.close()
    slow[0][1].close()


@pytest.mark.parametrize("served", [{"max_connections": 2, "body_timeout_s": 30}],
                         indirect=True)
async def test_when_every_connection_has_a_request_in_progress_a_new_one_is_refused(
        served: Listener) -> None:
    before = _closed("refused")
    body = json.dumps(payment_body()).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers(idem="busy").items())
    busy = []
    for i in range(2):  # headers complete, body pending: a request in progress
        r, w = await asyncio.open_connection("127.0.0.1", served.port)
        w.write(f"POST /v1/payments HTTP/1.1\r\nHost: gateway\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n".encode().replace(
                    b"Idempotency-Key: busy", f"Idempotency-Key: busy-{i}".encode()))
        busy.append((r, w))
    await wait_for(lambda: _async(not served.guard._waiting and len(served.guard) == 2),
                   timeout=3)
    r3, w3 = await asyncio.open_connection("127.0.0.1", served.port)
    assert await _eof_within(r3, 2) == b""  # refused: closed without an answer
    assert _closed("refused") == before + 1
    w3.close()
    for r, w in busy:  # the requests in progress are not cut: they complete
        w.write(body)
        assert (await asyncio.wait_for(r.readline(), 10)).startswith(b"HTTP/1.1 201")
        w.close()


async def _async(value: Any) -> Any:
    return value


def test_the_connection_limit_fits_the_file_descriptor_limit() -> None:
    """With the common 1,024-descriptor limit (soft and hard), 1,000 connections would
    leave no descriptor for the store and providers: the limit is lowered."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
            "from gateway.http_server import connection_limit; "
            "print(connection_limit(1000, 128), connection_limit(100, 128))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["704", "100"]  # 1024 - 2 x 128 (backlog) - 64
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); "
            "from gateway.http_server import connection_limit; "
            "print(connection_limit(1000, 128), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["1000", "1340"]  # the soft limit was raised as far as needed


@pytest.mark.parametrize(("server", "message"), [
    ({"header_timeout_s": 0}, r"server.header_timeout_s: must be > 0 \(got 0\)"),
    ({"body_timeout_s": -1}, "server.body_timeout_s: must be > 0"),
    ({"max_connections": 0}, r"server.max_connections: must be >= 1 \(got 0\)"),
    ({"keepalive_timeout_s": "soon"}, "server.keepalive_timeout_s: expected"),
    ({"max_conections": 10}, "max_conections"),
])
def test_bad_server_settings_are_config_errors(tmp_path: Path, server: dict[str, Any],
                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, "sqlite:///g.db", server=server))


def test_server_settings_have_safe_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "sqlite:///g.db"))
    assert config.server == ServerSettings()
    assert config.server.header_timeout_s == 10 and config.server.keepalive_timeout_s == 15


# -- a real slowloris against a real process with 1,024 file descriptors ----------------

ATTACKERS = 2000
MERCHANT_PAYMENTS = 40


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _spawn_with_1024_fds(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port",
             str(port)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_env(), preexec_fn=_limit_fds)


async def _slowloris(port: int, stop_at: asyncio.Event, opened: list[int]) -> None:
    """Like the classic tool: keep ATTACKERS connections open with incomplete headers,
    topping each up with a header line every second, re-opening the ones closed."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [None] * ATTACKERS

    async def one(i: int) -> None:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            w.write(PARTIAL_HEADERS)
            conns[i] = (r, w)
            opened[0] += 1
        except (OSError, TimeoutError):
            conns[i] = None

    while not stop_at.is_set():
        todo = []
        for i, c in enumerate(conns):
            if c is None or c[0].at_eof() or c[1].is_closing():
                if c is not None:
                    c[1].close()
                todo.append(one(i))
            else:
                c[1].write(b"X-Slow: 1\r\n")
        for k in range(0, len(todo), 200):
            await asyncio.gather(*todo[k:k + 200])
        with_timeout = asyncio.create_task(stop_at.wait())
        await asyncio.wait({with_timeout}, timeout=1.0)
        with_timeout.cancel()
    for c in conns:
        if c is not None:
            c[1].close()


async def _timed_payments(base: str, prefix: str, timeout_s: float) -> list[float]:
    """MERCHANT_PAYMENTS payments, each on a new connection; their latencies."""
    out = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        for i in range(MERCHANT_PAYMENTS):
            t0 = time.perf_counter()
            assert await _pay(s, base, f"{prefix}-{i}") == 201
            out.append(time.perf_counter() - t0)
    return out


async def test_a_slowloris_of_2000_connections_does_not_delay_other_merchants(
        tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= ATTACKERS + 500, "the test process needs file descriptors for the attack"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, ATTACKERS + 500), hard))
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}")
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = _spawn_with_1024_fds(config, port, log)
    base = f"http://127.0.0.1:{port}"
    stop_at = asyncio.Event()
    attack: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            await wait_for(lambda: http_ok(session, f"{base}/readyz"), timeout=30)
        before = await _timed_payments(base, "before", timeout_s=10)
        opened = [0]
        attack = asyncio.create_task(_slowloris(port, stop_at, opened))
        await wait_for(lambda: _async(opened[0] >= ATTACKERS), timeout=60, interval=0.2)
        during = await _timed_payments(base, "during", timeout_s=10)
        stop_at.set()
        await asyncio.wait_for(attack, 30)
        text = log.read_text(errors="replace")
        assert "Too many open files" not in text
        async with aiohttp.ClientSession() as session, \
                session.get(f"{base}/metrics") as r:
            exposition = await r.text()
        evicted = _sample(exposition, 'gateway_http_connections_closed_total{reason="evicted"}')
        print(f"\nslowloris: {opened[0]} attacker connections opened; merchant payment "
              f"median {statistics.median(before) * 1000:.1f} ms before, "
              f"{statistics.median(during) * 1000:.1f} ms during (max "
              f"{max(during) * 1000:.1f} ms); {evicted:.0f} attacker connections evicted")
        assert evicted > 0  # the attack did fill the connection limit
        assert statistics.median(during) <= max(5 * statistics.median(before),
                                                statistics.median(before) + 0.25)
        assert max(during) < 3.0
    finally:
        stop_at.set()
        if attack is not None and not attack.done():
            attack.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attack
        stop(proc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _sample(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported")
