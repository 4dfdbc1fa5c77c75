"""classify_transport_error over real and constructed cause chains; classify_http_status."""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
import requests
import stripe
import urllib3.exceptions as uexc
from aiohttp import web

from providers.base import Ambiguous, ProviderFault, RejectedSafe
from providers.faults import classify_http_status, classify_transport_error


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Servers:
    plain: int  # answers HTTP
    hang: int  # accepts, reads, never answers
    drop: int  # reads the request, closes without a byte


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    release = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    hang_srv = await asyncio.start_server(hang, "127.0.0.1", 0)
    drop_srv = await asyncio.start_server(drop, "127.0.0.1", 0)
    yield Servers(site.port, hang_srv.sockets[0].getsockname()[1],
                  drop_srv.sockets[0].getsockname()[1])
    release.set()
    for srv in (hang_srv, drop_srv):
        srv.close()
    await runner.cleanup()


async def aiohttp_error(url: str, limits: aiohttp.ClientTimeout) -> BaseException:
    async with aiohttp.ClientSession(timeout=limits) as s:
        try:
            async with s.get(url) as resp:
                await resp.read()
        except Exception as exc:
            return exc
    raise AssertionError(f"GET {url} unexpectedly succeeded")


async def requests_error(url: str, limit_s: float = 2.0) -> BaseException:
    def call() -> BaseException:
        try:
            requests.get(url, timeout=limit_s)
        except Exception as exc:
            return exc
        raise AssertionError(f"GET {url} unexpectedly succeeded")

    return await asyncio.to_thread(call)


def assert_fault(exc: BaseException, kind: type[ProviderFault], code: str) -> None:
    fault = classify_transport_error(exc)
    assert type(fault) is kind, f"{exc!r} -> {fault!r}"
    assert fault.error_code == code


# ------------------------------------------------------------------ real network errors

T = aiohttp.ClientTimeout


async def test_real_connection_refused() -> None:
    port = closed_port()
    exc = await aiohttp_error(f"http://127.0.0.1:{port}/", T(total=2))
    assert isinstance(exc, aiohttp.ClientConnectorError)
    assert_fault(exc, RejectedSafe, "connection_refused")
    assert_fault(await requests_error(f"http://127.0.0.1:{port}/"), RejectedSafe,
                 "connection_refused")
    wrapped = stripe.APIConnectionError("network error")
    wrapped.__cause__ = exc
    assert_fault(wrapped, RejectedSafe, "connection_refused")


async def test_real_tls_failure(servers: Servers) -> None:
    url = f"https://127.0.0.1:{servers.plain}/"  # TLS against a plain-HTTP server
    assert_fault(await aiohttp_error(url, T(total=2)), RejectedSafe, "tls_failure")
    assert_fault(await requests_error(url), RejectedSafe, "tls_failure")


async def test_real_read_timeouts(servers: Servers) -> None:
    url = f"http://127.0.0.1:{servers.hang}/"
    sock_read = await aiohttp_error(url, T(sock_read=0.2))
    assert isinstance(sock_read, aiohttp.SocketTimeoutError)
    assert_fault(sock_read, Ambiguous, "read_timeout")
    assert_fault(await aiohttp_error(url, T(total=0.2)), Ambiguous, "timeout")
    assert_fault(await requests_error(url, limit_s=0.2), Ambiguous, "read_timeout")


async def test_real_server_disconnect(servers: Servers) -> None:
    url = f"http://127.0.0.1:{servers.drop}/"
    exc = await aiohttp_error(url, T(total=2))
    assert isinstance(exc, aiohttp.ServerDisconnectedError)
    assert_fault(exc, Ambiguous, "connection_lost")
    rexc = await requests_error(url)
    assert isinstance(rexc, requests.ConnectionError) and "RemoteDisconnected" in repr(rexc)
    assert_fault(rexc, Ambiguous, "connection_lost")


# ------------------------------------------------------------------ constructed chains


def conn_key() -> aiohttp.client_reqrep.ConnectionKey:
    return aiohttp.client_reqrep.ConnectionKey("api.example", 443, True, True, None, None, None)


def _requests_refused() -> BaseException:
    inner = uexc.NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    inner.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return requests.ConnectionError(uexc.MaxRetryError(None, "/v1", reason=inner))  # type: ignore[arg-type]


def _requests_remote_disconnected() -> BaseException:
    proto = uexc.ProtocolError("Connection aborted.", http.client.RemoteDisconnected(
        "Remote end closed connection without response"))
    return requests.ConnectionError(proto)


