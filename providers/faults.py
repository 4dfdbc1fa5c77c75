"""Classify a transport exception as *never sent* or *sent, outcome unknown*.

SDKs wrap the network error they hit (``stripe.APIConnectionError from
aiohttp.ClientConnectorError``, ``requests.ConnectionError(MaxRetryError(reason=
NewConnectionError))``, ``braintree.exceptions.http.ConnectionError from ...``). We walk
the chain from the outside in -- ``__cause__``, ``__context__``, ``.reason`` and
exception arguments -- and the first exception of a known kind decides:

* connect-phase failures (refused, DNS, TLS handshake, connect timeout) -> RejectedSafe:
  the request was never written, so another provider may be tried;
* everything after the request may have been written (read timeout, reset, server
  closed mid-response) -> Ambiguous;
* anything unrecognised -> Ambiguous. Unknown never becomes "safe", and never a decline.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
import warnings
from collections.abc import Iterator

from providers.base import Ambiguous, ProviderFault, RejectedSafe

#: The ``error_code`` of an exception no rule recognised (always :class:`Ambiguous`).
UNCLASSIFIED = "unclassified_error"

_SAFE: list[tuple[type[BaseException], str]] = []
_AMBIGUOUS: list[tuple[type[BaseException], str]] = []


def _register() -> None:
    import aiohttp

    safe: list[tuple[type[BaseException], str]] = []
    amb: list[tuple[type[BaseException], str]] = []
    # aiohttp: most specific first.
    safe.append((aiohttp.ClientConnectorDNSError, "dns_failure"))
    safe.append((aiohttp.ClientConnectorCertificateError, "tls_failure"))
    safe.append((aiohttp.ClientConnectorSSLError, "tls_failure"))
    safe.append((aiohttp.ClientConnectorError, "connection_refused"))
    safe.append((aiohttp.ConnectionTimeoutError, "connect_timeout"))
    amb.append((aiohttp.SocketTimeoutError, "read_timeout"))
    amb.append((aiohttp.ServerDisconnectedError, "connection_lost"))
    amb.append((aiohttp.ClientPayloadError, "connection_lost"))
    amb.append((aiohttp.ServerTimeoutError, "read_timeout"))
    try:
        import requests.exceptions as rexc
        import urllib3.exceptions as uexc

        safe.append((rexc.ConnectTimeout, "connect_timeout"))
        safe.append((rexc.SSLError, "tls_failure"))
        # NameResolutionError < NewConnectionError < ConnectTimeoutError: subclasses first.
        safe.append((uexc.NameResolutionError, "dns_failure"))
        safe.append((uexc.NewConnectionError, "connection_refused"))
        safe.append((uexc.ConnectTimeoutError, "connect_timeout"))
        amb.append((rexc.ReadTimeout, "read_timeout"))
        amb.append((rexc.ChunkedEncodingError, "connection_lost"))
        amb.append((uexc.ReadTimeoutError, "read_timeout"))
        amb.append((uexc.ProtocolError, "connection_lost"))
    except ImportError:  # pragma: no cover - requests ships with the sync SDKs
        pass
    try:
        with warnings.catch_warnings():  # braintree warns (DeprecationWarning) at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from braintree.exceptions.http.timeout_error import (
                ConnectTimeoutError,
                ReadTimeoutError,
            )

        safe.append((ConnectTimeoutError, "connect_timeout"))
        amb.append((ReadTimeoutError, "read_timeout"))
    except ImportError:  # pragma: no cover
        pass
    # Standard library last: these often sit under a more specific wrapper.
    safe.append((socket.gaierror, "dns_failure"))
    safe.append((ConnectionRefusedError, "connection_refused"))
    safe.append((ssl.SSLCertVerificationError, "tls_failure"))
    amb.append((http.client.RemoteDisconnected, "connection_lost"))
    amb.append((ConnectionResetError, "connection_lost"))
    amb.append((BrokenPipeError, "connection_lost"))
    amb.append((ConnectionAbortedError, "connection_lost"))
    amb.append((asyncio.TimeoutError, "timeout"))
    _SAFE[:] = safe
    _AMBIGUOUS[:] = amb


def exception_chain(exc: BaseException, limit: int = 16) -> Iterator[BaseException]:
    """Yield ``exc`` and what it wraps, outermost first, each once."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue and len(seen) < limit:
        cur = queue.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nested: list[object] = [cur.__cause__, getattr(cur, "reason", None), *cur.args]
        if not cur.__suppress_context__:
            nested.append(cur.__context__)
        queue.extend(n for n in nested if isinstance(n, BaseException))


def classify_transport_error(exc: BaseException) -> ProviderFault:
    """Map a network-level exception (with its cause chain) to a fault type."""
    if not _SAFE:
        _register()
    for link in exception_chain(exc):
        if isinstance(link, ProviderFault):
            return link
        for typ, code in _SAFE:
            if isinstance(link, typ):
                return RejectedSafe(code, f"request not sent: {type(link).__name__}")
        for typ, code in _AMBIGUOUS:
            if isinstance(link, typ):
                return Ambiguous(code, f"outcome unknown: {type(link).__name__}")
    return Ambiguous(UNCLASSIFIED, f"outcome unknown: {type(exc).__name__}")


def classify_http_status(status: int) -> ProviderFault | None:
    """Faults implied by an HTTP status alone (None for statuses that carry an answer)."""
    if status == 429:
        return RejectedSafe("rate_limited", "provider rate limit (429)", status=status)
    if status in (401, 403):
        return RejectedSafe(
            "provider_auth_error", f"provider rejected credentials ({status})", status=status
        )
    if status >= 500:
        return Ambiguous(f"http_{status}", f"provider server error ({status})", status=status)
    return None
