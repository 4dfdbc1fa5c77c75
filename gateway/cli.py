"""The ``gateway`` command (SPEC section 13)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import logs

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.config import GatewayConfig
    from routing.loader import RoutingConfigError
    from routing.rules import RoutingTable
    from routing.select import RouteRequest

DEFAULT_CONFIG = "config/gateway.yaml"
log = logging.getLogger("gateway.cli")


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from routing.loader import RoutingConfigError, load_routing

    if args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        if args.workers > 1:  # validate here; the workers build their own apps
            if config.routing_file is not None:
                load_routing(config.routing_file, config.providers)
            if any(p.sandbox for p in config.providers.values()):
                print("gateway: --workers > 1 needs real (or standalone `gateway sandbox`) "
                      "providers: in-process sandbox providers would differ per worker",
                      file=sys.stderr)
                return 2
            from gateway.supervisor import supervise

            return supervise(args.config, args.host, args.port, args.workers, args.log_level)
        from gateway.app import create_app

        connect_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        app = create_app(config, public_url=f"http://{connect_host}:{args.port}")
    except ConfigError as exc:
        for line in exc.errors:
            print(f"gateway: {line}", file=sys.stderr)
        return 2
    except RoutingConfigError as exc:
        for issue in exc.errors:
            print(f"gateway: {issue}", file=sys.stderr)
        return 2
    from gateway.http_server import event_loop_choice, run, serve
    from gateway.store import StoreError

    log.info("gateway starting", extra={"host": args.host, "port": args.port,
                                        "config": str(config.path),
                                        "event_loop": event_loop_choice()})
    try:
        run(serve(app, args.host, args.port, config.server, reuse_port=args.reuse_port))
    except StoreError as exc:  # e.g. an unwritable SQLite path: one clear line, no traceback
        print(f"gateway: the store cannot be opened: {exc}", file=sys.stderr)
        return 1
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """One reconciliation pass over the configured store; prints the drift report."""
    import asyncio

    from aiohttp import web

    from gateway.app import create_app
    from gateway.appkeys import ORCHESTRATOR, STORE
    from gateway.config import ConfigError, load_config
    from gateway.reconcile import Reconciler
    from routing.loader import RoutingConfigError

    try:
        config = load_config(args.config)
        # this process runs exactly one pass: no background loop
        config = dataclasses.replace(config, reconciliation=dataclasses.replace(
            config.reconciliation, enabled=False))
        app = create_app(config)
    except (ConfigError, RoutingConfigError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2

    async def run() -> str:
        runner = web.AppRunner(app)  # opens the store and providers; serves nothing
        await runner.setup()
        try:
            reconciler = Reconciler(config, app[STORE], app[ORCHESTRATOR])
            return (await reconciler.run_once()).render()
        finally:
            await runner.cleanup()

    print(asyncio.run(run()))
    return 0


def _payments(args: argparse.Namespace) -> int:
    """``gateway payments show|sync|resolve --config F ID``: the operator tools (SPEC 9.2)
    on the configured store, in this process, like ``gateway reconcile`` (no running
    gateway needed). The payment object (and for ``show`` its audit trail) is printed as
    JSON on stdout, a one-line summary on stderr. Exit 0 done, 1 refused (unknown id,
    not allowed now, provider unavailable, store unreachable), 2 invalid configuration."""
    import asyncio

    from gateway.config import ConfigError, load_config
    from gateway.store import StoreError
    from routing.loader import RoutingConfigError

    try:
        config = load_config(args.config)
        config = dataclasses.replace(config, reconciliation=dataclasses.replace(
            config.reconciliation, enabled=False))  # no background loop in this process
        if args.payments_command == "sync":  # validates the routing file as serve does
            from gateway.app import create_app

            app = create_app(config)
            if any(p.sandbox for p in config.providers.values()):
                print("gateway: note: sandbox providers run in this process: their "
                      "simulators know nothing of a running gateway's in-process ones "
                      "(use POST /admin/payments/{id}/sync there)", file=sys.stderr)
    except (ConfigError, RoutingConfigError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    from gateway.operator import OperatorRefused

    try:
        if args.payments_command == "sync":
            return asyncio.run(_payments_sync(app, args.payment_id))
        return asyncio.run(_payments_store(config, args))
    except OperatorRefused as exc:
        where = f" ({exc.param})" if exc.param else ""
        print(f"gateway: refused: {exc.code}{where}: {exc.message}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"gateway: the store cannot be used: {exc}", file=sys.stderr)
        return 1


def _print_json(value: object) -> None:
    import json

    print(json.dumps(value, indent=2, sort_keys=False))


async def _payments_sync(app: web.Application, payment_id: str) -> int:
    from aiohttp import web

    from gateway import operator
    from gateway.appkeys import CONFIG, ORCHESTRATOR, STORE
    from gateway.payment_types import Payment
    from gateway.reconcile import Reconciler

    runner = web.AppRunner(app)  # opens the store and providers; serves nothing
    await runner.setup()
    try:
        reconciler = Reconciler(app[CONFIG], app[STORE], app[ORCHESTRATOR])
        synced = await operator.sync(reconciler, payment_id)
    finally:
        await runner.cleanup()
    _print_json(Payment.public_of(synced.payment))
    print(synced.summary, file=sys.stderr)
    return 0


async def _payments_store(config: GatewayConfig, args: argparse.Namespace) -> int:
    """show and resolve need the store only (no provider is called)."""
    from gateway import operator
    from gateway.model import busy_until, iso
    from gateway.payment_types import Payment
    from gateway.payment_writer import PaymentWriter
    from gateway.state_machine import UNRESOLVED
    from gateway.store import make_store

    store = make_store(config.store_url)
    await store.open()
    try:
        if args.payments_command == "resolve":
            resolution = operator.parse_resolution({
                "status": args.status, "reason": args.reason,
                **({"provider_reference": args.provider_reference}
                   if args.provider_reference is not None else {})})
            doc = await operator.resolve(store, PaymentWriter(store, config), config,
                                         args.payment_id, resolution)
            _print_json(Payment.public_of(doc))
            print(f"resolved {doc['id']}: {doc['status']}", file=sys.stderr)
            return 0
        found = await store.get_payment(args.payment_id)
        if found is None:
            raise operator.OperatorRefused(404, "not_found", "resource_missing",
                                           f"no such payment {args.payment_id}")
        payment = Payment.from_doc(found)  # the whole document, checked
        live_until = busy_until(payment, config.request_deadline_s)
        _print_json({"payment": payment.public(),
                     "merchant_id": payment.merchant_id,
                     "unresolved": payment.status in UNRESOLVED,
                     "resolvable": operator.resolvable(found),
                     "live_until": iso(live_until) if live_until > time.time() else None,
                     "flagged": payment.flagged,
                     "events": await store.list_events(payment.id)})
        return 0
    finally:
        await store.close()


def _ledger(args: argparse.Namespace) -> int:
    """``gateway ledger balance --config F --merchant M --currency C``: the merchant's
    ledger balances (SPEC 16) per account, debits minus credits in minor units, from the
    configured store. A balanced ledger sums to 0 (exit 0); otherwise exit 1. Exit 2 for a
    bad configuration or currency."""
    import asyncio
    import json

    from gateway.config import ConfigError, load_config
    from gateway.store import StoreError, make_store
    from providers.currency import UnknownCurrency, minor_unit

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    currency = args.currency.upper()
    try:
        minor_unit(currency)
    except UnknownCurrency:
        print(f"gateway: not an ISO 4217 currency: {args.currency!r}", file=sys.stderr)
        return 2

    async def read() -> dict[str, int]:
        store = make_store(config.store_url)
        await store.open()
        try:
            return await store.ledger_balances(args.merchant, currency)
        finally:
            await store.close()

    try:
        balances = asyncio.run(read())
    except StoreError as exc:
        print(f"gateway: the store cannot be used: {exc}", file=sys.stderr)
        return 1
    total = sum(balances.values())
    if args.json:
        print(json.dumps({"merchant": args.merchant, "currency": currency,
                          "accounts": balances, "balanced": total == 0}, indent=2))
    else:
        print(f"ledger of {args.merchant} in {currency} (minor units, debit - credit)")
        for account, balance in balances.items():
            print(f"  {account:<32} {balance:>16}")
        print(f"  {'total (0 when balanced)':<32} {total:>16}")
    return 0 if total == 0 else 1


def _settlements(args: argparse.Namespace) -> int:
    """``gateway settlements import --config F --provider P [--file F] [--date D]`` and
    ``gateway settlements reconcile --config F --date D [--json]`` (SPEC 16) on the
    configured store. Import: exit 0 (the counts on stdout), 1 when the report cannot be
    fetched or read (nothing kept). Reconcile: the report (a table, or JSON); exit 1 when
    it found drift. Exit 2 for a bad configuration or date."""
    import asyncio
    import datetime as dt
    import json

    from gateway.config import ConfigError, load_config
    from gateway.settlements import SettlementError, fetch_report, import_report, reconcile_day
    from gateway.store import StoreError, make_store

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        day = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.UTC).date()
    except ValueError:
        print(f"gateway: --date must be YYYY-MM-DD, not {args.date!r}", file=sys.stderr)
        return 2
    try:
        report_file = Path(args.file).read_bytes() if getattr(args, "file", None) else None
    except OSError as exc:
        print(f"gateway: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1

    async def run() -> int:
        store = make_store(config.store_url)
        await store.open()
        try:
            if args.settlements_command == "import":
                raw = (report_file if report_file is not None
                       else await fetch_report(config, args.provider, day))
                result = await import_report(store, config, args.provider, raw)
                print(json.dumps(dataclasses.asdict(result)))
                return 0
            report = await reconcile_day(store, config, day)
            print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
            return 1 if report.drift else 0
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except SettlementError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"gateway: the store cannot be used: {exc}", file=sys.stderr)
        return 1


def _keygen(args: argparse.Namespace) -> int:
    from gateway.api.auth import new_key

    key, digest = new_key()
    print(f"api_key: {key}")
    print(f"api_key_sha256: {digest}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    return check_main(args.config)


def _route(args: argparse.Namespace) -> int:
    return route_main(args.config, args.request, args.merchant)


# -- check-config and route: results on stdout, errors on stderr; exit 0, or 1 on any
# error (gateway.yaml, routing file, merchant or request file). Nothing is sent to any
# provider. ---------------------------------------------------------------------------

#: The payment id ``gateway route`` hashes for split rules when the request has no "id".
DEFAULT_PAYMENT_ID = "pay_explain"


def _load(config_path: str | os.PathLike[str]) -> tuple[GatewayConfig, RoutingTable | None]:
    """gateway.yaml and its routing table (None without routing_file); raises
    ``ConfigError`` / ``RoutingConfigError``."""
    from gateway.config import load_config
    from routing.loader import load_routing

    config = load_config(config_path)
    if config.routing_file is None:
        return config, None
    return config, load_routing(config.routing_file, config.providers)


def _load_or_report(config_path: str | os.PathLike[str]
                    ) -> tuple[GatewayConfig, RoutingTable | None] | None:
    """:func:`_load`, printing every error to stderr (None then)."""
    from gateway.config import ConfigError
    from routing.loader import RoutingConfigError

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
    from routing.select import RouteRequest

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
    from routing.explain import explain, static_table
    from routing.select import NoRouteError, decide

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


def _doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import doctor_main

    if args.log_level.upper() == "INFO":  # the report is the output; logs only for problems
        logging.getLogger().setLevel(logging.WARNING)
    return doctor_main(args.config, url=args.url)


def _sandbox(argv: Sequence[str]) -> int:
    from providers.sandbox import sandbox_main

    return sandbox_main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Payment routing gateway")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=DEFAULT_CONFIG)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port (metrics combined)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check-config", help="validate gateway.yaml")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)
    route = sub.add_parser("route", help="explain the routing decision for a request")
    route.add_argument("--config", default=DEFAULT_CONFIG)
    route.add_argument("--request", required=True, help="JSON file with a create-payment body")
    route.add_argument("--merchant", default=None)
    route.set_defaults(func=_route)
    rec = sub.add_parser("reconcile", help="one reconciliation pass with a drift report")
    rec.add_argument("--config", default=DEFAULT_CONFIG)
    rec.set_defaults(func=_reconcile)
    payments = sub.add_parser("payments", help="operator tools: show, sync or resolve one "
                              "payment (SPEC 9.2)")
    psub = payments.add_subparsers(dest="payments_command", required=True)
    for verb, text in (("show", "the payment, its audit trail and whether it is in flight"),
                       ("sync", "look the payment up at its provider now; apply what is "
                                "proven"),
                       ("resolve", "resolve an unresolved payment by hand (audited, source "
                                   "operator)")):
        p = psub.add_parser(verb, help=text)
        p.add_argument("--config", default=DEFAULT_CONFIG)
        p.add_argument("payment_id", metavar="ID")
        if verb == "resolve":
            p.add_argument("--status", required=True,
                           help="authorized, captured, voided, declined or failed (along "
                                "the state machine's edges)")
            p.add_argument("--reason", required=True, help="why (audited)")
            p.add_argument("--provider-reference", default=None,
                           help="the provider's id of the charge (required for authorized "
                                "or captured when the payment has none)")
        p.set_defaults(func=_payments)
    ledger = sub.add_parser("ledger", help="the double-entry ledger (SPEC 16)")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    balance = lsub.add_parser("balance", help="a merchant's balances per account in one "
                              "currency; exit 1 if they do not sum to 0")
    balance.add_argument("--config", default=DEFAULT_CONFIG)
    balance.add_argument("--merchant", required=True)
    balance.add_argument("--currency", required=True)
    balance.add_argument("--json", action="store_true")
    balance.set_defaults(func=_ledger)
    settle = sub.add_parser("settlements", help="provider settlement reports (SPEC 16)")
    ssub = settle.add_subparsers(dest="settlements_command", required=True)
    imp = ssub.add_parser("import", help="import a day's report (idempotent)")
    imp.add_argument("--config", default=DEFAULT_CONFIG)
    imp.add_argument("--provider", required=True, help="provider name in gateway.yaml")
    imp.add_argument("--file", default=None, help="the report file (default: fetch it "
                     "through the provider's API)")
    imp.add_argument("--date", default=None, help="YYYY-MM-DD (default: today, UTC)")
    imp.set_defaults(func=_settlements)
    rec_s = ssub.add_parser("reconcile", help="match a day's settlement lines to the "
                            "ledger; exit 1 on drift")
    rec_s.add_argument("--config", default=DEFAULT_CONFIG)
    rec_s.add_argument("--date", required=True, help="YYYY-MM-DD")
    rec_s.add_argument("--json", action="store_true")
    rec_s.set_defaults(func=_settlements)
    keygen = sub.add_parser("keygen", help="print a new merchant API key and its SHA-256")
    keygen.set_defaults(func=_keygen)
    doctor = sub.add_parser("doctor", help="pre-production checks; exit 1 on a failed check")
    doctor.add_argument("--config", default=DEFAULT_CONFIG)
    doctor.add_argument("--url", default=None,
                        help="send the signed test webhooks to the gateway running at this "
                             "URL (default: an in-process webhook handler)")
    doctor.set_defaults(func=_doctor)
    sub.add_parser("sandbox", help="run the provider simulators and their control API",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logs.setup_logging()
    if argv and argv[0] == "sandbox":
        return _sandbox(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(args.log_level.upper())
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
