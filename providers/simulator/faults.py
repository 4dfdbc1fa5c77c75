"""Fault settings of one simulated provider (SPEC section 15).

``POST /_sim/{provider}/faults`` merges a partial JSON object into the current
:class:`FaultSettings` (omitted keys keep their value); :func:`merge_faults`
validates it and raises :class:`FaultValidationError` (answered as HTTP 400).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any


class FaultMode(StrEnum):
    NORMAL = "normal"
    REFUSE = "refuse"  # the provider port stops listening: TCP connect refused
    HANG = "hang"  # requests are read and never answered
    DROP_AFTER_PROCESS = "drop_after_process"  # processed, then closed without a response


MAX_LATENCY_MS = 600_000


class FaultValidationError(ValueError):
    """A fault update was malformed; ``param`` names the offending key."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FaultSettings:
    mode: FaultMode = FaultMode.NORMAL
    latency_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 500
    rate_limit_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mode"] = self.mode.value
        return out

    def roll_rate_limit(self, rng: random.Random) -> bool:
        return self.rate_limit_rate > 0 and rng.random() < self.rate_limit_rate

    def roll_error(self, rng: random.Random) -> bool:
        return self.error_rate > 0 and rng.random() < self.error_rate


def _number(raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise FaultValidationError(f"{key} must be a number", key)
    return float(raw)


def _rate(raw: Any, key: str) -> float:
    value = _number(raw, key)
    if not 0.0 <= value <= 1.0:
        raise FaultValidationError(f"{key} must be between 0.0 and 1.0", key)
    return value


def merge_faults(current: FaultSettings, update: Any) -> FaultSettings:
    """Return ``current`` with the keys present in ``update`` replaced (validated)."""
    if not isinstance(update, dict):
        raise FaultValidationError("body must be a JSON object")
    known = set(FaultSettings.__dataclass_fields__)
    unknown = sorted(set(update) - known)
    if unknown:
        raise FaultValidationError(f"unknown key(s): {', '.join(unknown)}", unknown[0])
    changes: dict[str, Any] = {}
    if "mode" in update:
        try:
            changes["mode"] = FaultMode(update["mode"])
        except ValueError:
            modes = ", ".join(m.value for m in FaultMode)
            raise FaultValidationError(f"mode must be one of: {modes}", "mode") from None
    if "latency_ms" in update:
        latency = _number(update["latency_ms"], "latency_ms")
        if not 0 <= latency <= MAX_LATENCY_MS or latency != int(latency):
            raise FaultValidationError(
                f"latency_ms must be an integer between 0 and {MAX_LATENCY_MS}", "latency_ms"
            )
        changes["latency_ms"] = int(latency)
    for key in ("error_rate", "rate_limit_rate"):
        if key in update:
            changes[key] = _rate(update[key], key)
    if "error_status" in update:
        status = update["error_status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
            raise FaultValidationError("error_status must be an integer 500-599", "error_status")
        changes["error_status"] = status
    return replace(current, **changes)
