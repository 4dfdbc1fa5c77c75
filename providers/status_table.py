"""Explicit provider-status tables: shared lookup and the unmapped-status report.

Each provider package keeps its own tables (``providers/<name>/status.py``). A value
missing from a table never counts as success: it maps to the caller's ``unknown`` and is
reported through :data:`on_unmapped` ``(provider_type, kind, raw)``, which the gateway
points at the ``gateway_provider_unmapped_status_total`` metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

#: Called with ``(provider_type, kind, raw_value)`` for every unmapped value.
on_unmapped: Callable[[str, str, str], None] | None = None


def report_unmapped(provider_type: str, kind: str, raw: object) -> None:
    if on_unmapped is not None:
        on_unmapped(provider_type, kind, str(raw))


def lookup(table: Mapping[str, T], raw: object, unknown: T, provider_type: str,
           kind: str) -> tuple[T, bool]:
    """``(status, True)`` from ``table``; ``(unknown, False)`` (reported) when missing."""
    status = table.get(raw) if isinstance(raw, str) else None
    if status is None:
        report_unmapped(provider_type, kind, raw)
        return unknown, False
    return status, True
