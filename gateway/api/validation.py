"""Request body validation for the merchant API.

Each failure raises :class:`ApiError` (400 ``invalid_request``) naming the ``param``.
Raw card data is refused before anything else looks at the body: a ``number`` /
``cvc`` / ``cvv`` key anywhere, or any 13-19 digit Luhn-valid string anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.api.errors import ApiError
from gateway.logs import contains_card_number
from gateway.public_schema import STATUSES
from providers import strict_json
from providers.currency import UnknownCurrency, minor_unit

CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_AMOUNT = 10**12
_CARD_KEYS = {"number", "cvc", "cvv", "card_number", "cvv2", "pan"}

def _bad(param: str, message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, "invalid_request", code, message, param=param)


def _walk_for_card_data(value: Any) -> bool:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k.lower() in _CARD_KEYS:
                return True
            if _walk_for_card_data(k) or _walk_for_card_data(v):
                return True
        return False
    if isinstance(value, list):
        return any(_walk_for_card_data(v) for v in value)
    if isinstance(value, str):
        return contains_card_number(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 10**12:
        return contains_card_number(str(value))
    return False


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode the body; refuse raw card data without echoing it."""
    if not raw.strip():
        return {}
    try:
        body = strict_json.loads(raw)
    except strict_json.BodyError as exc:
        if contains_card_number(raw.decode("utf-8", "replace")):
            raise ApiError(400, "invalid_request", "raw_card_data_rejected",
                           "raw card data is not accepted; send a payment-method token") from None
        raise _bad("body", exc.message, exc.code) from None
    if _walk_for_card_data(body):
        raise ApiError(400, "invalid_request", "raw_card_data_rejected",
                       "raw card data is not accepted; send a payment-method token")
    if not isinstance(body, dict):
        raise _bad("body", "the request body must be a JSON object", "invalid_json")
    return body


def _amount(body: dict[str, Any], param: str, required: bool) -> int | None:
    if param not in body or body[param] is None:
        if required:
            raise _bad(param, f"{param} is required", "parameter_missing")
        return None
    v = body[param]
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(param, f"{param} must be an integer in the currency's minor unit")
    if v <= 0 or v > MAX_AMOUNT:
        raise _bad(param, f"{param} must be between 1 and {MAX_AMOUNT}")
    return v


def only_params(body: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    """400 parameter_unknown for the first key of ``body`` not in ``allowed``."""
    for k in body:
        if k not in allowed:
            raise _bad(prefix + str(k), f"unknown parameter {prefix}{k}", "parameter_unknown")


def _str_map(value: Any, param: str, max_items: int = 50) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > max_items:
        raise _bad(param, f"{param} must be an object with at most {max_items} entries")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > 40 or len(v) > 500:
            raise _bad(f"{param}.{k}",
                       f"{param} values must be strings (keys <= 40, values <= 500)")
    return value


def validate_create(body: dict[str, Any]) -> dict[str, Any]:
    only_params(body, {"amount", "currency", "capture", "payment_method", "reference", "customer",
                 "metadata", "return_url"})
    _amount(body, "amount", required=True)
    cur = body.get("currency")
    if not isinstance(cur, str) or not CURRENCY.match(cur):
        raise _bad("currency", "currency must be an upper-case ISO 4217 code such as EUR")
    try:
        minor_unit(cur)
    except UnknownCurrency as exc:
        raise _bad("currency", str(exc), "currency_not_supported") from None
    capture = body.get("capture", "automatic")
    if capture not in ("automatic", "manual"):
        raise _bad("capture", "capture must be 'automatic' or 'manual'")
    pm = body.get("payment_method")
    if not isinstance(pm, dict):
        raise _bad("payment_method", "payment_method is required", "parameter_missing")
    only_params(pm, {"type", "token", "brand", "provider_tokens", "three_d_secure"},
          "payment_method.")
    if pm.get("three_d_secure", "automatic") not in ("automatic", "required"):
        raise _bad("payment_method.three_d_secure",
                   "payment_method.three_d_secure must be 'automatic' or 'required'")
    return_url = body.get("return_url")
    if return_url is not None and (not isinstance(return_url, str) or len(return_url) > 2048
                                   or not re.fullmatch(r"https?://[^\s]+", return_url)):
        raise _bad("return_url", "return_url must be an http:// or https:// URL "
                   "(at most 2048 characters)")
    if pm.get("type", "card") != "card":
        raise _bad("payment_method.type", "only payment_method.type 'card' is supported")
    token = pm.get("token")
    ptokens = pm.get("provider_tokens")
    if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 255):
        raise _bad("payment_method.token", "payment_method.token must be a string (1-255)")
    if ptokens is not None:
        _str_map(ptokens, "payment_method.provider_tokens")
        if not ptokens:
            raise _bad("payment_method.provider_tokens", "provider_tokens must not be empty")
    if token is None and not ptokens:
        raise _bad("payment_method.token", "payment_method.token (or provider_tokens) is required",
                   "parameter_missing")
    brand = pm.get("brand")
    if brand is not None and (not isinstance(brand, str) or len(brand) > 32):
        raise _bad("payment_method.brand", "payment_method.brand must be a short string")
    ref = body.get("reference")
    if ref is not None and (not isinstance(ref, str) or len(ref) > 255):
        raise _bad("reference", "reference must be a string of at most 255 characters")
    customer = body.get("customer")
    if customer is not None:
        if not isinstance(customer, dict):
            raise _bad("customer", "customer must be an object")
        only_params(customer, {"country"}, "customer.")
        country = customer.get("country")
        if country is not None and (not isinstance(country, str)
                                    or not re.fullmatch(r"[A-Z]{2}", country)):
            raise _bad("customer.country", "customer.country must be an ISO 3166 alpha-2 code")
    _str_map(body.get("metadata"), "metadata")
    return {**body, "capture": capture, "payment_method": {"type": "card", **pm}}


