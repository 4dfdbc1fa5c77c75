"""Settlement import and reconciliation to the cent (SPEC 16, issue #14 items 3 and 4).

Import (:func:`import_report`)
  A provider's report for a day -- fetched through the provider's own API
  (``ProviderDeclaration.fetch_settlement``) or read from a file -- is parsed by the
  provider's package into :class:`providers.settlement.SettlementLine` records and kept in
  the store by line id, so importing the same report twice changes nothing. What the
  report says the provider kept and paid out becomes ledger entries (:mod:`gateway.ledger`,
  ids from the provider's line ids, so idempotent too): a line's fee is a ``fee`` entry of
  the payment's merchant, and a line's net in the payout that carries it is a ``payout``
  entry (a reversal when the line takes money out: a refund, a dispute). Per line, not
  per payout, so a payout whose lines come in several days' reports is booked in full.
  The lines and the entries are two store writes: an import cut short between them is
  completed by importing the same report again (until then reconciliation reports each
  line's missing entry as ``missing_in_gateway``).

Reconciliation (:func:`reconcile_day`), per provider and currency, of the lines settled
on a day against the gateway's ledger:

* ``matched`` -- a capture / refund / dispute / dispute reversal line with a gateway entry of
  the same payment, kind and amount;
* ``amount_drift`` -- the same payment and kind, another amount (sum: the differences);
* ``missing_in_gateway`` -- a line the gateway has no entry for (a refund settled twice,
  a payment it does not know), or a line's fee / payout entry the import never wrote (an
  import cut short between its two writes: import the report again);
* ``missing_at_provider`` -- a gateway entry recorded that day that no imported line of
  that day settles (a capture the provider never settled; with a provider that settles
  days later, reconcile the day its report covers);
* ``fee_drift`` -- a capture whose fee is not the provider's ``fee_bps`` of its amount
  (within one of the provider's wire units), or a line whose net is not gross - fee;
* ``payout_mismatch`` -- a payout whose amount is not the sum of its lines' nets (a line in
  the wrong payout shows in two payouts), or lines naming a payout the report lacks; per
  currency, since one payout id may carry several (an Adyen batch).

Amounts are ISO minor units of the currency; a provider's signs (refunds negative) are
compared by magnitude. Any count other than ``matched`` is drift: the CLI exits 1 and
``gateway_settlement_drift_minor_units{provider,currency,kind}`` shows the sums.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.config import GatewayConfig, ProviderConfig
from gateway.ledger import new_entry
from gateway.model import derived_id
from gateway.provider_registry import declaration_of, provider_settings
from gateway.store import Store
from providers.amounts import wire_refusal
from providers.settlement import MalformedSettlement, SettlementLine

DRIFT_KINDS: tuple[str, ...] = metrics.SETTLEMENT_DRIFT_KINDS
KINDS: tuple[str, ...] = ("matched", *DRIFT_KINDS)
#: Line kinds that mirror a gateway ledger entry of the same name.
MONEY_KINDS = frozenset({"capture", "refund", "dispute", "dispute_reversal"})


class SettlementError(Exception):
    """The report cannot be imported (unknown provider, no settlement support, bad
    report): nothing was kept."""


@dataclass
class ImportResult:
    provider: str
    lines: int
    new_lines: int
    new_ledger_entries: int
    unknown_payments: int  # lines naming a payment the gateway does not have


async def _payment_of(store: Store, provider: str, line: SettlementLine
                      ) -> dict[str, Any] | None:
    """The gateway payment a line settles: by the merchant reference (our payment id) when
    it is that provider's, else by the provider's reference."""
    if line.merchant_reference:
        doc = await store.get_payment(line.merchant_reference)
        if doc is not None and doc.get("provider") == provider:
            return doc
    if line.payment_reference:
        pid = await store.find_by_provider_reference(provider, line.payment_reference)
        if pid is not None:
            return await store.get_payment(pid)
    return None


def _provider(config: GatewayConfig, name: str) -> ProviderConfig:
    cfg = config.providers.get(name)
    if cfg is None:
        raise SettlementError(f"no provider {name!r} in the configuration (configured: "
                              f"{', '.join(sorted(config.providers)) or 'none'})")
    return cfg


async def fetch_report(config: GatewayConfig, name: str, day: dt.date,
                       sandbox_ports: dict[str, int] | None = None) -> bytes:
    """The provider's report of ``day`` through its own API (``sandbox_ports``: the
    in-process simulators of a running gateway)."""
    cfg = _provider(config, name)
    decl = declaration_of(cfg)
    if decl.fetch_settlement is None:
        raise SettlementError(f"{name} ({cfg.type}) has no settlement API the gateway can "
                              "fetch from: import the report file with --file")
    try:
        settings = provider_settings(cfg, sandbox_ports or {}, config.sandbox_host)
    except ValueError as exc:
        raise SettlementError(f"{exc}: with sandbox providers, import through the running "
                              "gateway (POST /admin/settlements/import) or with --file") from None
    try:
        return await decl.fetch_settlement(settings, day)
    except Exception as exc:  # the provider's own error type; nothing was kept
        raise SettlementError(f"{name}: fetching the {day} report failed: {exc}") from exc


def line_entries(name: str, line: dict[str, Any]) -> list[dict[str, Any]]:
    """The ledger entries a kept line of a known payment books (ids from its line id, so
    writing them again changes nothing): its fee, and what it adds to (a capture) or takes
    from (a refund, a dispute) the payout that carries it -- one entry per line, so a
    payout whose lines arrive in several reports is booked in full, each line once."""
    out: list[dict[str, Any]] = []
    pid, merchant = line.get("payment_id"), line.get("merchant_id")
    if pid is None or merchant is None or line["kind"] == "payout":
        return out
    fee, net, payout = int(line["fee"]), int(line["net"]), line.get("payout_id")
    if fee > 0:
        out.append(new_entry(
            "fee", entry_id=derived_id("led_", name, line["line_id"], "fee"),
            merchant_id=str(merchant), provider=name, currency=line["currency"],
            amount=fee, source=f"settlement:{name}", payment_id=str(pid),
            settlement_line=line["line_id"]))
    if payout and net != 0:
        out.append(new_entry(
            "payout", entry_id=derived_id("led_", name, line["line_id"], "payout"),
            merchant_id=str(merchant), provider=name, currency=line["currency"],
            amount=abs(net), reversal=net < 0, source=f"settlement:{name}",
            payment_id=str(pid), payout_id=payout, settlement_line=line["line_id"]))
    return out


async def import_report(store: Store, config: GatewayConfig, name: str, raw: bytes
                        ) -> ImportResult:
    cfg = _provider(config, name)
    decl = declaration_of(cfg)
    if decl.parse_settlement is None:
        raise SettlementError(f"{name} ({cfg.type}) has no settlement report format")
    try:
        lines = decl.parse_settlement(raw)
    except MalformedSettlement as exc:
        raise SettlementError(f"the {cfg.type} report cannot be read: {exc}") from None
    kept: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    unknown = 0
    found: dict[tuple[str | None, str | None], dict[str, Any] | None] = {}
    for line in lines:
        doc = None
        if line.kind != "payout":  # a payment's capture, refunds, disputes: read it once
            ref = (line.merchant_reference, line.payment_reference)
            if ref not in found:
                found[ref] = await _payment_of(store, name, line)
            doc = found[ref]
        pid = None if doc is None else str(doc["id"])
        if doc is None and line.kind != "payout":
            unknown += 1
        kept.append({**dataclasses.asdict(line), "payment_id": pid,
                     "merchant_id": None if doc is None else doc.get("merchant_id")})
        if doc is None:
            continue
        entries += line_entries(name, kept[-1])
    new_lines = await store.save_settlement_lines(name, kept)
    new_entries = await store.append_ledger(entries)
    return ImportResult(name, len(lines), new_lines, new_entries, unknown)


# --------------------------------------------------------------------------- reconcile


@dataclass
class Tally:
    count: int = 0
    sum: int = 0

    def add(self, amount: int) -> None:
        self.count += 1
        self.sum += abs(int(amount))


@dataclass
class Bucket:
    provider: str
    currency: str
    tallies: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in KINDS})
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, amount: int, **detail: Any) -> None:
        self.tallies[kind].add(amount)
        if kind != "matched":
            self.details.append({"kind": kind, "amount": abs(int(amount)), **detail})

    @property
    def drift(self) -> bool:
        return any(self.tallies[k].count for k in DRIFT_KINDS)

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "currency": self.currency,
                **{k: dataclasses.asdict(t) for k, t in self.tallies.items()},
                "drift": self.drift, "details": self.details}


@dataclass
class Report:
    date: str
    buckets: list[Bucket]

    @property
    def drift(self) -> bool:
        return any(b.drift for b in self.buckets)

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.date, "drift": self.drift,
                "providers": [b.as_dict() for b in self.buckets]}

    def render(self) -> str:
        head = f"{'provider':<16} {'cur':<4} " + " ".join(f"{k:>22}" for k in KINDS)
        rows = [f"settlement reconciliation of {self.date} (count / sum in minor units)",
                head]
        for b in self.buckets:
            cells = " ".join(f"{f'{t.count} / {t.sum}':>22}" for t in b.tallies.values())
            rows.append(f"{b.provider:<16} {b.currency:<4} {cells}")
        if not self.buckets:
            rows.append("(no settlement lines or ledger entries that day)")
        for b in self.buckets:
            for d in b.details:
                rows.append(f"  {b.provider} {b.currency} {d['kind']}: {d['amount']} "
                            + " ".join(f"{k}={v}" for k, v in d.items()
                                       if k not in ("kind", "amount") and v is not None))
        rows.append("DRIFT FOUND" if self.drift else "no drift")
        return "\n".join(rows)


def _day_bounds(day: dt.date) -> tuple[float, float]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
    return start, start + 86400.0


def _wire_step(ptype: str, currency: str) -> int:
    """The provider's smallest amount step in ``currency``, in ISO minor units."""
    for step in (1, 10, 100, 1000):
        if wire_refusal(ptype, step, currency) is None:
            return step
    return 1


