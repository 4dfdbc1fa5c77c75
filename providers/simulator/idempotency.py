"""Provider-side idempotency cache (Stripe / Adyen style).

A key is claimed before the request runs. The stored response is replayed for the
same fingerprint; a different fingerprint is a mismatch; a second request while the
first is still running is "in flight". Responses the provider does not remember
(429, 401, 5xx) are released with ``finish(key, None)`` so the key can be retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Claim(StrEnum):
    NEW = "new"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    stored: StoredResponse | None = None


@dataclass
class _Entry:
    fingerprint: str
    response: StoredResponse | None = None  # None while the first request runs


class IdempotencyStore:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def claim(self, key: str, fingerprint: str) -> ClaimResult:
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(fingerprint)
            return ClaimResult(Claim.NEW)
        if entry.fingerprint != fingerprint:
            return ClaimResult(Claim.MISMATCH)
        if entry.response is None:
            return ClaimResult(Claim.IN_FLIGHT)
        return ClaimResult(Claim.REPLAY, entry.response)

    def finish(self, key: str, response: StoredResponse | None) -> None:
        """Store the response of a claimed key, or release the claim (``None``)."""
        if response is None:
            self._entries.pop(key, None)
        elif key in self._entries:
            self._entries[key].response = response

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
