"""Fault settings of one simulated provider (SPEC section 15).

``POST /_sim/{provider}/faults`` merges a partial JSON object into the current
:class:`FaultSettings` (omitted keys keep their value); :func:`merge_faults`
validates it and raises :class:`FaultValidationError` (answered as HTTP 400).

Keys (defaults in :class:`FaultSettings`):

* ``mode``: ``normal`` | ``refuse`` | ``hang`` | ``drop_after_process`` | ``late_process``.
  ``late_process``: the request is read, the client is left waiting and the provider
  processes it ``late_process_ms`` later, whether or not the client is still connected
  (the answer then goes to the client if it still waits, else nowhere). No other
  injected error applies to a request in ``late_process``.
* ``latency_ms`` / ``late_process_ms`` / ``search_lag_ms``: integers 0..600000 (ms).
  ``search_lag_ms``: a new transaction becomes visible to the provider's *search* only
  that long after it was created (Braintree transaction search, Stripe Search API);
  lookups by id are immediate. Only providers with a search API accept a non-zero
  value (``supports_search``); others answer 400 with ``param: search_lag_ms``.
* ``error_rate`` (0..1) + ``error_status`` (500..599): injected 5xx answers;
  ``error_after_process`` (bool): produce that 5xx *after* the request was processed
  (the charge exists) instead of before. ``rate_limit_rate`` (0..1): injected 429s,
  always before processing.
* ``clock_skew_s``: seconds (-864000..864000, may be fractional) added to the time in
  the ``Date`` header of every answer of that provider, as if its clock ran that far
  ahead (negative: behind); nothing else uses it (webhook timestamps stay true). Default
  0; ``GET`` lists it only when it is set (the answer is otherwise unchanged).
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
    LATE_PROCESS = "late_process"  # processed late_process_ms later, client waiting or not


MAX_LATENCY_MS = 600_000
MAX_CLOCK_SKEW_S = 864_000  # 10 days
MILLIS_KEYS = ("latency_ms", "late_process_ms", "search_lag_ms")


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
    late_process_ms: int = 0
    search_lag_ms: int = 0
    error_after_process: bool = False
    clock_skew_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mode"] = self.mode.value
        if not self.clock_skew_s:
            del out["clock_skew_s"]
        return out

    def roll_rate_limit(self, rng: random.Random) -> bool:
        return self.rate_limit_rate > 0 and rng.random() < self.rate_limit_rate

    def roll_error(self, rng: random.Random) -> bool:
        return self.error_rate > 0 and rng.random() < self.error_rate

    def searchable(self, age_s: float) -> bool:
        """Whether an object created ``age_s`` seconds ago is visible to search yet."""
        return age_s * 1000 >= self.search_lag_ms


def _number(raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise FaultValidationError(f"{key} must be a number", key)
    return float(raw)


def _rate(raw: Any, key: str) -> float:
    value = _number(raw, key)
    if not 0.0 <= value <= 1.0:
        raise FaultValidationError(f"{key} must be between 0.0 and 1.0", key)
    return value


def _millis(raw: Any, key: str) -> int:
    value = _number(raw, key)
    if not 0 <= value <= MAX_LATENCY_MS or value != int(value):
        raise FaultValidationError(
            f"{key} must be an integer between 0 and {MAX_LATENCY_MS}", key)
    return int(value)


def merge_faults(current: FaultSettings, update: Any, *, supports_search: bool = True,
                 provider: str = "this provider") -> FaultSettings:
    """Return ``current`` with the keys present in ``update`` replaced (validated).

    ``supports_search=False`` (a provider without a search API, e.g. Adyen) rejects a
    non-zero ``search_lag_ms``; 0, the value such a provider reports, is accepted."""
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
    for key in MILLIS_KEYS:
        if key in update:
            changes[key] = _millis(update[key], key)
    if changes.get("search_lag_ms") and not supports_search:
        raise FaultValidationError(
            f"{provider} has no search API: search_lag_ms must be 0", "search_lag_ms")
    if "error_after_process" in update:
        flag = update["error_after_process"]
        if not isinstance(flag, bool):
            raise FaultValidationError("error_after_process must be true or false",
                                       "error_after_process")
        changes["error_after_process"] = flag
    for key in ("error_rate", "rate_limit_rate"):
        if key in update:
            changes[key] = _rate(update[key], key)
    if "clock_skew_s" in update:
        skew = _number(update["clock_skew_s"], "clock_skew_s")
        if not -MAX_CLOCK_SKEW_S <= skew <= MAX_CLOCK_SKEW_S:
            raise FaultValidationError(
                f"clock_skew_s must be between -{MAX_CLOCK_SKEW_S} and {MAX_CLOCK_SKEW_S}",
                "clock_skew_s")
        changes["clock_skew_s"] = skew
    if "error_status" in update:
        status = update["error_status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
            raise FaultValidationError("error_status must be an integer 500-599", "error_status")
        changes["error_status"] = status
    return replace(current, **changes)
