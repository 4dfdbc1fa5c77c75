"""Merchant authentication: ``Authorization: Bearer <key>`` against SHA-256 hashes.

Keys are configured only as SHA-256 hex digests. The presented key's digest is compared
in constant time with every configured digest (no early exit), and the key itself is
never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from gateway.api.errors import ApiError
from gateway.config import GatewayConfig

KEY_PREFIX = "gw_sk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A new merchant API key and its SHA-256 (for gateway.yaml)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def bearer_token(request: web.Request) -> str | None:
    """The bearer token, None when absent; 401 for a header that is not printable ASCII
    (aiohttp hands such bytes over as surrogate escapes, which must never reach a hash)."""
    header = request.headers.get("Authorization", "")
    if not (header.isascii() and header.isprintable()):
        raise ApiError(401, "authentication_failed", "malformed_authorization",
                       "the Authorization header must be printable ASCII",
                       headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate_merchant(request: web.Request, config: GatewayConfig) -> str:
    """Return the merchant id for the request's key, or raise 401."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "authentication_failed", "missing_api_key",
                       "send 'Authorization: Bearer <API key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    digest = hash_key(token)
    found: str | None = None
    for merchant in config.merchants.values():
        for expected in merchant.api_key_sha256:
            if hmac.compare_digest(digest, expected) and found is None:
                found = merchant.id
    if found is None:
        raise ApiError(401, "authentication_failed", "invalid_api_key", "invalid API key",
                       headers={"WWW-Authenticate": "Bearer"})
    return found
