"""Adyen's notification HMAC (standard webhooks), shared by the verifier and the simulator.

The key is hex; the signing string joins, with ``:``, pspReference, originalReference,
merchantAccountCode, merchantReference, amount value, amount currency, eventCode and
success (missing fields as ""); the signature is base64(HMAC-SHA256).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

SIGNED_FIELDS = ("pspReference", "originalReference", "merchantAccountCode",
                 "merchantReference", "value", "currency", "eventCode", "success")


def hmac_key(hex_key: str) -> bytes:
    """The raw key behind an Adyen HMAC key; ValueError when it is not (non-empty) hex."""
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
    return ":".join("" if values.get(k) is None else str(values.get(k)) for k in SIGNED_FIELDS)


def signature(item: Mapping[str, Any], key: bytes) -> bytes:
    """base64 of the item's HMAC-SHA256 under the raw ``key``."""
    return base64.b64encode(hmac.new(key, signing_string(item).encode(), hashlib.sha256).digest())
