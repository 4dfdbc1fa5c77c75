"""``gateway doctor --config F [--url URL]``: the pre-production check (SPEC section 13).

Each check is a small function returning :class:`Check` results (subject, check name,
``ok`` | ``warn`` | ``fail``, a one-line detail). A detail never holds a secret value:
it names keys, HTTP statuses, exception classes and account ids, never a key, a token or
a provider's error message (Stripe's echoes part of the API key). Resolved secrets are
also registered with :mod:`gateway.logs` by the config loader, so log lines redact them.

Checks, per provider (in gateway.yaml order):

* ``sandbox`` (``sandbox: true`` only) -- warn: an in-process simulator, no real account;
  the network checks below are skipped for it (they would only test the simulator).
* ``credentials`` -- one harmless authenticated call with the real SDK, configured like
  the adapter (base URL, timeouts, no retries): Stripe ``GET /v1/balance``; Braintree
  ``merchant_account.all()`` (``GET /merchants/<id>/merchant_accounts/``); Adyen
  ``POST /paymentMethods`` for the configured ``merchant_account``. 401/403 -> fail
  (rejected); no connection -> fail with the reason (``connection_refused``,
  ``connect_timeout``, ``dns_failure``...); any other error answer -> fail.
* ``account:<CUR>`` (Braintree, one line per listed currency) -- the account of
  ``merchant_account_ids[CUR]`` exists (``merchant_account.find``), is ``active`` and is
  in CUR; a currency without one must be ``default_currency`` and the default account
  (``default: true`` in the list) must be in it. Anything else -> fail: Braintree would
  refuse the sale or charge it in another currency.
  ``merchant_account`` (Adyen) -- the account was accepted by ``/paymentMethods``
  (403 ``901`` -> fail) and offers cards (``scheme``; else warn).
* ``clock`` -- the provider's ``Date`` header against this host's clock (taken halfway
  through the call; the header has 1 s resolution, so up to ~0.5 s + half the round
  trip is measurement error): more than :data:`CLOCK_WARN_S` (5 s) -> warn, more than
  :data:`CLOCK_FAIL_S` (60 s) -> fail. 60 s because webhook timestamps are checked
  against this clock (Stripe 300 s tolerance, Braintree 300 s into the future) and
  reconciliation ages (``min_age_s``, default 60 s) are measured with it; 5 s because a
  host with NTP working is well under a second off. No answer -> warn (not measured).
* ``webhook`` -- the secret is configured (Stripe ``webhook_secret``, Adyen ``hmac_key``
  as hex, Braintree ``public_key``/``private_key``; a ``sandbox: true`` provider falls
  back to its simulator's secret like the gateway does) and a test notification signed
  with it in the provider's own scheme is accepted (HTTP 200) by the gateway's real
  ``POST /webhooks/{name}`` handler. The notification is a kind that never touches a
  payment (Stripe ``balance.available``, Adyen ``REPORT_AVAILABLE``, Braintree's SDK
  sample ``check``), so the gateway answers ``ignored``. Where it runs: by default an
  in-process server with the real webhook routes and request middleware on a private,
  temporary SQLite store, so the configured store is not touched at all; with ``--url``
  the running gateway at that URL (checks its secrets too; it records one dedupe entry
  per notification and changes no payment).

Then ``store writable`` (the same write probe as ``/readyz``: ``Store.ping``) and ``store
durable``: SQLite -- ``journal_mode`` (WAL or a rollback journal; MEMORY/OFF fail) and
``synchronous`` (FULL/EXTRA ok, NORMAL warn, OFF fail) read from the store's own
connection, and a file on tmpfs/ramfs warns (survives a gateway restart, not a reboot);
Redis -- the persistence check the gateway runs at start: AOF ok, RDB only warn, none
fail (also with ``store_options.allow_volatile``), unknown (``CONFIG`` disabled) warn.

Last, ``gateway admin_token``: missing -> warn (the /admin endpoints cannot be used);
equal to the sandbox default of config/gateway.yaml -> fail, or warn when every provider
is a sandbox (a demo set-up); shorter than :data:`MIN_ADMIN_TOKEN_LEN` -> warn.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when
gateway.yaml or its routing file is invalid (nothing checked; like ``serve``).
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.config import GatewayConfig, ProviderConfig

# gateway.provider_registry loads every provider folder, whose doctor module imports its
# SDK at import time, not lazily: the SDK checks run in worker threads at the same time,
# and concurrent first imports of modules that import each other can deadlock
# (importlib's _DeadlockError).
from gateway.provider_registry import declaration_of, effective
from providers.doctor_checks import (
    CLOCK_FAIL_S,
    CLOCK_WARN_S,
    Answered,
    Check,
    SignedNotification,
    clock_check,
    fail,
    ok,
    warn,
)

#: ``admin_token`` default of the shipped config/gateway.yaml (a test keeps them equal).
SANDBOX_ADMIN_TOKEN = "sandbox-admin-token"
#: An admin token shorter than this is a warning.
MIN_ADMIN_TOKEN_LEN = 16
#: How long one test notification may take to be answered.
WEBHOOK_TIMEOUT_S = 15.0


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))



# ----------------------------------------------------------------------------- webhooks


def build_notification(cfg: ProviderConfig) -> SignedNotification | Check:
    """The provider's signed test notification, or the failed check when the secret that
    would verify it is missing or unusable (sandbox providers fall back like the gateway)."""
    try:
        decl = declaration_of(cfg)
    except ValueError:
        return fail(cfg.name, "webhook", f"no webhook scheme for provider type {cfg.type}")
    return decl.test_notification(effective(cfg))




@asynccontextmanager
async def in_process_webhooks(config: GatewayConfig) -> AsyncIterator[str]:
    """The gateway's real webhook routes and request middleware, served on 127.0.0.1 with
    a private temporary SQLite store (the configured store is never touched)."""
    from aiohttp import web

    from gateway.api import webhooks
    from gateway.api.middleware import request_context
    from gateway.appkeys import CONFIG, STORE
    from gateway.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="gateway-doctor-") as tmp:
        store = SQLiteStore(Path(tmp) / "doctor.db")
        await store.open()
        app = web.Application(middlewares=[request_context],
                              client_max_size=webhooks.MAX_BODY_BYTES)
        app[CONFIG] = config
        app[STORE] = store
        app.router.add_routes(webhooks.routes)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
            await store.close()


async def send_notification(session: aiohttp.ClientSession, base_url: str, where: str,
                            cfg: ProviderConfig, note: SignedNotification) -> Check:
    """POST ``note`` to ``base_url``/webhooks/<name>; ``where`` names the gateway in the
    detail (``in-process`` or the URL given)."""
    name = cfg.name
    url = f"{base_url.rstrip('/')}/webhooks/{name}"
    try:
        async with session.post(url, data=note.body, headers=note.headers) as r:
            status = r.status
            try:
                answer = await r.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                answer = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return fail(name, "webhook", f"the gateway at {base_url} is unreachable: "
                    f"{type(exc).__name__}")
    if status == 200 and isinstance(answer, dict) and answer.get("received") is True:
        results = [str(x.get("result")) for x in answer.get("results") or []
                   if isinstance(x, dict)]
        return ok(name, "webhook", f"signed test notification accepted ({where}: 200, "
                  f"{', '.join(results) or 'no events'})")
    code = ""
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        code = f" {answer['error'].get('code')}"
    if status == 404:
        return fail(name, "webhook", f"{where}: 404{code}: the gateway there has no provider "
                    f"named {name}")
    if status == 401:
        return fail(name, "webhook", f"signed test notification rejected ({where}: 401{code}): "
                    "the gateway verifies with another secret")
    return fail(name, "webhook", f"signed test notification not accepted ({where}: "
                f"{status}{code})")


async def webhook_checks(config: GatewayConfig, url: str | None) -> dict[str, Check]:
    notes: dict[str, SignedNotification | Check] = {}
    for name, cfg in config.providers.items():
        notes[name] = await asyncio.to_thread(build_notification, cfg)
    out = {n: v for n, v in notes.items() if isinstance(v, Check)}
    pending = {n: v for n, v in notes.items() if isinstance(v, SignedNotification)}
    if not pending:
        return out
    timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if url is None:
            async with in_process_webhooks(config) as base:
                for name, note in pending.items():
                    out[name] = await send_notification(session, base, "in-process",
                                                        config.providers[name], note)
        else:
            for name, note in pending.items():
                out[name] = await send_notification(session, url, url,
                                                    config.providers[name], note)
    return out


# ----------------------------------------------------------------------------- store


def filesystem_type(path: Path, mounts_text: str | None = None) -> str | None:
    """The filesystem type holding ``path`` (longest mount point in /proc/mounts)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = str(path)
    best, best_type = "", None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, best_type = point, fields[2]
    return best_type


