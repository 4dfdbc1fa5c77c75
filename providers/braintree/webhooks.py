"""Braintree webhook notifications (bt_signature / bt_payload), as the simulator sends them.

``bt_payload`` = base64 (``encodebytes``: with newlines) of
``<notification><timestamp type="datetime">..</timestamp><kind>..</kind>
<subject>..</subject></notification>``;
``bt_signature`` = ``"<public_key>|" + hex(HMAC_SHA1(key=SHA1(private_key), msg=bt_payload))``.
The body is form-encoded, so ``+`` travels as ``%2B``. The SDK's
``gateway.webhook_notification.parse(bt_signature, bt_payload)`` accepts it.

Note: real Braintree sends ``transaction_settled`` / ``transaction_settlement_declined``
only for ACH / SEPA; the simulator also sends ``transaction_settled`` for cards so the
gateway's webhook path can be exercised. Card state is authoritative via ``find``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import urlencode

from providers.braintree.sim_model import now
from providers.braintree.xml import encode

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def sign_payload(public_key: str, private_key: str, payload: bytes) -> str:
    key = hashlib.sha1(private_key.encode()).digest()
    digest = hmac.new(key, payload, hashlib.sha1).hexdigest()
    return f"{public_key}|{digest}"


def build_payload(kind: str, subject: dict[str, Any]) -> bytes:
    """The base64 ``bt_payload`` of one notification; ``subject`` = ``{root: value}``."""
    xml = encode("notification", {"timestamp": now(), "kind": kind, "subject": subject})
    return base64.encodebytes(xml)


def form_body(public_key: str, private_key: str, kind: str, subject: dict[str, Any]) -> bytes:
    payload = build_payload(kind, subject)
    signature = sign_payload(public_key, private_key, payload)
    return urlencode({"bt_signature": signature, "bt_payload": payload.decode("ascii")}).encode()
