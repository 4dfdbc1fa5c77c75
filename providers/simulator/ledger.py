"""Bookkeeping shared by simulators: the charges view and request counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ChargeView:
    """One authorization as ``GET /_sim/{provider}/charges`` reports it.

    Amounts are in ISO 4217 minor units, whatever the provider's wire units are (each
    simulator converts with its provider's own table and
    :mod:`providers.simulator.iso_units`); a float marks an amount ISO units cannot
    hold exactly."""

    id: str
    amount: int | float
    currency: str
    status: str  # the provider's own status string
    amount_captured: int | float
    amount_refunded: int | float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestCounter:
    """API requests received, by operation (an aiohttp route name)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def hit(self, operation: str) -> None:
        self._counts[operation] += 1

    def count(self, operation: str | None = None) -> int:
        if operation is None:
            return sum(self._counts.values())
        return self._counts[operation]

    def snapshot(self) -> dict[str, Any]:
        return {"total": self.count(), "by_operation": dict(sorted(self._counts.items()))}

    def clear(self) -> None:
        self._counts.clear()
