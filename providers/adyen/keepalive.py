"""Keep-alive for the Adyen SDK's HTTP calls (issue #15 item 3).

The SDK's ``requests`` transport (``Adyen.httpclient.HTTPClient._requests_request``) sends
every call with ``requests.request``, which builds a session for the one call: a new TCP
(and, against Adyen, TLS) connection per payment, capture and refund.
:class:`KeepAliveHTTPClient` is that transport on one ``requests.Session`` kept by the SDK
instance, so connections are reused; the adapter gives each worker thread its own SDK
instance (a session is not shared between threads). Headers, authentication, timeout,
errors and what is returned stay the SDK's: the exceptions are the same ``requests`` ones
:mod:`providers.adyen.errors` classifies, and a pooled connection the server had closed
fails as a disconnect, which is ambiguous there (the call is replayed with its
idempotency key, never taken as "not sent").

:func:`install` puts it into an ``Adyen.Adyen`` instance through the SDK client's public
``http_client`` / ``http_init`` attributes (``AdyenClient._init_http_client`` is then never
called).
"""

from __future__ import annotations

from typing import Any

import Adyen
import requests
from Adyen.httpclient import HTTPClient


class KeepAliveHTTPClient(HTTPClient):
    """The SDK's ``requests`` transport on one kept session."""

    def __init__(self, user_agent_suffix: str, lib_version: str, timeout: Any) -> None:
        super().__init__(user_agent_suffix, lib_version, force_request="requests",
                         timeout=timeout)
        self.session = requests.Session()
        self.request = self._session_request

    def _session_request(self, method: str, url: str, json: Any = None, data: Any = None,
                         username: str = "", password: str = "", xapikey: str = "",
                         headers: dict[str, str] | None = None
                         ) -> tuple[str, Any, int, Any]:
        sent = dict(headers or {})
        auth = None
        if username and password:
            auth = requests.auth.HTTPBasicAuth(username, password)
        elif xapikey:
            sent["x-api-key"] = xapikey
        sent["User-Agent"] = self.user_agent
        response = self.session.request(method=method, url=url, auth=auth, data=data,
                                        json=json, headers=sent, timeout=self.timeout)
        # as the SDK's: (raw body, the request as sent, status, response headers)
        return response.text, json, response.status_code, response.headers

    def close(self) -> None:
        self.session.close()


def install(sdk: Adyen.Adyen) -> KeepAliveHTTPClient:
    """Give ``sdk`` a kept-session transport; returns it (to close it with the SDK)."""
    inner = sdk.client
    suffix = inner.USER_AGENT_SUFFIX
    if inner.application_name:  # as AdyenClient._init_http_client builds it
        suffix = f"{inner.application_name} {suffix}"
    transport = KeepAliveHTTPClient(suffix, inner.LIB_VERSION, inner.http_timeout)
    inner.http_client = transport
    inner.http_init = True
    return transport


__all__ = ["KeepAliveHTTPClient", "install"]
