"""Routing rule model (SPEC section 7): conditions, rules and the loaded table.

Pure data: no I/O. A :class:`RoutingTable` is built by :mod:`routing.loader` from
routing.yaml and evaluated by :mod:`routing.select`.

Matching semantics:

* every condition that is set must hold (AND); an unset condition is ignored;
* a rule whose ``when`` is missing or empty matches everything (a catch-all);
* ``amount`` bounds are inclusive (``min <= amount <= max``);
* ``brand`` is compared case-insensitively (rules are lower-cased at load time);
  currency, country, merchant and metadata compare exactly;
* a condition on country / brand / merchant does not match a request without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Protocol


class ProviderInfo(Protocol):
    """What routing needs to know about a configured provider (e.g. ``ProviderConfig``)."""

    @property
    def currencies(self) -> Set[str]: ...


class RoutableRequest(Protocol):
    """The request fields conditions look at (e.g. :class:`routing.select.RouteRequest`)."""

    @property
    def amount(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def country(self) -> str | None: ...
    @property
    def brand(self) -> str | None: ...
    @property
    def merchant_id(self) -> str | None: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...


def _fmt(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(values) + "]"


@dataclass(frozen=True)
class Conditions:
    """The ``when`` of a rule. ``None`` means "not constrained"."""

    currencies: tuple[str, ...] | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    countries: tuple[str, ...] | None = None
    brands: tuple[str, ...] | None = None  # lower-case
    merchants: tuple[str, ...] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_catch_all(self) -> bool:
        return (
            self.currencies is None
            and self.amount_min is None
            and self.amount_max is None
            and self.countries is None
            and self.brands is None
            and self.merchants is None
            and not self.metadata
        )

    def mismatch(self, request: RoutableRequest) -> str | None:
        """Why ``request`` does not match (the first failing condition), or ``None``."""
        if self.currencies is not None and request.currency not in self.currencies:
            return f"currency {request.currency} not in {_fmt(self.currencies)}"
        if self.amount_min is not None and request.amount < self.amount_min:
            return f"amount {request.amount} below min {self.amount_min}"
        if self.amount_max is not None and request.amount > self.amount_max:
            return f"amount {request.amount} above max {self.amount_max}"
        if self.countries is not None:
            if request.country is None:
                return f"no customer country (rule needs {_fmt(self.countries)})"
            if request.country not in self.countries:
                return f"country {request.country} not in {_fmt(self.countries)}"
        if self.brands is not None:
            if request.brand is None:
                return f"no payment_method brand (rule needs {_fmt(self.brands)})"
            if request.brand.lower() not in self.brands:
                return f"brand {request.brand} not in {_fmt(self.brands)}"
        if self.merchants is not None:
            if request.merchant_id is None:
                return f"no merchant (rule needs {_fmt(self.merchants)})"
            if request.merchant_id not in self.merchants:
                return f"merchant {request.merchant_id} not in {_fmt(self.merchants)}"
        for key, want in self.metadata.items():
            got = request.metadata.get(key)
            if got is None:
                return f"metadata {key} missing (rule needs {key}={want!r})"
            if got != want:
                return f"metadata {key}={got!r} (rule needs {key}={want!r})"
        return None

    def matches(self, request: RoutableRequest) -> bool:
        return self.mismatch(request) is None

    def describe(self) -> str:
        """Human-readable summary, e.g. ``currency in [EUR] and amount <= 500000``."""
        parts: list[str] = []
        if self.currencies is not None:
            parts.append(f"currency in {_fmt(self.currencies)}")
        if self.amount_min is not None:
            parts.append(f"amount >= {self.amount_min}")
        if self.amount_max is not None:
            parts.append(f"amount <= {self.amount_max}")
        if self.countries is not None:
            parts.append(f"country in {_fmt(self.countries)}")
        if self.brands is not None:
            parts.append(f"brand in {_fmt(self.brands)}")
        if self.merchants is not None:
            parts.append(f"merchant in {_fmt(self.merchants)}")
        for key, want in self.metadata.items():
            parts.append(f"metadata {key}={want!r}")
        return " and ".join(parts) if parts else "no conditions (catch-all)"


@dataclass(frozen=True)
class Rule:
    """One routing rule: either a priority list (``providers``) or a weighted ``split``
    (weights sum to 100) followed by an optional ``fallback`` priority list."""

    name: str
    when: Conditions = Conditions()
    providers: tuple[str, ...] = ()
    split: tuple[tuple[str, int], ...] = ()
    fallback: tuple[str, ...] = ()
    #: Canonical decline codes that move to the next candidate (SPEC 7.1; empty = off).
    cascade_on: tuple[str, ...] = ()
    line: int = 0  # 1-based line of the rule in its file (0 = not from a file)

    @property
    def is_split(self) -> bool:
        return bool(self.split)

    def provider_names(self) -> tuple[str, ...]:
        """Every provider the rule can name, in declaration order (may repeat)."""
        return self.providers + tuple(n for n, _ in self.split) + self.fallback


@dataclass(frozen=True)
class RoutingTable:
    version: str  # first 12 hex digits of sha256(raw file bytes)
    rules: tuple[Rule, ...]
    source: str  # the file the table was loaded from

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)