_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


async def _sqlite_settings(store: Any) -> tuple[str, int]:
    """``journal_mode`` and ``synchronous`` of the store's OWN connection (``synchronous``
    is per connection: another connection would show its own default)."""
    def read() -> tuple[str, int]:
        conn = store._db()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        return str(mode).lower(), int(sync)

    result: tuple[str, int] = await store._run(read)
    return result


async def _sqlite_durable(store: Any) -> Check:
    path: Path = store.path.resolve()
    try:
        mode, sync = await _sqlite_settings(store)
    except Exception as exc:
        return fail("store", "durable", f"sqlite {path}: settings unreadable: "
                    f"{type(exc).__name__}")
    sync_name = _SYNCHRONOUS.get(sync, str(sync))
    detail = f"sqlite {path}: journal_mode={mode}, synchronous={sync_name}"
    if mode in ("memory", "off"):
        return fail("store", "durable", f"{detail}: commits are not journaled on disk")
    if sync == 0:
        return fail("store", "durable", f"{detail}: commits are not synced to disk")
    fstype = filesystem_type(path.parent)
    if fstype in ("tmpfs", "ramfs"):
        return warn("store", "durable", f"{detail} on {fstype}: survives a gateway restart, "
                    "not a reboot")
    if sync == 1:
        return warn("store", "durable", f"{detail}: the last commits can be lost on power "
                    "loss (FULL keeps them)")
    return ok("store", "durable", detail)


