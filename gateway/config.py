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
from typing import Any, ClassVar

import yaml

from gateway import logs
from gateway.config_keys import key_lines, unknown_keys
from providers.currency import UnknownCurrency, minor_unit
from providers.registry import DECLARATIONS, declaration
from routing.breaker import BreakerSettings as BreakerSettings  # re-exported

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?\}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """gateway.yaml is invalid; the message names the file and key, never a secret.
    ``errors`` holds every error found, one ``file:line: key: message`` line each."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(errors) if errors else (message,)


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
    #: the fee the provider's contract says it takes of a capture, in basis points (SPEC
    #: 16: ``gateway settlements reconcile`` reports fee drift against it); None: unchecked
    fee_bps: int | None = None


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
    # How long a payment may wait in requires_action for the customer's 3-D Secure
    # challenge; then reconciliation ends it, on the provider's proof (gateway.three_ds).
    action_window_s: float = 900.0


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
class AdmissionSettings:
    """Admission control (``admission:``; see gateway.admission): past either bound, new
    payment operations are answered 503 + Retry-After.

    ``max_in_flight``: operations in progress in one process at all. In flight =
    throughput x latency: 64 holds ~180 payments/s at a provider latency of up to ~0.25 s
    plus the gateway's own ~0.1 s; raise it for slower providers.

    ``max_busy``: operations in progress that are not awaiting a provider's answer (they
    want the event loop). Past the CPU's capacity each busy one waits for the others, so
    this bounds the admitted latency under overload whatever the providers' latency: 64/8
    kept the admitted p99 near 100 ms at 2x capacity (bench/overload.py; README). It also
    sheds a burst of more than ``max_busy`` payments arriving at once on an idle process
    (they are all busy until they reach their provider), so by default it equals
    ``max_in_flight`` (off); at most ``max_in_flight``. None: not given (the loader puts
    ``max_in_flight`` there).

    ``loop_lag_target_ms``: while the event loop's mean lag over 100 ms is above it, the
    limit in force is lowered towards ``min_in_flight``; while under half of it and the
    limit is reached, raised back towards ``max_in_flight`` (gateway.admission). 0: off,
    the limit stays ``max_in_flight``. 5 ms kept the admitted p99 of a fast provider under
    100 ms at 2x capacity without capping a provider 200 ms slower (bench/overload.py;
    README). ``min_in_flight``: the lowest limit it sets (8: a fast provider's capacity
    is reached with 8 in flight); at most ``max_in_flight``. None: not given (the loader
    puts ``min(8, max_in_flight)`` there)."""

    max_in_flight: int = 64
    retry_after_s: int = 1
    max_busy: int | None = None
    loop_lag_target_ms: float = 5.0
    min_in_flight: int | None = None

    #: ``min_in_flight`` when not given (below a smaller ``max_in_flight``)
    MIN_IN_FLIGHT: ClassVar[int] = 8

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
    admission: AdmissionSettings = AdmissionSettings()
    # Redis without AOF or RDB loses every payment on a restart: refused unless allowed.
    allow_volatile_store: bool = False
    # store_options.pool_size / pool_timeout_s (gateway.store.pool): requests using the
    # store at once per process, each holding its place for its whole run; the next one
    # waits this long at its first store operation, then 503 store_unavailable before
    # anything is claimed. 128 = 2 x admission.max_in_flight's default, so admission
    # control sheds first and reads/webhooks keep room (sizing: bench/overload.py, README).
    store_pool_size: int = 128
    store_pool_timeout_s: float = 1.0


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


Path_ = tuple[str | int, ...]  # a key path in gateway.yaml: ("providers", "p", "timeout_s")

_NUM = (int, float)
_URL = re.compile(r"^https?://[^/\s]+")


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Checks:
    """Collects every error of one gateway.yaml (SPEC 14.1: all reported together), each
    as ``file:line: key.path: message``; a bad value is reported and its default used so
    the rest of the file is still checked."""

    def __init__(self, file: Path, lines: dict[tuple[str | int, ...], int]) -> None:
        self.file = file
        self.lines = lines
        self.errors: list[str] = []

    def error(self, path: Path_, message: str) -> None:
        line = next((self.lines[path[:n]] for n in range(len(path), 0, -1)
                     if path[:n] in self.lines), None)
        where = f"{self.file}:{line}" if line is not None else str(self.file)
        self.errors.append(f"{where}: {_dotted(path) or 'top level'}: {message}")

    def get(self, d: dict[str, Any], key: str, typ: type | tuple[type, ...], path: Path_,
            default: Any) -> Any:
        if key not in d or d[key] is None:
            return default
        v = d[key]
        if typ in (float, _NUM) and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            name = "number" if typ == _NUM else getattr(typ, "__name__", str(typ))
            self.error((*path, key), f"expected {name}")
            return default
        return v

    def number(self, d: dict[str, Any], key: str, path: Path_, default: float, *,
               above: float | None = 0.0, at_least: float | None = None) -> float:
        """A number > ``above`` (or >= ``at_least``); the default after an error."""
        v = float(self.get(d, key, _NUM, path, default))
        if above is not None and not v > above:
            self.error((*path, key), f"must be > {above:g} (got {v:g})")
            return default
        if at_least is not None and v < at_least:
            self.error((*path, key), f"must be >= {at_least:g} (got {v:g})")
            return default
        return v

    def integer(self, d: dict[str, Any], key: str, path: Path_, default: int, *,
                at_least: int = 1, at_most: int | None = None) -> int:
        v = int(self.get(d, key, int, path, default))
        if v < at_least or (at_most is not None and v > at_most):
            bound = f"between {at_least} and {at_most}" if at_most is not None \
                else f">= {at_least}"
            self.error((*path, key), f"must be {bound} (got {v})")
            return default
        return v

    def mapping(self, d: dict[str, Any], key: str, path: Path_) -> dict[str, Any]:
        return dict(self.get(d, key, dict, path, {}) or {})

    def secret(self, value: Any, path: Path_) -> str | None:
        try:
            return resolve_secret(value, _dotted(path))
        except ConfigError as exc:
            self.error(path, str(exc).split(": ", 1)[-1])
            return None


def resolve_store_url(url: str, base: Path) -> str:
    """``sqlite:///abs/path`` is absolute; ``sqlite://rel/path`` is relative to ``base``."""
    if url.startswith("sqlite://"):
        raw = url[len("sqlite://"):]
        p = Path(raw) if raw.startswith("/") else (base / raw)
        return "sqlite:///" + str(p.resolve())
    if url.startswith(("redis://", "rediss://")):
        return url
    raise ConfigError(f"store: unsupported URL scheme in {url!r} (use sqlite:// or redis://)")


