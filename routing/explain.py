"""Human-readable routing explanations and the ``route`` / ``check-config`` CLI bodies.

``gateway route`` and ``gateway check-config`` (SPEC section 13) call :func:`route_main`
and :func:`check_main`. Both write results to stdout, errors to stderr, and return the
process exit code: 0 on success, 1 on any error (gateway.yaml, routing file, merchant,
or request file). Nothing is sent to any provider.

Gateway modules are imported inside the functions so that importing :mod:`routing`
never pulls in the gateway (which itself imports routing).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from routing.loader import RoutingConfigError, load_routing
from routing.rules import Conditions, ProviderInfo, RoutingTable, Rule
from routing.select import Decision, NoRouteError, RouteRequest, decide

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

DEFAULT_PAYMENT_ID = "pay_explain"
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
    if decision.candidates:
        lines.append("candidates (in order; open circuit breakers are skipped at run time):")
        lines.extend(f"  {i}. {name}" for i, name in enumerate(decision.candidates, 1))
    else:
        lines.append("candidates: none - no configured provider can take this payment")
    if decision.excluded:
        lines.append("excluded:")
        lines.extend(f"  - {name}: {reason}" for name, reason in decision.excluded)
    return "\n".join(lines) + "\n"


def static_table(config: GatewayConfig) -> RoutingTable:
    """The table used when gateway.yaml has no ``routing_file``: its static candidates,
    as one catch-all rule. The running gateway uses this same table, so ``gateway route``
    explains exactly the rule name and version that payments are stamped with."""
    version = "static-" + hashlib.sha256(",".join(config.candidates).encode()).hexdigest()[:12]
    rule = Rule(name=STATIC_RULE, when=Conditions(), providers=tuple(config.candidates))
    return RoutingTable(version=version, rules=(rule,), source=f"{config.path} (candidates)")


def _load(config_path: str | os.PathLike[str]) -> tuple[GatewayConfig, RoutingTable | None]:
    """gateway.yaml and its routing table (None without routing_file); raises
    ``ConfigError`` / ``RoutingConfigError``."""
    from gateway.config import load_config

    config = load_config(config_path)
    if config.routing_file is None:
        return config, None
    providers: Mapping[str, ProviderInfo] = config.providers
    return config, load_routing(config.routing_file, providers)


def _load_or_report(config_path: str | os.PathLike[str]
                    ) -> tuple[GatewayConfig, RoutingTable | None] | None:
    """:func:`_load`, printing every error to stderr (None then)."""
    from gateway.config import ConfigError

    try:
        return _load(config_path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        n = len(exc.errors)
        print(f"{n} error{'s' if n != 1 else ''} in {exc.errors[0].split(':', 1)[0]}"
              if n > 1 else "1 error in the gateway configuration", file=sys.stderr)
    except RoutingConfigError as exc:
        _print_routing_errors(exc)
    return None


def _print_routing_errors(exc: RoutingConfigError) -> None:
    for issue in exc.errors:
        print(f"error: {issue}", file=sys.stderr)
    n = len(exc.errors)
    print(f"{n} error{'s' if n != 1 else ''} in the routing file", file=sys.stderr)


def check_main(config_path: str | os.PathLike[str]) -> int:
    """Validate gateway.yaml and its routing file; print every error; 0 if both are valid."""
    loaded = _load_or_report(config_path)
    if loaded is None:
        return 1
    config, table = loaded
    summary = (f"ok: {config.path} ({len(config.providers)} providers, "
               f"{len(config.merchants)} merchants); ")
    if table is None:
        summary += ("no routing_file: static candidates "
                    f"[{', '.join(config.candidates)}]")
    else:
        summary += (f"routing {table.source} version {table.version} "
                    f"({len(table.rules)} rules)")
    print(summary)
    return 0


def _read_request(request_path: str | os.PathLike[str],
                  merchant: str | None) -> RouteRequest:
    """Parse and validate the request JSON like POST /v1/payments (raises ``ValueError``)."""
    from gateway.api.errors import ApiError
    from gateway.api.validation import parse_json_body, validate_create

    try:
        raw = Path(request_path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{request_path}: cannot read: {exc.strerror}") from None
    try:
        body = parse_json_body(raw)
        payment_id = body.pop("id", None) if isinstance(body, dict) else None
        if payment_id is None:
            payment_id = DEFAULT_PAYMENT_ID
        if not isinstance(payment_id, str) or not payment_id:
            raise ValueError(f"{request_path}: id must be a non-empty string")
        body = validate_create(body)
    except ApiError as exc:
        where = f"{exc.param}: " if exc.param else ""
        raise ValueError(f"{request_path}: invalid request: {where}{exc.message}") from None
    return RouteRequest.from_body(body, payment_id=payment_id, merchant_id=merchant)


def route_main(config_path: str | os.PathLike[str], request_path: str | os.PathLike[str],
               merchant: str | None = None) -> int:
    """Explain the routing decision for the request in ``request_path`` (a POST
    /v1/payments body, optionally with ``"id"``; default id ``pay_explain``)."""
    loaded = _load_or_report(config_path)
    if loaded is None:
        return 1
    config, table = loaded
    if merchant is not None and merchant not in config.merchants:
        known = ", ".join(sorted(config.merchants)) or "none"
        print(f"error: unknown merchant {merchant!r} (configured: {known})", file=sys.stderr)
        return 1
    try:
        request = _read_request(request_path, merchant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if table is None:
        table = static_table(config)
        print(f"note: {config.path} has no routing_file; using its static candidates")
    try:
        decision = decide(table, request, config.providers)
    except NoRouteError as exc:  # only for a table without a catch-all
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(explain(decision, table))
    return 0
