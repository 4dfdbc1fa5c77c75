"""Stripe's form encoding: bracket keys back to nested data, plus typed getters.

``metadata[order_id]=o-1&payment_method_types[0]=card`` ->
``{"metadata": {"order_id": "o-1"}, "payment_method_types": ["card"]}``.
Dicts whose keys are all decimal indexes become lists (``x[]`` appends).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("request body is not valid UTF-8") from None
    return parse_qsl(text, keep_blank_values=True)


def fingerprint(method: str, path: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Canonical form of a request for idempotency comparison (order-insensitive)."""
    return json.dumps([method.upper(), path, sorted(pairs)], separators=(",", ":"))


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nest bracket-notation keys; raise :class:`FormError` on malformed or clashing keys."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        m = _KEY.match(key)
        if m is None:
            raise FormError(f"Invalid parameter name: {key}", key)
        path = [m.group(1), *_PART.findall(m.group(2))]
        node = root
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))  # x[] appends
            if last:
                if isinstance(node.get(part), dict):
                    raise FormError(f"Invalid parameter: {key} mixes a value and a hash", key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise FormError(f"Invalid parameter: {key} mixes a value and a hash", key)
                node = child
    return {k: _listify(v) for k, v in root.items()}


def get_str(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormError(f"Invalid string: {key}", key)
    return value


def get_int(params: Mapping[str, Any], key: str, *, minimum: int = 0) -> int | None:
    raw = get_str(params, key)
    if raw is None:
        return None
    if not re.fullmatch(r"-?\d{1,12}", raw):
        raise FormError(f"Invalid integer: {raw}", key)
    value = int(raw)
    if value < minimum:
        raise FormError(f"This value must be greater than or equal to {minimum}.", key)
    return value


def get_bool(params: Mapping[str, Any], key: str) -> bool | None:
    raw = get_str(params, key)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise FormError(f"Invalid boolean: {raw}", key)
    return raw == "true"


def get_dict(params: Mapping[str, Any], key: str) -> dict[str, str]:
    value = params.get(key, {})
    if value == "":
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormError(f"Invalid hash: {key}", key)
    return dict(value)