def _requests_connect_timeout() -> BaseException:
    reason = uexc.ConnectTimeoutError(None, "timed out")
    return requests.ConnectTimeout(uexc.MaxRetryError(None, "/v1", reason=reason))  # type: ignore[arg-type]


def _requests_dns() -> BaseException:
    reason = uexc.NameResolutionError("api.example", None, socket.gaierror(-2, "unknown"))  # type: ignore[arg-type]
    return requests.ConnectionError(uexc.MaxRetryError(None, "/v1", reason=reason))  # type: ignore[arg-type]


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


CASES: list[tuple[str, Callable[[], BaseException], type[ProviderFault], str]] = [
    ("ConnectionRefusedError", lambda: ConnectionRefusedError(111, "refused"),
     RejectedSafe, "connection_refused"),
    ("socket.gaierror", lambda: socket.gaierror(-2, "Name or service not known"),
     RejectedSafe, "dns_failure"),
    ("aiohttp DNS", lambda: aiohttp.ClientConnectorDNSError(
        conn_key(), socket.gaierror(-2, "unknown")), RejectedSafe, "dns_failure"),
    ("aiohttp certificate", lambda: aiohttp.ClientConnectorCertificateError(
        conn_key(), ssl.SSLCertVerificationError("certificate verify failed")),
     RejectedSafe, "tls_failure"),
    ("ssl cert verification", lambda: ssl.SSLCertVerificationError("verify failed"),
     RejectedSafe, "tls_failure"),
    ("aiohttp connect timeout", lambda: aiohttp.ConnectionTimeoutError("connect timed out"),
     RejectedSafe, "connect_timeout"),
    ("requests ConnectTimeout", _requests_connect_timeout, RejectedSafe, "connect_timeout"),
    ("requests refused", _requests_refused, RejectedSafe, "connection_refused"),
    ("requests DNS", _requests_dns, RejectedSafe, "dns_failure"),
    ("requests RemoteDisconnected", _requests_remote_disconnected, Ambiguous,
     "connection_lost"),
    ("requests ReadTimeout", lambda: requests.ReadTimeout("read timed out"), Ambiguous,
     "read_timeout"),
    ("aiohttp read timeout", lambda: aiohttp.SocketTimeoutError("Timeout on reading data"),
     Ambiguous, "read_timeout"),
    ("aiohttp ServerDisconnected", lambda: aiohttp.ServerDisconnectedError(), Ambiguous,
     "connection_lost"),
    ("ConnectionResetError", lambda: ConnectionResetError(104, "reset by peer"), Ambiguous,
     "connection_lost"),
    ("TimeoutError", lambda: TimeoutError(), Ambiguous, "timeout"),
    ("stripe wraps refused", lambda: _chained(stripe.APIConnectionError("x"),
                                              ConnectionRefusedError()),
     RejectedSafe, "connection_refused"),
    ("stripe wraps disconnect", lambda: _chained(stripe.APIConnectionError("x"),
                                                 aiohttp.ServerDisconnectedError()),
     Ambiguous, "connection_lost"),
    ("unknown exception", lambda: ValueError("weird"), Ambiguous, "unclassified_error"),
    ("stripe without cause", lambda: stripe.APIConnectionError("x"), Ambiguous,
     "unclassified_error"),
    ("fault passes through", lambda: RuntimeError(RejectedSafe("circuit_open")), RejectedSafe,
     "circuit_open"),
]


@pytest.mark.parametrize(("make", "kind", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_classify_constructed(make: Callable[[], BaseException], kind: type[ProviderFault],
                              code: str) -> None:
    assert_fault(make(), kind, code)


def test_cycles_in_the_chain_terminate() -> None:
    a, b = ValueError("a"), KeyError("b")
    a.__cause__, b.__cause__ = b, a
    assert_fault(a, Ambiguous, "unclassified_error")


@pytest.mark.parametrize(("status", "kind", "code"), [
    (429, RejectedSafe, "rate_limited"),
    (401, RejectedSafe, "provider_auth_error"),
    (403, RejectedSafe, "provider_auth_error"),
    (500, Ambiguous, "http_500"),
    (502, Ambiguous, "http_502"),
    (503, Ambiguous, "http_503"),
])
def test_classify_http_status(status: int, kind: type[ProviderFault], code: str) -> None:
    fault = classify_http_status(status)
    assert type(fault) is kind and fault.error_code == code and fault.http_status == status


@pytest.mark.parametrize("status", [200, 201, 400, 402, 404, 409, 422])
def test_statuses_with_an_answer_are_not_faults(status: int) -> None:
    assert classify_http_status(status) is None
