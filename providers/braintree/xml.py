"""XML encode/decode for the Braintree simulator, in the gateway's dialect.

* :func:`decode` reads a request body the SDK generated (underscore tags, attributes
  ``type="boolean|integer|array|datetime"``, ``nil="true"``) into plain Python data;
  an element with children becomes a dict, ``<amount></amount>`` becomes ``""``.
* :func:`encode` writes a response with **dashed** tags, as the real gateway does;
  the SDK turns dashes back into underscores. Lists are :class:`Array` values so the
  item tag is explicit (``<ids type="array"><item>..</item></ids>``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree as ET

MAX_BODY_BYTES = 1_000_000


class XmlError(ValueError):
    """A request body that is not well-formed XML the simulator understands."""


@dataclass(frozen=True)
class Array:
    """A list rendered as ``<tag type="array"><item_tag>...</item_tag>...</tag>``."""

    item_tag: str
    items: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Repeated:
    """Sibling elements with the same tag (``<transaction>..</transaction><transaction>..``)."""

    items: list[Any] = field(default_factory=list)


# ------------------------------------------------------------------ decode


def _value(el: ET.Element) -> Any:
    kind = el.get("type")
    children = list(el)
    if kind == "array":
        return [_value(c) for c in children]
    if children:
        out: dict[str, Any] = {}
        for child in children:
            key = child.tag.replace("-", "_")
            val = _value(child)
            if key in out:
                prev = out[key]
                out[key] = [*prev, val] if isinstance(prev, list) else [prev, val]
            else:
                out[key] = val
        return out
    if el.get("nil") == "true":
        return None
    text = el.text or ""
    if kind == "boolean":
        return text.strip() in ("true", "1")
    if kind == "integer":
        try:
            return int(text.strip())
        except ValueError as exc:
            raise XmlError(f"<{el.tag}> is not an integer") from exc
    return text


def decode(body: bytes) -> tuple[str, Any]:
    """``(root tag with underscores, value)``; an empty body -> ``("", {})``."""
    if not body.strip():
        return "", {}
    if len(body) > MAX_BODY_BYTES:
        raise XmlError("request body too large")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise XmlError("DTDs are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise XmlError(f"malformed XML: {exc}") from exc
    value = _value(root)
    return root.tag.replace("-", "_"), value if value != "" else {}


# ------------------------------------------------------------------ encode


def _dash(tag: str) -> str:
    return tag.replace("_", "-")


def _node(parent: ET.Element, tag: str, value: Any) -> None:
    el = ET.SubElement(parent, _dash(tag))
    _fill(el, value)


def _fill(el: ET.Element, value: Any) -> None:
    if value is None:
        el.set("nil", "true")
    elif isinstance(value, bool):
        el.set("type", "boolean")
        el.text = "true" if value else "false"
    elif isinstance(value, int):
        el.set("type", "integer")
        el.text = str(value)
    elif isinstance(value, dt.datetime):
        el.set("type", "datetime")
        el.text = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(value, dt.date):  # after datetime, its subclass
        el.set("type", "date")
        el.text = value.isoformat()
    elif isinstance(value, Decimal):
        el.text = format(value, "f")
    elif isinstance(value, str):
        el.text = value
    elif isinstance(value, Array):
        el.set("type", "array")
        for item in value.items:
            _node(el, value.item_tag, item)
    elif isinstance(value, dict):
        for key, val in value.items():
            if isinstance(val, Repeated):
                for item in val.items:
                    _node(el, key, item)
            else:
                _node(el, key, val)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as XML")


def encode(root: str, value: Any) -> bytes:
    """``<?xml ...?><root-tag>...</root-tag>`` as UTF-8 bytes."""
    el = ET.Element(_dash(root))
    _fill(el, value)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(el, encoding="utf-8",
                                                                     xml_declaration=False)