async def _redis_durable(store: Any, config: GatewayConfig) -> Check:
    from gateway.store import StoreError

    where = f"redis {_without_password(config.store_url)}"
    try:
        mode = await store.persistence()
    except StoreError:
        return fail("store", "durable", f"{where}: unreachable, persistence unknown")
    if mode == "aof":
        return ok("store", "durable", f"{where}: AOF (appendonly yes)")
    if mode == "rdb":
        return warn("store", "durable", f"{where}: RDB snapshots only: writes since the last "
                    "snapshot are lost on a crash; run it with appendonly yes")
    if mode == "none":
        allowed = " (store_options.allow_volatile lets the gateway start on it)" \
            if config.allow_volatile_store else ""
        return fail("store", "durable", f"{where}: persists nothing (appendonly no, save \"\"): "
                    f"a restart loses every payment{allowed}")
    return warn("store", "durable", f"{where}: persistence unknown (CONFIG GET refused); make "
                "sure AOF is on")


async def store_checks(config: GatewayConfig) -> list[Check]:
    from gateway.store import StoreError, make_store
    from gateway.store.redis import RedisStore
    from gateway.store.sqlite import SQLiteStore

    shown = _without_password(config.store_url)
    try:
        store = make_store(config.store_url)
        await store.open()
    except (StoreError, OSError, ValueError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [fail("store", "writable", f"cannot open {shown}: {line}"),
                fail("store", "durable", "not checked: the store cannot be opened")]
    try:
        if await store.ping():
            writable = ok("store", "writable", f"{shown}: write probe accepted (as /readyz)")
        else:
            writable = fail("store", "writable", f"{shown}: write probe refused (as /readyz): "
                            "down, read-only or full")
        if isinstance(store, SQLiteStore):
            durable = await _sqlite_durable(store)
        elif isinstance(store, RedisStore):
            durable = await _redis_durable(store, config)
        else:  # pragma: no cover - only two backends
            durable = warn("store", "durable", f"{shown}: no durability check for this store")
    finally:
        await store.close()
    return [writable, durable]


# ----------------------------------------------------------------------------- admin token


def admin_token_check(config: GatewayConfig) -> Check:
    token = config.admin_token
    demo = all(p.sandbox for p in config.providers.values())
    if not token:
        return warn("gateway", "admin_token", "not configured: the /admin endpoints (routing "
                    "reload, payment sync/resolve) answer 401")
    if hmac.compare_digest(token.encode(), SANDBOX_ADMIN_TOKEN.encode()):
        detail = "is the sandbox default of config/gateway.yaml: set GATEWAY_ADMIN_TOKEN"
        if demo:
            return warn("gateway", "admin_token", f"{detail} (every provider is a sandbox)")
        return fail("gateway", "admin_token", detail)
    if len(token) < MIN_ADMIN_TOKEN_LEN:
        return warn("gateway", "admin_token", f"shorter than {MIN_ADMIN_TOKEN_LEN} characters")
    return ok("gateway", "admin_token", "set, not the sandbox default")


# ----------------------------------------------------------------------------- run


async def provider_checks(cfg: ProviderConfig) -> list[Check]:
    if cfg.sandbox:
        return [warn(cfg.name, "sandbox", "sandbox provider: in-process simulator, no real "
                     "account (credentials, accounts and clock not checked)")]
    try:
        decl = declaration_of(cfg)
    except ValueError:
        return [fail(cfg.name, "credentials", f"no check for provider type {cfg.type}")]
    try:
        return await decl.doctor_checks(cfg)
    except Exception as exc:  # an SDK surprise is a failed check, never a traceback
        return [fail(cfg.name, "credentials", f"not confirmed: {type(exc).__name__}")]


async def run_checks(config: GatewayConfig, url: str | None = None) -> list[Check]:
    """Every check, in report order (providers in gateway.yaml order, then the store and
    the admin token). Provider calls run concurrently."""
    names = list(config.providers)
    per_provider, hooks, store = await asyncio.gather(
        asyncio.gather(*(provider_checks(config.providers[n]) for n in names)),
        webhook_checks(config, url),
        store_checks(config),
    )
    out: list[Check] = []
    for name, checks in zip(names, per_provider, strict=True):
        out.extend(checks)
        out.append(hooks[name])
    out.extend(store)
    out.append(admin_token_check(config))
    return out


def render(checks: Sequence[Check]) -> list[str]:
    subject_w = max((len(c.subject) for c in checks), default=0)
    name_w = max((len(c.name) for c in checks), default=0)
    return [f"{c.status:<5} {c.subject:<{subject_w}}  {c.name:<{name_w}}  {c.detail}"
            for c in checks]


def exit_status(checks: Sequence[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


def doctor_main(config_path: str, url: str | None = None) -> int:
    from gateway.config import ConfigError, load_config
    from routing.loader import RoutingConfigError, load_routing

    try:
        config = load_config(config_path)
        if config.routing_file is not None:
            load_routing(config.routing_file, config.providers)
    except ConfigError as exc:
        for line in getattr(exc, "errors", None) or (str(exc),):  # every error found
            print(f"gateway: {line}", file=sys.stderr)
        return 2
    except RoutingConfigError as exc:
        for issue in exc.errors:
            print(f"gateway: {issue}", file=sys.stderr)
        return 2
    if url is not None and not url.startswith(("http://", "https://")):
        print("gateway: --url must be an http:// or https:// URL", file=sys.stderr)
        return 2
    checks = asyncio.run(run_checks(config, url))
    for line in render(checks):
        print(line)
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    print(f"doctor: {len(checks)} checks: {counts['ok']} ok, {counts['warn']} warn, "
          f"{counts['fail']} fail", flush=True)
    return exit_status(checks)


__all__ = [
    "CLOCK_FAIL_S", "CLOCK_WARN_S", "SANDBOX_ADMIN_TOKEN", "Answered", "Check",
    "admin_token_check",
    "clock_check", "doctor_main", "filesystem_type", "render", "run_checks",
]
