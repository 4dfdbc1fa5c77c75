"""A simulated day of payments, settled and reconciled to the cent (issue #14's proof).

``--payments`` payments (default 1,200) go through a gateway running its three sandbox
providers (Stripe, Braintree, Adyen; EUR, JPY, KWD) the way merchants send them: most
captured automatically, some authorized and never captured, some declined; a share of the
captured ones partly refunded and a few disputed at the provider. Then settlement faults
are injected at the simulators (``POST /_sim/{p}/settlement_faults``) on chosen payments:
a capture never settled, a refund settled twice, a fee changed (not at Braintree, which
reports no fees), a capture in the wrong payout. Each provider's report of the day is
imported through the running gateway (``POST /admin/settlements/import``, the provider's
own API, twice: the second import must change nothing), the day is reconciled
(``POST /admin/settlements/reconcile``), and ``gateway settlements reconcile`` prints the
report finance reads, from the same store.

Printed: the report, then every injected fault beside what reconciliation found for it
(a fault counts as found only by exactly one finding of its kind on its payment; a wrong
payout by its payout short by exactly the moved nets), a count per provider and kind, and
anything found that was not injected. Exit 0 only when every fault was found and nothing
else was, both imports agree (the second adds nothing), and Braintree's simulator refuses
a fee change (409 fees_not_reported: its report has no fee) (``--clean``: no faults, and no
drift). Payments shed by the gateway's admission (503 gateway_overloaded) are retried with
the same Idempotency-Key after Retry-After, as a merchant would, and counted.

    .venv/bin/python bench/settlement_day.py [--payments N] [--store sqlite|redis]
        [--seed S] [--clean] [--json]

Run it well before midnight UTC: the day's payments must fall in one settlement day.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import _free_port, headers, private_redis, tempdir, write_config
from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config

ADMIN_TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
CURRENCIES = ["EUR", "JPY", "KWD"]
PROVIDERS: dict[str, dict[str, Any]] = {
    "stripe_main": {"type": "stripe", "sandbox": True, "currencies": CURRENCIES,
                    "fee_bps": 290},
    "braintree_main": {"type": "braintree", "sandbox": True, "currencies": CURRENCIES,
                       "merchant_account_ids": {c: f"day_{c.lower()}" for c in CURRENCIES}},
    "adyen_main": {"type": "adyen", "sandbox": True, "currencies": CURRENCIES,
                   "merchant_account": "DayECOM", "fee_bps": 290},
}
SIM = {name: str(p["type"]) for name, p in PROVIDERS.items()}
#: Faults injected per provider (fewer when the day has too few candidates).
FAULTS_PER_PROVIDER = {"unsettled_capture": 3, "double_refund": 3, "fee_changed": 3,
                       "wrong_payout": 2}
CONCURRENCY = 16


@dataclass
class Planned:
    n: int
    provider: str
    currency: str
    amount: int
    kind: str  # captured | authorized | declined
    pid: str = ""
    refunded: int = 0
    disputed: bool = False


@dataclass
class Day:
    payments: list[Planned] = field(default_factory=list)
    faults: dict[str, dict[str, list[Planned]]] = field(default_factory=dict)  # provider ->
    # kind -> payments
    timings: dict[str, float] = field(default_factory=dict)


def plan(n: int, seed: int) -> list[Planned]:
    rng = random.Random(seed)
    out: list[Planned] = []
    names = list(PROVIDERS)
    for i in range(n):
        currency = rng.choices(CURRENCIES, weights=[6, 3, 1])[0]
        amount = rng.randrange(100, 60000)
        if currency == "KWD":
            amount -= amount % 10  # Stripe takes KWD in multiples of 10 fils
        kind = rng.choices(["captured", "authorized", "declined"], weights=[90, 5, 5])[0]
        out.append(Planned(i, names[i % len(names)], currency, amount, kind))
    return out


async def wait_until(check: Callable[[], Awaitable[Any]], within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within_s} s waiting for {what} (last: {got!r})")
        await asyncio.sleep(0.05)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, control: str) -> None:
        self.s, self.base, self.control = session, base, control
        #: 503 gateway_overloaded answers (admission shed the request, nothing was done),
        #: each retried after Retry-After with the same Idempotency-Key, as a merchant does
        self.shed = 0

    async def post(self, path: str, idem: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            async with self.s.post(f"{self.base}{path}", data=json.dumps(body),
                                   headers=headers(idem)) as r:
                got = await r.json()
                if r.status in (200, 201):
                    return dict(got)
                shed = (r.status == 503
                        and got.get("error", {}).get("code") == "gateway_overloaded")
                if not shed or time.monotonic() > deadline:
                    raise SystemExit(f"POST {path} answered {r.status}: {got}")
                self.shed += 1
                wait = min(float(r.headers.get("Retry-After", "1")), 1.0)
            await asyncio.sleep(wait)

    async def get(self, pid: str) -> dict[str, Any]:
        async with self.s.get(f"{self.base}/v1/payments/{pid}", headers=headers("")) as r:
            return dict(await r.json())

    async def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.s.post(f"{self.base}{path}", json=body, headers=ADMIN) as r:
            got = await r.json()
            if r.status != 200:
                raise SystemExit(f"POST {path} answered {r.status}: {got}")
            return dict(got)

    async def sim(self, path: str, body: dict[str, Any]) -> None:
        async with self.s.post(f"{self.control}{path}", json=body) as r:
            if r.status != 200:
                raise SystemExit(f"POST {path} {body} answered {r.status}: {await r.text()}")

    async def fee_of(self, pid: str) -> int:
        """The provider's fee for the payment, as its settlement line gave it (ledger)."""
        async with self.s.get(f"{self.base}/v1/payments/{pid}/ledger",
                              headers=headers("")) as r:
            entries = (await r.json())["data"]
        return sum(int(e["amount"]) for e in entries if e["entry_type"] == "fee")

    async def status_is(self, pid: str, check: Callable[[dict[str, Any]], bool], what: str
                        ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            doc = await self.get(pid)
            return doc if check(doc) else None
        return dict(await wait_until(probe, 30, f"{pid}: {what}"))


async def run_payment(c: Client, p: Planned) -> None:
    token = "tok_decline" if p.kind == "declined" else "tok_visa"
    body = {"amount": p.amount, "currency": p.currency, "reference": f"day-order-{p.n}",
            "capture": "manual" if p.kind == "authorized" else "automatic",
            "payment_method": {"type": "card", "provider_tokens": {p.provider: token}}}
    pay = await c.post("/v1/payments", f"day-pay-{p.n}", body)
    p.pid = pay["id"]
    want = {"captured": "captured", "authorized": "authorized", "declined": "declined"}[p.kind]
    await c.status_is(p.pid, lambda d: d["status"] == want, want)


async def refund(c: Client, p: Planned) -> None:
    amount = max(p.amount // 3, 10)
    if p.currency == "KWD":
        amount -= amount % 10
    await c.post(f"/v1/payments/{p.pid}/refunds", f"day-ref-{p.n}", {"amount": amount})
    p.refunded = amount
    await c.status_is(p.pid, lambda d: d["amount_refunded"] == amount, "refund settled")


async def dispute(c: Client, p: Planned) -> None:
    await c.sim(f"/_sim/{SIM[p.provider]}/disputes",
                {"reference": p.pid, "action": "open", "amount": p.amount})
    p.disputed = True
    await c.status_is(p.pid, lambda d: bool(d["disputes"]), "dispute recorded")


async def bounded(jobs: list[Awaitable[None]]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Awaitable[None]) -> None:
        async with sem:
            await job
    await asyncio.gather(*(one(j) for j in jobs))


def choose_faults(day: Day, rng: random.Random, clean: bool) -> None:
    for name in PROVIDERS:
        mine = [p for p in day.payments if p.provider == name and p.kind == "captured"]
        plain = [p for p in mine if not p.refunded and not p.disputed]
        refunded = [p for p in mine if p.refunded and not p.disputed]
        rng.shuffle(plain)
        rng.shuffle(refunded)
        chosen: dict[str, list[Planned]] = {}
        if not clean:
            per = FAULTS_PER_PROVIDER
            chosen["double_refund"] = refunded[:per["double_refund"]]
            kinds = ["unsettled_capture", "wrong_payout"]
            if PROVIDERS[name].get("fee_bps") is not None:
                kinds.append("fee_changed")  # Braintree reports no fee: nothing to change
            for kind in kinds:
                chosen[kind], plain = plain[:per[kind]], plain[per[kind]:]
        day.faults[name] = chosen


async def inject(c: Client, day: Day) -> dict[str, str]:
    """Inject the chosen faults. A fee change at a provider whose report has no fee
    (Braintree) is refused by its simulator (409 fees_not_reported): asked once on a
    captured payment, the answer is returned (provider -> error code) and nothing is set."""
    for name, kinds in day.faults.items():
        for kind, payments in kinds.items():
            for p in payments:
                await c.sim(f"/_sim/{SIM[name]}/settlement_faults",
                            {"kind": kind, "reference": p.pid})
    refused: dict[str, str] = {}
    for name in PROVIDERS:
        if PROVIDERS[name].get("fee_bps") is not None:
            continue
        p = next(p for p in day.payments if p.provider == name and p.kind == "captured")
        async with c.s.post(f"{c.control}/_sim/{SIM[name]}/settlement_faults",
                            json={"kind": "fee_changed", "reference": p.pid}) as r:
            answer = await r.json()
            refused[name] = f"{r.status} {answer.get('error', {}).get('code')}"
    return refused


def compare(day: Day, report: dict[str, Any], fees: dict[str, int]) -> dict[str, Any]:
    """Each injected fault beside its finding; what was found but not injected.

    A fault on a payment is found when the report has exactly one finding of its kind for
    that payment (each faulty payment here has one capture and at most one refund). A
    capture in the wrong payout is found when its day's payout of that currency is short
    by exactly the net (amount - ``fees[payment id]``) of the captures moved out of it;
    the lines naming the next day's payout (Adyen's and Braintree's reports carry it;
    Stripe lists a payout's members from the payout, so there the moved line has none) are
    the same amount. Anything else is "found but not injected": a finding without a
    payment, a payment with a finding not injected on it or found twice, any other payout
    mismatch."""
    details = [(b["provider"], b["currency"], d) for b in report["providers"]
               for d in b["details"]]
    found: Counter[tuple[str, str, str]] = Counter()  # (provider, kind, pid) -> findings
    payout_found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    unexpected: list[dict[str, Any]] = []
    for provider, currency, d in details:
        if d["kind"] == "payout_mismatch":
            payout_found[(provider, currency)].append(d)
        elif d.get("payment_id"):
            found[(provider, d["kind"], d["payment_id"])] += 1
        else:
            unexpected.append({"provider": provider, "currency": currency, **d})
    # what each fault kind shows as
    shows = {"unsettled_capture": "missing_at_provider", "double_refund": "missing_in_gateway",
             "fee_changed": "fee_drift"}
    rows: list[dict[str, Any]] = []
    expected: set[tuple[str, str, str]] = set()
    moved: dict[tuple[str, str], int] = defaultdict(int)
    for provider, kinds in day.faults.items():
        for p in kinds.get("wrong_payout", []):
            moved[(provider, p.currency)] += p.amount - fees[p.pid]
    for provider, kinds in day.faults.items():
        for kind, payments in kinds.items():
            for p in payments:
                if kind == "wrong_payout":
                    hit = any("payout" in d and int(d["amount"]) == moved[(provider, p.currency)]
                              for d in payout_found.get((provider, p.currency), []))
                    finding = "payout_mismatch"
                else:
                    finding = shows[kind]
                    expected.add((provider, finding, p.pid))
                    hit = found[(provider, finding, p.pid)] == 1
                rows.append({"provider": provider, "fault": kind, "payment_id": p.pid,
                             "currency": p.currency, "expected": finding, "found": hit})
    for (provider, kind, pid), n in sorted(found.items()):
        if (provider, kind, pid) not in expected or n != 1:
            unexpected.append({"provider": provider, "kind": kind, "payment_id": pid,
                               "findings": n})
    for (provider, currency), found_payouts in sorted(payout_found.items()):
        # explained: one payout short by the moved nets, and (where the lines name it)
        # one payout the report does not list, carrying them
        explained = {"short": False, "elsewhere": False}
        for d in found_payouts:
            slot = "short" if "payout" in d else "elsewhere"
            if int(d["amount"]) == moved.get((provider, currency)) and not explained[slot]:
                explained[slot] = True
            else:
                unexpected.append({"provider": provider, "currency": currency, **d})
    return {"faults": rows, "unexpected": unexpected}


def tally(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for b in report["providers"]:
        for kind in ("matched", "missing_at_provider", "missing_in_gateway", "amount_drift",
                     "fee_drift", "payout_mismatch"):
            t = out.setdefault(kind, {"count": 0, "sum": 0})
            t["count"] += b[kind]["count"]
            t["sum"] += b[kind]["sum"]
    return out


@contextlib.asynccontextmanager
async def gateway(config: Path) -> AsyncIterator[tuple[str, str]]:
    """The gateway on a free port, its sandbox simulators sending webhooks to it."""
    port = _free_port()
    app = create_app(load_config(config), public_url=f"http://127.0.0.1:{port}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}"
    finally:
        await runner.cleanup()


async def simulate(args: argparse.Namespace, store: str, directory: Path) -> dict[str, Any]:
    config = write_config(directory, store, PROVIDERS, admin_token=ADMIN_TOKEN)
    rng = random.Random(args.seed + 1)
    day = Day(plan(args.payments, args.seed))
    today = dt.datetime.now(dt.UTC).date().isoformat()
    started = time.monotonic()
    async with gateway(config) as (base, control), aiohttp.ClientSession() as session:
        c = Client(session, base, control)
        t0 = time.monotonic()
        await bounded([run_payment(c, p) for p in day.payments])
        day.timings["payments_s"] = time.monotonic() - t0
        captured = [p for p in day.payments if p.kind == "captured"]
        rng.shuffle(captured)
        share = max(len(captured) // 8, 3 * len(PROVIDERS))
        await bounded([refund(c, p) for p in captured[:share]])
        await bounded([dispute(c, p) for p in captured[share:share + max(len(captured) // 50,
                                                                         len(PROVIDERS))]])
        choose_faults(day, rng, args.clean)
        refused = await inject(c, day)
        t0 = time.monotonic()
        imports = {}
        for name in PROVIDERS:
            first = await c.admin("/admin/settlements/import", {"provider": name, "date": today})
            again = await c.admin("/admin/settlements/import", {"provider": name, "date": today})
            imports[name] = {"lines": first["lines"], "new_lines": first["new_lines"],
                             "new_ledger_entries": first["new_ledger_entries"],
                             "unknown_payments": first["unknown_payments"],
                             "second_import_new": again["new_lines"]
                             + again["new_ledger_entries"]}
        day.timings["import_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        report = await c.admin("/admin/settlements/reconcile", {"date": today})
        day.timings["reconcile_s"] = time.monotonic() - t0
        fees = {p.pid: await c.fee_of(p.pid) for kinds in day.faults.values()
                for p in kinds.get("wrong_payout", [])}
    # the report as finance reads it: the CLI, on the same store, after the gateway stopped
    cli = [sys.executable, "-m", "gateway", "settlements", "reconcile", "--config",
           str(config), "--date", today]
    table = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True,
                                    check=False)
    day.timings["total_s"] = time.monotonic() - started
    result = compare(day, report, fees)
    counts = Counter(p.kind for p in day.payments)
    ok = (all(r["found"] for r in result["faults"]) and not result["unexpected"]
          and all(i["second_import_new"] == 0 and i["unknown_payments"] == 0
                  for i in imports.values())
          and report["drift"] is bool(result["faults"])
          and all(v == "409 fees_not_reported" for v in refused.values())
          and table.returncode == (1 if result["faults"] else 0))
    return {"date": today, "store": store.split(":")[0], "payments": dict(counts),
            "refunded": sum(1 for p in day.payments if p.refunded),
            "disputed": sum(1 for p in day.payments if p.disputed),
            "imports": imports, "tally": tally(report), **result,
            "fee_changed_refused": refused, "shed_and_retried": c.shed,
            "timings_s": {k: round(v, 2) for k, v in day.timings.items()},
            "cli_exit": table.returncode, "table": table.stdout, "ok": ok}


def render(out: dict[str, Any]) -> str:
    lines = [f"simulated day {out['date']} on {out['store']}: payments {out['payments']}, "
             f"{out['refunded']} partly refunded, {out['disputed']} disputed",
             f"timings: {out['timings_s']}; requests shed by admission (503) and "
             f"retried with their key: {out['shed_and_retried']}",
             "imports (first; the second added nothing when second_import_new is 0):"]
    lines += [f"  {name}: {i}" for name, i in out["imports"].items()]
    lines += ["", "gateway settlements reconcile (exit "
              f"{out['cli_exit']}):", out["table"].rstrip(), "",
              f"{'provider':<16} {'fault injected':<18} {'payment':<28} {'cur':<4} "
              f"{'expected finding':<20} found"]
    for r in out["faults"]:
        lines.append(f"{r['provider']:<16} {r['fault']:<18} {r['payment_id']:<28} "
                     f"{r['currency']:<4} {r['expected']:<20} {'yes' if r['found'] else 'NO'}")
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in out["faults"]:
        per[(r["provider"], r["fault"])][0] += 1
        per[(r["provider"], r["fault"])][1] += bool(r["found"])
    if per:
        lines += ["", "injected / found per provider and kind:"]
        lines += [f"  {provider:<16} {kind:<18} {n} / {hit}"
                  for (provider, kind), (n, hit) in sorted(per.items())]
    lines += [f"  {name:<16} {'fee_changed':<18} refused by the simulator: {answer} "
              "(its report has no per-transaction fee)"
              for name, answer in out["fee_changed_refused"].items()]
    found = sum(1 for r in out["faults"] if r["found"])
    lines.append(f"faults injected: {len(out['faults'])}, found: {found}, "
                 f"found but not injected: {len(out['unexpected'])}")
    lines += [f"  not injected: {u}" for u in out["unexpected"]]
    lines.append("OK" if out["ok"] else "FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--payments", type=int, default=1200)
    ap.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--clean", action="store_true", help="inject no faults: expect no drift")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.payments < 60:
        ap.error("--payments must be at least 60 (enough refunds to inject every fault)")
    directory = tempdir()
    with contextlib.ExitStack() as stack:
        if args.store == "redis":
            store = stack.enter_context(private_redis())
        else:
            store = f"sqlite:///{directory / 'day.db'}"
        out = asyncio.run(simulate(args, store, directory))
    print(json.dumps(out, indent=1) if args.json else render(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