_DEFAULT_CURRENCIES = ["USD", "EUR", "GBP", "JPY"]


def _currencies(c: _Checks, raw: dict[str, Any], path: Path_) -> frozenset[str]:
    out = set()
    for i, code in enumerate(c.get(raw, "currencies", list, path, _DEFAULT_CURRENCIES)):
        if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{3}", code):
            c.error((*path, "currencies", i), f"{code!r} is not an ISO 4217 code")
            continue
        try:
            minor_unit(code)
        except UnknownCurrency as exc:
            c.error((*path, "currencies", i), str(exc))
            continue
        out.add(code)
    if not out:
        c.error((*path, "currencies"), "at least one currency is required")
    return frozenset(out)


def _provider(c: _Checks, name: str, raw: Any, path: Path_) -> ProviderConfig | None:
    if not isinstance(raw, dict):
        c.error(path, "expected a mapping")
        return None
    ptype = raw.get("type")
    if ptype not in DECLARATIONS:
        c.error((*path, "type"), f"must be one of {', '.join(DECLARATIONS)}")
        return None
    sandbox = bool(c.get(raw, "sandbox", bool, path, False))
    decl = declaration(ptype)
    secret_keys = decl.secret_keys
    creds: dict[str, str] = {}
    for key in secret_keys:
        if key in raw:
            value = c.secret(raw[key], (*path, key))
            if value is not None:
                creds[key] = value
        elif not sandbox and key in decl.required_secrets:
            c.error((*path, key), "required unless sandbox: true")
    breaker_raw = c.mapping(raw, "breaker", path)
    bpath = (*path, "breaker")
    breaker = BreakerSettings(
        fail_max=c.integer(breaker_raw, "fail_max", bpath, 5),
        reset_timeout_s=c.number(breaker_raw, "reset_timeout_s", bpath, 30.0),
    )
    base_url = c.get(raw, "base_url", str, path, None)
    if base_url is None and not sandbox:
        c.error((*path, "base_url"), "required unless sandbox: true")
    elif base_url is not None and not _URL.match(base_url):
        c.error((*path, "base_url"), "must be an http:// or https:// URL")
    known = {"type", "sandbox", "currencies", "breaker", "base_url", "timeout_s",
             "connect_timeout_s", "fee_bps", *secret_keys}
    fee_bps = c.get(raw, "fee_bps", int, path, None)
    if fee_bps is not None and not 0 <= fee_bps <= 10_000:
        c.error((*path, "fee_bps"), "must be basis points from 0 to 10000")
    elif fee_bps is not None and not decl.settlement_fees:
        c.error((*path, "fee_bps"), f"{ptype} reports no per-transaction fee in its "
                "settlement data, so there is no fee to check: remove fee_bps")
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=base_url,
        currencies=_currencies(c, raw, path),
        timeout_s=c.number(raw, "timeout_s", path, 10.0),
        connect_timeout_s=c.number(raw, "connect_timeout_s", path, 3.0),
        sandbox=sandbox,
        breaker=breaker,
        credentials=creds,
        options={k: v for k, v in raw.items() if k not in known},
        fee_bps=fee_bps,
    )


