"""Adyen standard notifications (webhooks) as the simulator sends them.

Body: ``{"live": "false", "notificationItems": [{"NotificationRequestItem": {...}}]}``
with ``success`` as the STRING "true"/"false" and
``additionalData.hmacSignature`` = base64(HMAC-SHA256(hex-decoded key, signing
string)), where the signing string is ``pspReference:originalReference:
merchantAccountCode:merchantReference:value:currency:eventCode:success`` (missing
fields empty) -- what ``Adyen.util.is_valid_hmac_notification`` verifies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from providers.adyen.hmac_signature import hmac_key, signature

check_hmac_key = hmac_key  # the simulator validates its key at start-up


def sign_item(item: Mapping[str, Any], hex_key: str) -> str:
    return signature(item, hmac_key(hex_key)).decode()


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
