"""Strict, bounded JSON for request bodies and provider webhooks (SPEC section 12.1).

``json.loads`` alone lets the last of two duplicate keys win (``{"amount":100,
"amount":100000}`` authorizes 100000 while a proxy or a log reads 100), accepts lone
surrogates that later fail to encode, parses integers of any length, and recurses until
Python's stack gives out. :func:`loads` refuses each of these with a :class:`BodyError`
(answered 400 by the caller), before any field is looked at.

Limits (documented in the README):

* :data:`MAX_DEPTH` nesting levels of objects/arrays (a payment body needs 3);
* :data:`MAX_INT_DIGITS` digits in an integer (amounts are at most 10**12: 13 digits);
* UTF-8 only, no lone surrogates, no ``NaN`` / ``Infinity``; no duplicate keys.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 16
MAX_INT_DIGITS = 20


class BodyError(ValueError):
    """The body is not strict JSON; ``code`` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError("duplicate_key", f"the key {key[:40]!r} appears more than once")
        out[key] = value
    return out


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BodyError("number_too_long", f"integers may have at most {MAX_INT_DIGITS} digits")
    return int(text)


def _constant(name: str) -> Any:
    raise BodyError("invalid_number", f"{name} is not a JSON number")


def _depth_ok(text: str) -> bool:
    """Nesting depth <= MAX_DEPTH, counted outside strings (before json recurses)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BodyError("invalid_string", "strings must be valid Unicode (a lone "
                                "surrogate escape such as \\ud800 is not)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads(raw: bytes) -> Any:
    """Parse ``raw`` as strict JSON or raise :class:`BodyError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("invalid_utf8", "the body must be UTF-8") from None
    if not _depth_ok(text):
        raise BodyError("too_deep", f"JSON may nest at most {MAX_DEPTH} levels")
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_int=_int,
                           parse_constant=_constant)
    except json.JSONDecodeError:
        raise BodyError("invalid_json", "the request body must be a JSON object") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise BodyError("too_deep", f"JSON may nest at most {MAX_DEPTH} levels") from None
    _check_strings(value)
    return value