def _match(bucket: Bucket, key: tuple[str, str], expected: list[int], settled: list[int]
           ) -> None:
    """Pair one payment's gateway amounts of one kind with the provider's."""
    pid, kind = key
    left = sorted(settled)
    rest: list[int] = []
    for amount in sorted(expected):
        if amount in left:
            left.remove(amount)
            bucket.add("matched", amount)
        else:
            rest.append(amount)
    for gw, pr in zip(rest, left, strict=False):
        bucket.add("amount_drift", gw - pr, payment_id=pid, line_kind=kind, gateway=gw,
                   provider_amount=pr)
    for gw in rest[len(left):]:
        bucket.add("missing_at_provider", gw, payment_id=pid, line_kind=kind)
    for pr in left[len(rest):]:
        bucket.add("missing_in_gateway", pr, payment_id=pid, line_kind=kind)


async def _reconcile_provider(store: Store, cfg: ProviderConfig, day: dt.date
                              ) -> list[Bucket]:
    name = cfg.name
    lines = await store.list_settlement_lines(name, day.isoformat())
    start, end = _day_bounds(day)
    recorded = await store.ledger_entries_between(name, start, end)
    buckets: dict[str, Bucket] = {}

    def bucket(currency: str) -> Bucket:
        return buckets.setdefault(currency, Bucket(name, currency))

    settled: dict[tuple[str, str], list[int]] = defaultdict(list)
    currency_of: dict[tuple[str, str], str] = {}
    # per (payout, currency): one payout id may carry several currencies (an Adyen batch)
    payouts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    step_cache: dict[str, int] = {}
    for line in lines:
        b = bucket(line["currency"])
        if line["net"] != line["gross"] - line["fee"]:
            b.add("fee_drift", line["net"] - (line["gross"] - line["fee"]),
                  line_id=line["line_id"], why="net is not gross - fee")
        if line.get("payout_id"):
            payouts[(line["payout_id"], line["currency"])].append(line)
        if line["kind"] not in MONEY_KINDS:
            continue
        pid = line.get("payment_id")
        if pid is None:
            b.add("missing_in_gateway", line["gross"], line_id=line["line_id"],
                  line_kind=line["kind"], why="no such payment at the gateway",
                  payment_reference=line.get("payment_reference"))
            continue
        key = (str(pid), line["kind"])
        settled[key].append(abs(int(line["gross"])))
        currency_of[key] = line["currency"]
        if line["kind"] == "capture" and cfg.fee_bps is not None:
            fee_due = (abs(int(line["gross"])) * cfg.fee_bps + 5000) // 10000
            step = step_cache.setdefault(line["currency"],
                                         _wire_step(cfg.type, line["currency"]))
            if abs(int(line["fee"]) - fee_due) > step:
                b.add("fee_drift", int(line["fee"]) - fee_due, line_id=line["line_id"],
                      payment_id=pid, fee=line["fee"], expected_fee=fee_due)
    for (payout, currency), members in sorted(payouts.items()):
        heads = [m for m in members if m["kind"] == "payout"]
        total = sum(int(m["net"]) for m in members)
        if not heads:
            bucket(currency).add("payout_mismatch", total, payout_id=payout,
                                 why="lines name a payout the report does not list")
        elif total != 0:
            bucket(currency).add("payout_mismatch", total, payout_id=payout,
                                 payout=-int(heads[0]["gross"]),
                                 lines=total - int(heads[0]["net"]))
    # what the gateway recorded: every entry of the day, and every entry of a payment a
    # line of the day settles
    expected: dict[tuple[str, str], list[int]] = defaultdict(list)
    seen: set[str] = set()
    pids = {k[0] for k in settled} | {str(x["payment_id"]) for x in lines
                                      if x.get("payment_id")}
    entries = list(recorded)
    for pid in sorted(pids):
        entries += await store.list_ledger(pid)
    # the fee and payout entries the import books for each line: missing when an import
    # was cut short between its two writes (the lines kept, the entries not): the money
    # the line says the provider kept or paid out is not in the ledger
    booked = {e["id"] for e in entries}
    for line in lines:
        for due in line_entries(name, line):
            if due["id"] not in booked:
                bucket(line["currency"]).add(
                    "missing_in_gateway", due["amount"], line_id=line["line_id"],
                    payment_id=line["payment_id"], line_kind=due["entry_type"],
                    why="the line's ledger entry was never written (an import cut short): "
                        "import the report again")
    for e in entries:
        if e["id"] in seen or e["entry_type"] not in MONEY_KINDS or e.get("reversal"):
            continue
        seen.add(e["id"])
        key = (str(e["payment_id"]), e["entry_type"])
        if key not in settled and not start <= float(e["created_at"]) < end:
            continue  # recorded another day and not settled today: another day's report
        expected[key].append(int(e["amount"]))
        currency_of.setdefault(key, e["currency"])
    for key in sorted(set(expected) | set(settled)):
        _match(bucket(currency_of[key]), key, expected.get(key, []), settled.get(key, []))
    return [buckets[c] for c in sorted(buckets)]