def _merchant(c: _Checks, raw: Any, path: Path_) -> MerchantConfig | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        c.error(path, "needs an 'id' string")
        return None
    hashes = raw.get("api_key_sha256")
    if isinstance(hashes, str):
        hashes = [hashes]
    if not isinstance(hashes, list) or not hashes:
        c.error((*path, "api_key_sha256"), "a list of SHA-256 hex digests is required")
        hashes = []
    for h in hashes:
        if not isinstance(h, str) or not _SHA256_HEX.match(h.lower()):
            c.error((*path, "api_key_sha256"), "entries must be 64 hex characters")
            hashes = []
            break
    hook = c.mapping(raw, "webhook", path)
    hpath = (*path, "webhook")
    secret = hook.get("secret")
    url = c.get(hook, "url", str, hpath, None)
    if url is not None and not _URL.match(url):
        c.error((*hpath, "url"), "must be an http:// or https:// URL")
    if url is not None and not secret:
        c.error((*hpath, "secret"), "required when webhook.url is set (notifications are "
                "always signed)")
    return MerchantConfig(
        id=raw["id"],
        api_key_sha256=tuple(h.lower() for h in hashes),
        webhook_url=url,
        webhook_secret=c.secret(secret, (*hpath, "secret")) if secret else None,
        notify_all=bool(c.get(hook, "notify_all", bool, hpath, False)),
    )


def _notification_settings(c: _Checks, raw: dict[str, Any], path: Path_
                           ) -> NotificationSettings:
    d = NotificationSettings()
    out = NotificationSettings(
        poll_interval_s=c.number(raw, "poll_interval_s", path, d.poll_interval_s),
        timeout_s=c.number(raw, "timeout_s", path, d.timeout_s),
        backoff_base_s=c.number(raw, "backoff_base_s", path, d.backoff_base_s),
        backoff_max_s=c.number(raw, "backoff_max_s", path, d.backoff_max_s),
        max_age_s=c.number(raw, "max_age_s", path, d.max_age_s),
        batch_size=c.integer(raw, "batch_size", path, d.batch_size),
    )
    if out.backoff_max_s < out.backoff_base_s:
        c.error((*path, "backoff_max_s"), f"must be >= backoff_base_s ({out.backoff_base_s:g})")
    return out


