"""gateway.yaml: loading, secret references, validation (SPEC sections 12 and 14).

Secrets are given as ``${ENV}`` or ``file:/path`` references (or literals for local
sandboxes). Resolved secret values are registered with :mod:`gateway.logs` so they are
redacted from every log line, and they never appear in error messages: errors name
the key path, never the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway import logs
from gateway.config_keys import unknown_keys
from gateway.currency import UnknownCurrency, minor_unit

PROVIDER_TYPES = ("stripe", "braintree", "adyen")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?\}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """gateway.yaml is invalid; the message names the file and key, never a secret."""


@dataclass(frozen=True)
class BreakerSettings:
    fail_max: int = 5
    reset_timeout_s: float = 30.0


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str | None
    currencies: frozenset[str]
    timeout_s: float
    connect_timeout_s: float
    sandbox: bool
    breaker: BreakerSettings
    credentials: dict[str, str] = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MerchantConfig:
    id: str
    api_key_sha256: tuple[str, ...]
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    notify_all: bool = False  # also notify changes made by the merchant's own requests


@dataclass(frozen=True)
class RetrySettings:
    attempts: int = 3  # tries of one provider attempt on an ambiguous outcome
    backoff_s: float = 0.1
    backoff_max_s: float = 1.0
    jitter_s: float = 0.1


@dataclass(frozen=True)
class ReconcileSettings:
    enabled: bool = True
    interval_s: float = 30.0
    batch_size: int = 100
    min_age_s: float = 60.0  # leave payments alone while their own request may still run
    webhook_deadline_s: float = 3600.0  # Adyen: modification webhook overdue after this
    lease_s: float = 60.0
    # Replays that could create a payment (Stripe, Adyen) only this long after creation;
    # later the gateway only looks up and flags the payment for an operator (SPEC 9.1).
    replay_window_s: float = 900.0


@dataclass(frozen=True)
class NotificationSettings:
    """Merchant notification delivery (``notifications:`` in gateway.yaml)."""

    poll_interval_s: float = 0.5  # how often the worker looks for due events
    timeout_s: float = 10.0  # one delivery POST
    backoff_base_s: float = 10.0  # delay after the first failure; doubles per failure
    backoff_max_s: float = 3600.0  # cap of the delay between two attempts
    max_age_s: float = 86400.0  # give up (state "failed") once an event is this old
    batch_size: int = 50  # events claimed per poll


@dataclass(frozen=True)
class ServerSettings:
    """Connection hygiene of ``gateway serve`` (``server:``; see gateway.http_server)."""

    header_timeout_s: float = 10.0  # request line + headers must arrive within this
    body_timeout_s: float = 30.0  # the whole body must arrive within this (else 408)
    keepalive_timeout_s: float = 15.0  # idle connection between two requests
    max_connections: int = 1000  # lowered to fit the file-descriptor limit at start
    # listen queue, and how many connections asyncio accepts in one go
    backlog: int = 128


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    store_url: str
    routing_file: Path | None
    admin_token: str | None = field(repr=False)
    merchants: dict[str, MerchantConfig]
    providers: dict[str, ProviderConfig]
    candidates: tuple[str, ...]  # static priority list until routing.yaml rules apply
    request_deadline_s: float = 30.0
    idempotency_ttl_s: float = 86400.0
    failover_budget: int = 3
    retry: RetrySettings = RetrySettings()
    sandbox_host: str = "127.0.0.1"
    sandbox_control_port: int = 0
    routing_poll_s: float = 1.0
    reconciliation: ReconcileSettings = ReconcileSettings()
    notifications: NotificationSettings = NotificationSettings()
    server: ServerSettings = ServerSettings()
    # Redis without AOF or RDB loses every payment on a restart: refused unless allowed.
    allow_volatile_store: bool = False


def resolve_secret(value: Any, where: str) -> str:
    """Resolve ``${ENV}``, ``${ENV:-default}``, ``file:/path`` or a literal string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string or secret reference")
    m = _ENV_REF.match(value)
    if m:
        name, default = m.group(1), m.group(2)
        resolved = os.environ.get(name, default)
        if resolved is None or resolved == "":
            raise ConfigError(f"{where}: environment variable {name} is not set")
    elif value.startswith("file:"):
        p = Path(value[5:])
        try:
            resolved = p.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {p}: {exc.strerror}") from None
        if not resolved:
            raise ConfigError(f"{where}: secret file {p} is empty")
    else:
        resolved = value
    logs.register_secret(resolved)
    return resolved


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any):
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if typ in (float, (int, float)) and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
        raise ConfigError(f"{where}.{key}: expected {getattr(typ, '__name__', typ)}")
    return v