def validate_capture(body: dict[str, Any]) -> int | None:
    only_params(body, {"amount"})
    return _amount(body, "amount", required=False)


def validate_confirm(body: dict[str, Any]) -> None:
    """``POST /v1/payments/{id}/confirm`` takes no parameters (empty body or ``{}``): what
    the customer's return carried is already on the payment."""
    only_params(body, set())


def validate_void(body: dict[str, Any]) -> None:
    only_params(body, {"reason"})
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 255):
        raise _bad("reason", "reason must be a string of at most 255 characters")


def validate_refund(body: dict[str, Any]) -> tuple[int | None, str | None]:
    only_params(body, {"amount", "reason"})
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 255):
        raise _bad("reason", "reason must be a string of at most 255 characters")
    return _amount(body, "amount", required=False), reason


#: Query parameters of ``GET /v1/payments`` (SPEC 3.1); any other one is a 400.
SEARCH_PARAMS = ("reference", "status", "provider", "created[gte]", "created[lt]", "limit",
                 "starting_after")
SEARCH_LIMIT_DEFAULT = 20
SEARCH_LIMIT_MAX = 100
_LIMIT = re.compile(r"^[0-9]{1,3}$")
_DATE_ONLY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _iso_timestamp(param: str, raw: str) -> float:
    """An ISO 8601 date-time with a UTC offset (``Z`` or ``+02:00``), or a date (00:00
    UTC), as unix seconds. A date-time without an offset is refused: it names no instant."""
    bad = _bad(param, f"{param} must be an ISO 8601 date-time with a time zone, such as "
               "2026-12-03T08:00:00Z, or a date such as 2026-12-03")
    text = raw.strip()
    if not text or len(text) > 64:
        raise bad
    try:
        if _DATE_ONLY.match(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise bad from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise bad
    try:
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise bad from None


def validate_search(query: Mapping[str, str], keys: list[str]) -> dict[str, Any]:
    """The query of ``GET /v1/payments``: ``reference``, ``status``, ``provider``,
    ``created_gte`` / ``created_lt`` (unix seconds), ``limit`` and ``starting_after`` (the
    payment id, resolved by the handler). ``keys`` lists every parameter name as sent
    (repeats included): an unknown or repeated one is a 400."""
    if any(contains_card_number(k) or contains_card_number(query[k]) for k in query):
        raise ApiError(400, "invalid_request", "raw_card_data_rejected",
                       "raw card data is not accepted")
    seen: set[str] = set()
    for k in keys:
        if k not in SEARCH_PARAMS:
            shown = k if len(k) <= 64 and k.isprintable() else "?"
            raise _bad(shown, f"unknown query parameter {shown!r}; allowed: "
                       f"{', '.join(SEARCH_PARAMS)}", "parameter_unknown")
        if k in seen:
            raise _bad(k, f"{k} may be given once", "parameter_repeated")
        seen.add(k)
    out: dict[str, Any] = {"limit": SEARCH_LIMIT_DEFAULT}
    for param in ("reference", "provider", "starting_after"):
        if param in query:
            value = query[param]
            if (not value and param != "reference") or len(value) > 255:
                raise _bad(param, f"{param} must be a string of 1 to 255 characters")
            out[param] = value
    if "status" in query:
        if query["status"] not in STATUSES:
            raise _bad("status", f"status must be one of {', '.join(STATUSES)}")
        out["status"] = query["status"]
    if "created[gte]" in query:
        out["created_gte"] = _iso_timestamp("created[gte]", query["created[gte]"])
    if "created[lt]" in query:
        out["created_lt"] = _iso_timestamp("created[lt]", query["created[lt]"])
    if "limit" in query:
        raw = query["limit"]
        if not _LIMIT.match(raw) or not 1 <= int(raw) <= SEARCH_LIMIT_MAX:
            raise _bad("limit", f"limit must be an integer from 1 to {SEARCH_LIMIT_MAX}")
        out["limit"] = int(raw)
    return out