def _server(c: _Checks, raw: dict[str, Any], path: Path_) -> ServerSettings:
    d = ServerSettings()
    return ServerSettings(
        header_timeout_s=c.number(raw, "header_timeout_s", path, d.header_timeout_s),
        body_timeout_s=c.number(raw, "body_timeout_s", path, d.body_timeout_s),
        keepalive_timeout_s=c.number(raw, "keepalive_timeout_s", path, d.keepalive_timeout_s),
        max_connections=c.integer(raw, "max_connections", path, d.max_connections),
        backlog=c.integer(raw, "backlog", path, d.backlog, at_most=65535),
    )


def _admission(c: _Checks, raw: dict[str, Any], path: Path_) -> AdmissionSettings:
    d = AdmissionSettings()
    max_in_flight = c.integer(raw, "max_in_flight", path, d.max_in_flight, at_most=100_000)
    return AdmissionSettings(
        max_in_flight=max_in_flight,
        retry_after_s=c.integer(raw, "retry_after_s", path, d.retry_after_s, at_most=3600),
        max_busy=c.integer(raw, "max_busy", path, max_in_flight, at_most=max_in_flight),
        loop_lag_target_ms=c.number(raw, "loop_lag_target_ms", path, d.loop_lag_target_ms,
                                    above=None, at_least=0.0),
        min_in_flight=c.integer(raw, "min_in_flight", path,
                                min(d.MIN_IN_FLIGHT, max_in_flight), at_most=max_in_flight),
    )


def _reconcile(c: _Checks, raw: dict[str, Any], path: Path_) -> ReconcileSettings:
    d = ReconcileSettings()
    return ReconcileSettings(
        enabled=c.get(raw, "enabled", bool, path, d.enabled),
        interval_s=c.number(raw, "interval_s", path, d.interval_s),
        batch_size=c.integer(raw, "batch_size", path, d.batch_size),
        min_age_s=c.number(raw, "min_age_s", path, d.min_age_s, above=None, at_least=0),
        webhook_deadline_s=c.number(raw, "webhook_deadline_s", path, d.webhook_deadline_s),
        lease_s=c.number(raw, "lease_s", path, d.lease_s),
        replay_window_s=c.number(raw, "replay_window_s", path, d.replay_window_s),
        action_window_s=c.number(raw, "action_window_s", path, d.action_window_s),
    )


def _retry(c: _Checks, raw: dict[str, Any], path: Path_) -> RetrySettings:
    d = RetrySettings()
    out = RetrySettings(
        attempts=c.integer(raw, "attempts", path, d.attempts),
        backoff_s=c.number(raw, "backoff_s", path, d.backoff_s, above=None, at_least=0),
        backoff_max_s=c.number(raw, "backoff_max_s", path, d.backoff_max_s, above=None,
                               at_least=0),
        jitter_s=c.number(raw, "jitter_s", path, d.jitter_s, above=None, at_least=0),
    )
    if out.backoff_max_s < out.backoff_s:
        c.error((*path, "backoff_max_s"), f"must be >= backoff_s ({out.backoff_s:g})")
    return out