def resolve_store_url(url: str, base: Path) -> str:
    """``sqlite:///abs/path`` is absolute; ``sqlite://rel/path`` is relative to ``base``."""
    if url.startswith("sqlite://"):
        raw = url[len("sqlite://"):]
        p = Path(raw) if raw.startswith("/") else (base / raw)
        return "sqlite:///" + str(p.resolve())
    if url.startswith(("redis://", "rediss://")):
        return url
    raise ConfigError(f"store: unsupported URL scheme in {url!r} (use sqlite:// or redis://)")


def _provider(name: str, raw: Any, where: str) -> ProviderConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    ptype = raw.get("type")
    if ptype not in PROVIDER_TYPES:
        raise ConfigError(f"{where}.type: must be one of {', '.join(PROVIDER_TYPES)}")
    sandbox = bool(_get(raw, "sandbox", bool, where, False))
    secret_keys = {
        "stripe": ("api_key", "webhook_secret"),
        "braintree": ("merchant_id", "public_key", "private_key"),
        "adyen": ("api_key", "hmac_key"),
    }[ptype]
    creds: dict[str, str] = {}
    for key in secret_keys:
        if key in raw:
            creds[key] = resolve_secret(raw[key], f"{where}.{key}")
    currencies = _get(raw, "currencies", list, where, ["USD", "EUR", "GBP", "JPY"])
    for c in currencies:
        if not isinstance(c, str) or not re.fullmatch(r"[A-Z]{3}", c):
            raise ConfigError(f"{where}.currencies: {c!r} is not an ISO 4217 code")
        try:
            minor_unit(c)
        except UnknownCurrency as exc:
            raise ConfigError(f"{where}.currencies: {exc}") from None
    breaker_raw = _get(raw, "breaker", dict, where, {})
    breaker = BreakerSettings(
        fail_max=_get(breaker_raw, "fail_max", int, f"{where}.breaker", 5),
        reset_timeout_s=_get(breaker_raw, "reset_timeout_s", (int, float), f"{where}.breaker",
                             30.0),
    )
    base_url = _get(raw, "base_url", str, where, None)
    if base_url is None and not sandbox:
        raise ConfigError(f"{where}.base_url: required unless sandbox: true")
    known = {"type", "sandbox", "currencies", "breaker", "base_url", "timeout_s",
             "connect_timeout_s", *secret_keys}
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=base_url,
        currencies=frozenset(currencies),
        timeout_s=_get(raw, "timeout_s", (int, float), where, 10.0),
        connect_timeout_s=_get(raw, "connect_timeout_s", (int, float), where, 3.0),
        sandbox=sandbox,
        breaker=breaker,
        credentials=creds,
        options={k: v for k, v in raw.items() if k not in known},
    )


def _merchant(raw: Any, where: str) -> MerchantConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise ConfigError(f"{where}: needs an 'id' string")
    hashes = raw.get("api_key_sha256")
    if isinstance(hashes, str):
        hashes = [hashes]
    if not isinstance(hashes, list) or not hashes:
        raise ConfigError(f"{where}.api_key_sha256: a list of SHA-256 hex digests is required")
    for h in hashes:
        if not isinstance(h, str) or not _SHA256_HEX.match(h.lower()):
            raise ConfigError(f"{where}.api_key_sha256: entries must be 64 hex characters")
    hook = _get(raw, "webhook", dict, where, {})
    secret = hook.get("secret")
    url = _get(hook, "url", str, f"{where}.webhook", None)
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{where}.webhook.url: must be an http:// or https:// URL")
    if url is not None and not secret:
        raise ConfigError(f"{where}.webhook.secret: required when webhook.url is set "
                          "(notifications are always signed)")
    return MerchantConfig(
        id=raw["id"],
        api_key_sha256=tuple(h.lower() for h in hashes),
        webhook_url=url,
        webhook_secret=resolve_secret(secret, f"{where}.webhook.secret") if secret else None,
        notify_all=bool(_get(hook, "notify_all", bool, f"{where}.webhook", False)),
    )


