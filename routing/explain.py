"""Human-readable routing explanations (what ``gateway route`` prints) and the static
table used without a routing file. The CLI bodies live in :mod:`gateway.cli`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from routing.rules import Conditions, RoutingTable, Rule
from routing.select import Decision, RouteRequest

STATIC_RULE = "static"


def _describe_request(req: RouteRequest) -> str:
    parts = [f"{req.amount} {req.currency}"]
    parts.append(f"country {req.country}" if req.country else "no country")
    parts.append(f"brand {req.brand}" if req.brand else "no brand")
    parts.append(f"merchant {req.merchant_id}" if req.merchant_id else "no merchant")
    if req.metadata:
        meta = ", ".join(f"{k}={v!r}" for k, v in sorted(req.metadata.items()))
        parts.append(f"metadata {{{meta}}}")
    if req.provider_tokens is not None:
        parts.append("provider tokens for [" + ", ".join(sorted(req.provider_tokens)) + "]")
    if req.three_ds_required:
        parts.append("3-D Secure required")
    return f"payment {req.payment_id}: " + ", ".join(parts)


def _at(rule: Rule) -> str:
    return f" (line {rule.line})" if rule.line else ""


def explain(decision: Decision, table: RoutingTable) -> str:
    """Which rule matched and why earlier ones did not, the ordered candidates, and each
    excluded provider with its reason."""
    req = decision.request
    lines = [
        f"routing: {table.source} (version {table.version})",
        f"request: {_describe_request(req)}",
        "rules (first match wins):",
    ]
    matched: Rule | None = None
    for rule in table.rules:
        if rule.name == decision.rule:
            matched = rule
            lines.append(f"  rule {rule.name!r}{_at(rule)} matched: {rule.when.describe()}")
            break
        reason = rule.when.mismatch(req)
        lines.append(f"  rule {rule.name!r}{_at(rule)} skipped: {reason}")
    if matched is None:  # a decision from another table
        lines.append(f"  rule {decision.rule!r} is not in this table")
    else:
        later = len(table.rules) - table.rules.index(matched) - 1
        if later:
            lines.append(f"  ({later} later rule{'s' if later != 1 else ''} not evaluated)")
        if matched.split and decision.split_bucket is not None:
            weights = ", ".join(f"{n} {w}" for n, w in matched.split)
            lines.append(f"split: {weights}; payment bucket {decision.split_bucket} of 100 "
                         f"-> {decision.split_choice} first, then the others by weight")
            if matched.fallback:
                lines.append("fallback: " + ", ".join(matched.fallback))
        elif matched.providers:
            lines.append("priority: " + ", ".join(matched.providers))
        if matched.cascade_on:
            lines.append("cascade on decline: " + ", ".join(matched.cascade_on)
                         + " (moves to the next candidate; any other decline is final)")
        else:
            lines.append("cascade on decline: off (every decline is final)")
    if decision.candidates:
        lines.append("candidates (in order; open circuit breakers are skipped at run time):")
        lines.extend(f"  {i}. {name}" for i, name in enumerate(decision.candidates, 1))
    else:
        lines.append("candidates: none - no configured provider can take this payment")
    if decision.excluded:
        lines.append("excluded:")
        lines.extend(f"  - {name}: {reason}" for name, reason in decision.excluded)
    return "\n".join(lines) + "\n"


class StaticCandidates(Protocol):
    """What :func:`static_table` needs of gateway.yaml."""

    @property
    def path(self) -> Path: ...

    @property
    def candidates(self) -> Sequence[str]: ...


def static_table(config: StaticCandidates) -> RoutingTable:
    """The table used when gateway.yaml has no ``routing_file``: its static candidates,
    as one catch-all rule. The running gateway uses this same table, so ``gateway route``
    explains exactly the rule name and version that payments are stamped with."""
    version = "static-" + hashlib.sha256(",".join(config.candidates).encode()).hexdigest()[:12]
    rule = Rule(name=STATIC_RULE, when=Conditions(), providers=tuple(config.candidates))
    return RoutingTable(version=version, rules=(rule,), source=f"{config.path} (candidates)")
