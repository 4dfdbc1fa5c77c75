"""Strictness of gateway.yaml (SPEC section 14.1): every key at every level must be known.

A typo (``stroe:``, ``reconcile:`` for ``reconciliation:``, ``failmax:`` inside
``breaker:``) would otherwise be ignored at run time while ``check-config`` says ok.
:func:`unknown_keys` walks the YAML node tree against :data:`SCHEMA` and reports every
unknown key with its file, line and the keys allowed there, all at once.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from providers.registry import DECLARATIONS

Schema = dict[str, Any]  # key -> nested Schema, LIST_OF(Schema), MAP_OF(Schema) or None

_RETRY = {"attempts": None, "backoff_s": None, "backoff_max_s": None, "jitter_s": None}
_RECONCILIATION = {"enabled": None, "interval_s": None, "batch_size": None, "min_age_s": None,
                   "webhook_deadline_s": None, "lease_s": None, "replay_window_s": None,
                   "action_window_s": None}
_NOTIFICATIONS = {"poll_interval_s": None, "timeout_s": None, "backoff_base_s": None,
                  "backoff_max_s": None, "max_age_s": None, "batch_size": None}
_MERCHANT = {"id": None, "api_key_sha256": None,
             "webhook": {"url": None, "secret": None, "notify_all": None}}
_PROVIDER_COMMON = {"type": None, "sandbox": None, "currencies": None, "base_url": None,
                    "timeout_s": None, "connect_timeout_s": None, "fee_bps": None,
                    "breaker": {"fail_max": None, "reset_timeout_s": None}}
def provider_keys(provider_type: str) -> Schema:
    """Keys a provider type adds (credentials and its own options), from its declaration."""
    decl = DECLARATIONS.get(provider_type)
    return {**dict.fromkeys(decl.secret_keys), **decl.option_keys} if decl else {}


class _ListOf:
    def __init__(self, item: Schema) -> None:
        self.item = item


SCHEMA: Schema = {
    "store": None, "routing_file": None, "admin_token": None, "candidates": None,
    "request_deadline_s": None, "idempotency_ttl_s": None, "allow_short_idempotency_ttl": None,
    "failover_budget": None, "routing_poll_s": None,
    "retry": _RETRY, "sandbox": {"host": None, "control_port": None},
    "reconciliation": _RECONCILIATION, "notifications": _NOTIFICATIONS,
    "merchants": _ListOf(_MERCHANT), "providers": "providers",
    "store_options": {"allow_volatile": None, "pool_size": None, "pool_timeout_s": None},
    "server": {"header_timeout_s": None, "body_timeout_s": None, "keepalive_timeout_s": None,
               "max_connections": None, "backlog": None},
    "admission": {"max_in_flight": None, "retry_after_s": None, "max_busy": None,
                  "loop_lag_target_ms": None, "min_in_flight": None},
}


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _provider_schema(node: MappingNode) -> Schema:
    ptype = next((v.value for k, v in node.value
                  if isinstance(k, ScalarNode) and k.value == "type"
                  and isinstance(v, ScalarNode)), None)
    return {**_PROVIDER_COMMON, **provider_keys(str(ptype))}


def _walk(node: Node, schema: Any, where: str, file: str, out: list[str]) -> None:
    if schema is None or schema == "free":
        return
    if isinstance(schema, _ListOf):
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                _walk(item, schema.item, f"{where}[{i}]", file, out)
        return
    if not isinstance(node, MappingNode):
        return  # a wrong type is reported by the loader with its own message
    if schema == "providers":
        for knode, vnode in node.value:
            if isinstance(vnode, MappingNode):
                _walk(vnode, _provider_schema(vnode), f"{where}.{knode.value}", file, out)
        return
    for knode, vnode in node.value:
        key = knode.value if isinstance(knode, ScalarNode) else str(knode)
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            out.append(f"{file}:{_line(knode)}: {where}: unknown key {key!r} "
                       f"(allowed: {allowed})")
            continue
        _walk(vnode, schema[key], f"{where}.{key}", file, out)


def unknown_keys(text: str, file: str) -> list[str]:
    """Every unknown key in the gateway.yaml ``text``, as ``file:line: path: message``."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []  # the loader reports bad YAML with its line
    if root is None:
        return []
    out: list[str] = []
    _walk(root, SCHEMA, file.rsplit("/", 1)[-1], file, out)
    return out


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """The line of every key (and list item) in the YAML ``text``, by key path:
    ``("providers", "stripe_main", "timeout_s") -> 14``; empty if it does not compose."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[tuple[str | int, ...], int] = {}

    def walk(node: Node, path: tuple[str | int, ...]) -> None:
        if isinstance(node, MappingNode):
            for knode, vnode in node.value:
                key = (*path, str(knode.value))
                out.setdefault(key, _line(knode))
                walk(vnode, key)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                out.setdefault((*path, i), _line(item))
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return out