def _notification_settings(raw: dict[str, Any], where: str) -> NotificationSettings:
    num = (int, float)
    settings = NotificationSettings(
        poll_interval_s=_get(raw, "poll_interval_s", num, where, 0.5),
        timeout_s=_get(raw, "timeout_s", num, where, 10.0),
        backoff_base_s=_get(raw, "backoff_base_s", num, where, 10.0),
        backoff_max_s=_get(raw, "backoff_max_s", num, where, 3600.0),
        max_age_s=_get(raw, "max_age_s", num, where, 86400.0),
        batch_size=_get(raw, "batch_size", int, where, 50),
    )
    if (min(settings.poll_interval_s, settings.timeout_s, settings.backoff_base_s,
            settings.max_age_s) <= 0 or settings.batch_size < 1
            or settings.backoff_max_s < settings.backoff_base_s):
        raise ConfigError(f"{where}: intervals must be > 0, batch_size >= 1 and "
                          "backoff_max_s >= backoff_base_s")
    return settings


def _server(raw: dict[str, Any], where: str) -> ServerSettings:
    d = ServerSettings()
    num = (int, float)
    out = ServerSettings(
        header_timeout_s=_get(raw, "header_timeout_s", num, where, d.header_timeout_s),
        body_timeout_s=_get(raw, "body_timeout_s", num, where, d.body_timeout_s),
        keepalive_timeout_s=_get(raw, "keepalive_timeout_s", num, where,
                                 d.keepalive_timeout_s),
        max_connections=_get(raw, "max_connections", int, where, d.max_connections),
        backlog=_get(raw, "backlog", int, where, d.backlog),
    )
    if min(out.header_timeout_s, out.body_timeout_s, out.keepalive_timeout_s) <= 0:
        raise ConfigError(f"{where}: header_timeout_s, body_timeout_s and "
                          "keepalive_timeout_s must be > 0")
    if out.max_connections < 1 or out.backlog < 1:
        raise ConfigError(f"{where}: max_connections and backlog must be >= 1")
    return out


def _reconcile(raw: dict[str, Any], where: str) -> ReconcileSettings:
    d = ReconcileSettings()
    num = (int, float)
    out = ReconcileSettings(
        enabled=_get(raw, "enabled", bool, where, d.enabled),
        interval_s=_get(raw, "interval_s", num, where, d.interval_s),
        batch_size=_get(raw, "batch_size", int, where, d.batch_size),
        min_age_s=_get(raw, "min_age_s", num, where, d.min_age_s),
        webhook_deadline_s=_get(raw, "webhook_deadline_s", num, where, d.webhook_deadline_s),
        lease_s=_get(raw, "lease_s", num, where, d.lease_s),
        replay_window_s=_get(raw, "replay_window_s", num, where, d.replay_window_s),
    )
    if (out.interval_s <= 0 or out.batch_size < 1 or out.lease_s <= 0 or out.min_age_s < 0
            or out.replay_window_s <= 0):
        raise ConfigError(f"{where}: interval_s, batch_size, lease_s, replay_window_s must "
                          "be > 0")
    return out


