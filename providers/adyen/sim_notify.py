"""Adyen standard notifications (webhooks) as the simulator sends them.

Body: ``{"live": "false", "notificationItems": [{"NotificationRequestItem": {...}}]}``
with ``success`` as the STRING "true"/"false" and
``additionalData.hmacSignature`` = base64(HMAC-SHA256(hex-decoded key, signing
string)), where the signing string is ``pspReference:originalReference:
merchantAccountCode:merchantReference:value:currency:eventCode:success`` (missing
fields empty) -- Adyen's documented scheme ("Verify HMAC signatures"), which
``Adyen.util.is_valid_hmac_notification`` verifies. The simulator signs with its own
code, not the gateway verifier's (``providers/adyen/hmac_signature.py``): a test checks
both against the SDK.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: the item fields Adyen signs, in order (amount value and currency in place)
SIGNED_FIELDS = ("pspReference", "originalReference", "merchantAccountCode",
                 "merchantReference", "value", "currency", "eventCode", "success")


def check_hmac_key(hex_key: str) -> bytes:
    """The raw key behind Adyen's hex HMAC key (validated at start-up)."""
    try:
        raw = binascii.unhexlify(hex_key)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the Adyen HMAC key must be a hex string") from exc
    if not raw:
        raise ValueError("the Adyen HMAC key must not be empty")
    return raw


def signing_string(item: Mapping[str, Any]) -> str:
    raw = item.get("amount")
    amount: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    values = {**item, "value": amount.get("value", ""), "currency": amount.get("currency", "")}
    return ":".join("" if values.get(k) is None else str(values[k]) for k in SIGNED_FIELDS)


def sign_item(item: Mapping[str, Any], hex_key: str) -> str:
    mac = hmac.new(check_hmac_key(hex_key), signing_string(item).encode("utf-8"),
                   hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def build_item(
    *, event_code: str, success: bool, psp: str, merchant_account: str, reference: str,
    value: int, currency: str, hex_key: str, original_reference: str | None = None,
    payment_method: str | None = None, reason: str = "", extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "amount": {"currency": currency, "value": value},
        "eventCode": event_code,
        "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
        "merchantAccountCode": merchant_account,
        "merchantReference": reference,
        "pspReference": psp,
        "reason": reason,
        "success": "true" if success else "false",
    }
    if original_reference:
        item["originalReference"] = original_reference
    if payment_method:
        item["paymentMethod"] = payment_method
    item["additionalData"] = {**(extra or {}), "hmacSignature": sign_item(item, hex_key)}
    return item


def build_body(items: list[dict[str, Any]]) -> bytes:
    body = {"live": "false",
            "notificationItems": [{"NotificationRequestItem": i} for i in items]}
    return json.dumps(body, separators=(",", ":")).encode()
