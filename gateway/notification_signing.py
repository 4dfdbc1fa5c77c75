"""Signing and verifying merchant notifications (``Gateway-Signature``).

The header is ``t=<unix seconds>,v1=<hex>`` where ``<hex>`` is the lowercase hex
HMAC-SHA256, keyed with the merchant's webhook secret, of the bytes
``b"<t>." + <raw request body>``. Several ``v1=`` entries may appear (e.g. while a
secret is being rotated); one matching entry is enough.

This module depends only on the standard library, so a merchant can copy it as is::

    from gateway.notification_signing import verify_signature

    ok = verify_signature(raw_body, request.headers["Gateway-Signature"], secret)

Always verify the RAW body bytes (before any JSON parsing), then dedupe on the
event ``id`` (also sent as ``Gateway-Event-Id``): a notification may arrive more than
once.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Gateway-Signature"
EVENT_ID_HEADER = "Gateway-Event-Id"
DEFAULT_TOLERANCE_S = 300.0


def compute_signature(body: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp>." + body`` keyed with ``secret``."""
    message = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Gateway-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={compute_signature(body, secret, t)}"


def parse_signature_header(header: str) -> tuple[int | None, list[str]]:
    """``(timestamp or None, [v1 signatures])``; unknown or malformed parts are ignored."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return None, []
        elif key == "v1" and value:
            signatures.append(value.strip().lower())
    return timestamp, signatures


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True if ``header`` carries a ``v1`` signature of ``body`` made with ``secret`` and
    its timestamp is within ``tolerance_s`` of ``now`` (default: this host's clock).

    Comparison is constant time for every candidate (no early exit on a match).
    """
    if not header or not secret:
        return False
    timestamp, candidates = parse_signature_header(header)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if tolerance_s is not None and abs(current - timestamp) > tolerance_s:
        return False
    expected = compute_signature(body, secret, timestamp)
    matched = False
    for candidate in candidates:
        if hmac.compare_digest(expected.encode("ascii"),
                               candidate.encode("ascii", errors="replace")):
            matched = True
    return matched


__all__ = [
    "DEFAULT_TOLERANCE_S",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "compute_signature",
    "parse_signature_header",
    "sign",
    "verify_signature",
]