def _check_braintree_currencies(pc: ProviderConfig, where: str) -> None:
    """A Braintree sale has no currency field: it is charged in the merchant account's
    currency. Every listed currency needs its account, or must be the declared currency of
    the default account (``default_currency``); otherwise JPY 500 is charged as USD 500.00."""
    if pc.sandbox:
        return  # the in-process simulator gets one merchant account per listed currency
    accounts = pc.options.get("merchant_account_ids") or {}
    if not isinstance(accounts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in accounts.items()):
        raise ConfigError(f"{where}.merchant_account_ids: a mapping currency -> merchant "
                          "account id")
    default = pc.options.get("default_currency")
    if default is not None and (not isinstance(default, str) or default not in pc.currencies):
        raise ConfigError(f"{where}.default_currency: must be one of the provider's "
                          "currencies")
    for c in sorted(pc.currencies):
        if c not in accounts and c != default:
            raise ConfigError(
                f"{where}.currencies: {c} has no merchant account (merchant_account_ids) and "
                "is not the default account's currency (default_currency); Braintree would "
                "charge it in the default account's currency")


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    p = Path(path).resolve()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: invalid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    unknown = unknown_keys(p.read_text(encoding="utf-8"), str(p))
    if unknown:  # all of them at once (SPEC 14.1)
        raise ConfigError("\n".join(unknown))
    where = p.name
    store = _get(raw, "store", str, where, None)
    if not store:
        raise ConfigError(f"{where}.store: required (sqlite:///path or redis://host:port/db)")
    merchants_raw = _get(raw, "merchants", list, where, [])
    merchants: dict[str, MerchantConfig] = {}
    for i, m in enumerate(merchants_raw):
        mc = _merchant(m, f"{where}.merchants[{i}]")
        if mc.id in merchants:
            raise ConfigError(f"{where}.merchants[{i}]: duplicate merchant id {mc.id!r}")
        merchants[mc.id] = mc
    providers_raw = _get(raw, "providers", dict, where, {})
    if not providers_raw:
        raise ConfigError(f"{where}.providers: at least one provider is required")
    providers = {
        n: _provider(n, pr, f"{where}.providers.{n}") for n, pr in providers_raw.items()
    }
    candidates = tuple(_get(raw, "candidates", list, where, list(providers)))
    for c in candidates:
        if c not in providers:
            raise ConfigError(f"{where}.candidates: unknown provider {c!r}")
    routing = _get(raw, "routing_file", str, where, None)
    admin = raw.get("admin_token")
    retry_raw = _get(raw, "retry", dict, where, {})
    sandbox_raw = _get(raw, "sandbox", dict, where, {})
    cfg = GatewayConfig(
        path=p,
        store_url=resolve_store_url(store, p.parent),
        routing_file=(p.parent / routing).resolve() if routing else None,
        admin_token=resolve_secret(admin, f"{where}.admin_token") if admin else None,
        merchants=merchants,
        providers=providers,
        candidates=candidates,
        request_deadline_s=_get(raw, "request_deadline_s", (int, float), where, 30.0),
        idempotency_ttl_s=_get(raw, "idempotency_ttl_s", (int, float), where, 86400.0),
        failover_budget=_get(raw, "failover_budget", int, where, 3),
        retry=RetrySettings(
            attempts=_get(retry_raw, "attempts", int, f"{where}.retry", 3),
            backoff_s=_get(retry_raw, "backoff_s", (int, float), f"{where}.retry", 0.1),
            backoff_max_s=_get(retry_raw, "backoff_max_s", (int, float), f"{where}.retry", 1.0),
            jitter_s=_get(retry_raw, "jitter_s", (int, float), f"{where}.retry", 0.1),
        ),
        sandbox_host=_get(sandbox_raw, "host", str, f"{where}.sandbox", "127.0.0.1"),
        sandbox_control_port=_get(sandbox_raw, "control_port", int, f"{where}.sandbox", 0),
        routing_poll_s=_get(raw, "routing_poll_s", (int, float), where, 1.0),
        reconciliation=_reconcile(_get(raw, "reconciliation", dict, where, {}),
                                  f"{where}.reconciliation"),
        notifications=_notification_settings(
            _get(raw, "notifications", dict, where, {}), f"{where}.notifications"),
        server=_server(_get(raw, "server", dict, where, {}), f"{where}.server"),
        allow_volatile_store=bool(_get(_get(raw, "store_options", dict, where, {}),
                                       "allow_volatile", bool, f"{where}.store_options", False)),
    )
    if cfg.idempotency_ttl_s < 86400 and not raw.get("allow_short_idempotency_ttl"):
        raise ConfigError(f"{where}.idempotency_ttl_s: must be at least 86400 (24 h)")
    if cfg.request_deadline_s <= 0 or cfg.retry.attempts < 1 or cfg.failover_budget < 1:
        raise ConfigError(f"{where}: request_deadline_s, retry.attempts, failover_budget > 0")
    if cfg.reconciliation.min_age_s < cfg.request_deadline_s:
        raise ConfigError(
            f"{where}.reconciliation.min_age_s: {cfg.reconciliation.min_age_s:g} is below "
            f"request_deadline_s ({cfg.request_deadline_s:g}): reconciliation would look up "
            "payments whose own request may still be running (SPEC 9.1)")
    if cfg.reconciliation.replay_window_s < cfg.request_deadline_s:
        raise ConfigError(
            f"{where}.reconciliation.replay_window_s: must be at least request_deadline_s "
            f"({cfg.request_deadline_s:g})")
    for pc in providers.values():
        if pc.type == "braintree":
            _check_braintree_currencies(pc, f"{where}.providers.{pc.name}")
        proof = pc.options.get("lookup_proof_after_s")
        if proof is None:
            continue
        if pc.type != "braintree":
            raise ConfigError(f"{where}.providers.{pc.name}.lookup_proof_after_s: only "
                              "braintree providers prove absence by a delayed search")
        if isinstance(proof, bool) or not isinstance(proof, int | float) or (
                proof <= pc.timeout_s):
            raise ConfigError(f"{where}.providers.{pc.name}.lookup_proof_after_s: must be a "
                              f"number above timeout_s ({pc.timeout_s:g})")
    return cfg