def _check_provider_options(c: _Checks, pc: ProviderConfig, path: Path_) -> None:
    """The provider folder's own checks of its options and credentials."""
    for key_path, message in declaration(pc.type).check_options(pc):
        c.error((*path, *key_path), message)


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load and check gateway.yaml; every error in it is reported in one ConfigError."""
    p = Path(path).resolve()
    try:
        text = p.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: invalid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    c = _Checks(p, key_lines(text))
    c.errors.extend(unknown_keys(text, str(p)))
    cfg = _build(c, p, raw)
    if c.errors:
        raise ConfigError("\n".join(c.errors), errors=c.errors)
    assert cfg is not None
    return cfg


def _build(c: _Checks, p: Path, raw: dict[str, Any]) -> GatewayConfig | None:
    top: Path_ = ()
    store = c.get(raw, "store", str, top, None)
    store_url = ""
    if not store:
        c.error(("store",), "required (sqlite:///path or redis://host:port/db)")
    else:
        try:
            store_url = resolve_store_url(store, p.parent)
        except ConfigError as exc:
            c.error(("store",), str(exc).split(": ", 1)[-1])
    merchants: dict[str, MerchantConfig] = {}
    for i, m in enumerate(c.get(raw, "merchants", list, top, [])):
        mc = _merchant(c, m, ("merchants", i))
        if mc is None:
            continue
        if mc.id in merchants:
            c.error(("merchants", i, "id"), f"duplicate merchant id {mc.id!r}")
        merchants[mc.id] = mc
    providers: dict[str, ProviderConfig] = {}
    providers_raw = c.mapping(raw, "providers", top)
    if not providers_raw:
        c.error(("providers",), "at least one provider is required")
    for n, pr in providers_raw.items():
        pc = _provider(c, str(n), pr, ("providers", str(n)))
        if pc is not None:
            providers[pc.name] = pc
            _check_provider_options(c, pc, ("providers", pc.name))
    candidates = tuple(c.get(raw, "candidates", list, top, list(providers)))
    for i, cand in enumerate(candidates):
        if cand not in providers_raw:
            c.error(("candidates", i), f"unknown provider {cand!r}")
    routing = c.get(raw, "routing_file", str, top, None)
    admin = raw.get("admin_token")
    sandbox_raw = c.mapping(raw, "sandbox", top)
    request_deadline_s = c.number(raw, "request_deadline_s", top, 30.0)
    idempotency_ttl_s = c.number(raw, "idempotency_ttl_s", top, 86400.0)
    if idempotency_ttl_s < 86400 and not raw.get("allow_short_idempotency_ttl"):
        c.error(("idempotency_ttl_s",), "must be at least 86400 (24 h)")
    reconciliation = _reconcile(c, c.mapping(raw, "reconciliation", top), ("reconciliation",))
    if reconciliation.min_age_s < request_deadline_s:
        c.error(("reconciliation", "min_age_s"),
                f"{reconciliation.min_age_s:g} is below request_deadline_s "
                f"({request_deadline_s:g}): reconciliation would look up payments whose own "
                "request may still be running (SPEC 9.1)")
    if reconciliation.replay_window_s < request_deadline_s:
        c.error(("reconciliation", "replay_window_s"),
                f"must be at least request_deadline_s ({request_deadline_s:g})")
    store_options = c.mapping(raw, "store_options", top)
    cfg = GatewayConfig(
        path=p,
        store_url=store_url,
        routing_file=(p.parent / routing).resolve() if routing else None,
        admin_token=c.secret(admin, ("admin_token",)) if admin else None,
        merchants=merchants,
        providers=providers,
        candidates=candidates,
        request_deadline_s=request_deadline_s,
        idempotency_ttl_s=idempotency_ttl_s,
        failover_budget=c.integer(raw, "failover_budget", top, 3),
        retry=_retry(c, c.mapping(raw, "retry", top), ("retry",)),
        sandbox_host=c.get(sandbox_raw, "host", str, ("sandbox",), "127.0.0.1"),
        sandbox_control_port=c.integer(sandbox_raw, "control_port", ("sandbox",), 0,
                                       at_least=0, at_most=65535),
        routing_poll_s=c.number(raw, "routing_poll_s", top, 1.0),
        reconciliation=reconciliation,
        notifications=_notification_settings(c, c.mapping(raw, "notifications", top),
                                             ("notifications",)),
        server=_server(c, c.mapping(raw, "server", top), ("server",)),
        admission=_admission(c, c.mapping(raw, "admission", top), ("admission",)),
        allow_volatile_store=bool(c.get(store_options, "allow_volatile", bool,
                                        ("store_options",), False)),
        store_pool_size=c.integer(store_options, "pool_size", ("store_options",), 128,
                                  at_most=10_000),
        store_pool_timeout_s=c.number(store_options, "pool_timeout_s", ("store_options",),
                                      1.0),
    )
    if cfg.store_pool_timeout_s >= request_deadline_s:
        c.error(("store_options", "pool_timeout_s"),
                f"must be below request_deadline_s ({request_deadline_s:g}): a request "
                "waits this long for the store before anything is done")
    return cfg