async def reconcile_day(store: Store, config: GatewayConfig, day: dt.date,
                        providers: Iterable[str] | None = None) -> Report:
    names = sorted(config.providers) if providers is None else list(providers)
    buckets: list[Bucket] = []
    for name in names:
        buckets += await _reconcile_provider(store, _provider(config, name), day)
    # the gauge is what this reconciliation found: a provider's currency with no line and
    # no entry that day goes back to 0 (else an earlier day's drift would stay, and its
    # alert fire, after a clean day)
    sums: dict[tuple[str, str], Bucket] = {(b.provider, b.currency): b for b in buckets}
    for name in names:
        for currency in sorted(set(_provider(config, name).currencies)
                               | _drift_series_currencies(name)):
            sums.setdefault((name, currency), Bucket(name, currency))
    for (provider, currency), b in sorted(sums.items()):
        for kind in DRIFT_KINDS:
            metrics.SETTLEMENT_DRIFT.labels(provider, currency, kind).set(
                b.tallies[kind].sum)
    return Report(day.isoformat(), buckets)


def _drift_series_currencies(provider: str) -> set[str]:
    """Currencies of ``provider`` the drift gauge has a series for (set by an earlier
    reconciliation, e.g. a currency no longer configured)."""
    out: set[str] = set()
    for family in metrics.SETTLEMENT_DRIFT.collect():
        for sample in family.samples:
            if sample.labels.get("provider") == provider:
                out.add(sample.labels["currency"])
    return out


__all__ = ["DRIFT_KINDS", "KINDS", "Bucket", "ImportResult", "Report", "SettlementError",
           "fetch_report", "import_report", "reconcile_day"]
