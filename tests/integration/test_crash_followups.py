"""Crash safety of follow-ups with real processes (issue #9): kill -9 a gateway while a batch
of concurrent captures (full and partial), voids, refunds and capture-vs-void races is in
flight at slow simulated providers (Stripe, Braintree); restart it; retry every request with
its own Idempotency-Key until it gets a definite answer; run one `gateway reconcile` pass.

Then, for every payment: the gateway and the provider agree on status, captured and
refunded amounts; the provider holds exactly one authorization; nothing was captured or
refunded twice; every key answers definitively (a 409 "in progress" only while a lease of
a live request can exist, never afterwards). Runs on SQLite (one gateway) and on Redis
(two replicas sharing the store; one of them is killed).

The requests of every other payment that was in flight at the kill are retried only after
the reconciliation pass, so that the pass finds stale write-ahead captures, voids and
refunds to finish (and their retries must then return the real outcome by key).

Adyen is left out: it confirms modifications only by webhook, and a `gateway sandbox`
posts them to one URL fixed when it starts (``--webhook-url``): with two replicas only
the one behind that URL receives any (the simulators retry for 60 s, so a restart of that
one loses nothing), and the outcome would depend on which replica it is, not on the
gateway. Adyen's webhook crash paths are in tests/integration/test_notifications_crash.py and
tests/unit/gateway/api/test_webhooks_api.py."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import child_env, restart_gateway, sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow

REQUEST_DEADLINE_S = 3.0
PROVIDER_TIMEOUT_S = 2.0
#: How long a follow-up operation's lease lasts (gateway.orchestrator.Orchestrator._live_s:
#: the request deadline, a last try started just before it, and the lookup after it).
OP_LEASE_S = REQUEST_DEADLINE_S + 2 * PROVIDER_TIMEOUT_S + 1.0
#: Slack for the clock of a lease check vs ours, and for the retries' own short claims.
GRACE_S = 1.5
LATENCY_MS = 1000
STAGGER_S = 0.02  # launch spacing inside the batch: some answered, some in flight, some unsent
MIN_AGE_S = REQUEST_DEADLINE_S
RETRY_INTERVAL_S = 0.2
TRANSIENT_409 = frozenset({"operation_in_progress", "idempotency_request_in_progress"})

PROVIDERS = {"stripe_a": "stripe", "bt_b": "braintree"}
FOLLOWUP_OPS = {
    "stripe": ("capture_payment_intent", "cancel_payment_intent", "create_refund"),
    "braintree": ("submit_for_settlement", "void", "refund"),
}
BT_CAPTURED = {"submitted_for_settlement", "settling", "settled", "settlement_pending",
               "settlement_confirmed"}
#: gateway status -> provider statuses that mean the same thing
STATUS_MAP = {
    "stripe": {"authorized": {"requires_capture"}, "captured": {"succeeded"},
               "partially_refunded": {"succeeded"}, "refunded": {"succeeded"},
               "voided": {"canceled"}},
    "braintree": {"authorized": {"authorized"}, "captured": BT_CAPTURED,
                  "partially_refunded": BT_CAPTURED, "refunded": BT_CAPTURED,
                  "voided": {"voided"}},
}
UNSETTLED = {"pending", "unknown", "processing", "capture_pending", "void_pending"}
ROUTING = "version: 1\nrules:\n  - name: default\n    providers: [stripe_a, bt_b]\n"

# Per provider: (group, count). Amounts differ per payment; partial captures take 600.
GROUPS = (("capture", 5), ("void", 5), ("refund", 5), ("contend", 3))
AMOUNT = 1000
PARTIAL_CAPTURE = 600
REFUNDS = (300, 400)


@dataclass
class Req:
    key: str
    payment: str
    provider: str
    kind: str  # capture | void | refund
    body: dict[str, Any]
    replica: int
    first: str = ""  # answered | dropped (in flight at the kill) | refused (never reached)
    first_status: int | None = None
    status: int | None = None  # final (definite) answer
    answer: dict[str, Any] = field(default_factory=dict)
    tries: int = 0
    late_409: list[tuple[float, str]] = field(default_factory=list)  # (s after kill, code)
    last_409: float | None = None

    @property
    def path(self) -> str:
        suffix = {"capture": "capture", "void": "void", "refund": "refunds"}[self.kind]
        return f"/v1/payments/{self.payment}/{suffix}"

    @property
    def code(self) -> str | None:
        return (self.answer.get("error") or {}).get("code")


@dataclass
class Pay:
    id: str
    provider: str
    group: str
    amount: int
    capture_amount: int | None = None  # capture group: requested amount (None: full)
    reqs: list[Req] = field(default_factory=list)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[dict[str, int]]:
    with sandbox_process(tmp_path / "sandbox.log", ("stripe", "braintree")) as ready:
        yield ready["ports"]


def _config(tmp_path: Path, store_url: str, ports: dict[str, int]) -> Path:
    (tmp_path / "routing.yaml").write_text(ROUTING)
    return write_config(
        tmp_path, store_url, routing_file="routing.yaml",
        request_deadline_s=REQUEST_DEADLINE_S,
        reconciliation={"enabled": False, "min_age_s": MIN_AGE_S},
        providers={
            "stripe_a": {"type": "stripe", "api_key": "sk_test_followups",
                         "base_url": f"http://127.0.0.1:{ports['stripe']}",
                         "currencies": ["EUR"], "timeout_s": PROVIDER_TIMEOUT_S},
            "bt_b": {"type": "braintree", "base_url": f"http://127.0.0.1:{ports['braintree']}",
                     "merchant_id": "m", "public_key": "pub", "private_key": "priv",
                     "merchant_account_ids": {"EUR": "m_eur"},
                     "currencies": ["EUR"], "timeout_s": PROVIDER_TIMEOUT_S},
        })


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str
                ) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=json.dumps(body), headers=headers(idem=key)) as r:
        return r.status, await r.json()


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, headers=headers()) as r:
        assert r.status == 200, f"GET {url}: {r.status} {await r.text()}"
        return await r.json()


async def _followups_received(sim: SimControl) -> int:
    total = 0
    for sim_name, ops in FOLLOWUP_OPS.items():
        by_op = (await sim.requests(sim_name)).get("by_operation", {})
        total += sum(int(by_op.get(op, 0)) for op in ops)
    return total


async def _setup_payments(session: aiohttp.ClientSession, base: str) -> list[Pay]:
    """~36 manual-capture authorizations (half Stripe, half Braintree); the refund group is
    captured in full before the batch."""
    pays: list[Pay] = []
    n = 0
    for provider in PROVIDERS:
        for group, count in GROUPS:
            for j in range(count):
                n += 1
                amount = AMOUNT + n
                body = payment_body(
                    amount=amount, reference=f"fu-{n}",
                    payment_method={"type": "card", "token": "tok_visa",
                                    "provider_tokens": {provider: "tok_visa"}})
                status, pay = await _post(session, f"{base}/v1/payments", body, f"fu-auth-{n}")
                assert status == 201 and pay["status"] == "authorized", pay
                assert pay["provider"] == provider, pay
                p = Pay(pay["id"], provider, group, amount)
                if group == "capture":
                    p.capture_amount = PARTIAL_CAPTURE if j % 2 else None
                pays.append(p)
    for p in pays:
        if p.group == "refund":
            status, pay = await _post(session, f"{base}/v1/payments/{p.id}/capture", {},
                                      f"fu-precap-{p.id}")
            assert status == 200 and pay["status"] == "captured", pay
    return pays


def _plan(pays: list[Pay], replicas: int) -> list[Req]:
    reqs: list[Req] = []
    for p in pays:
        def add(kind: str, body: dict[str, Any], tag: str, p: Pay = p) -> None:
            r = Req(f"fu-{tag}-{p.id}", p.id, p.provider, kind, body,
                    replica=(len(reqs) % replicas))
            p.reqs.append(r)
            reqs.append(r)

        if p.group == "capture":
            add("capture", {} if p.capture_amount is None else {"amount": p.capture_amount},
                "cap")
        elif p.group == "void":
            add("void", {}, "void")
        elif p.group == "refund":
            for k, amt in enumerate(REFUNDS):
                add("refund", {"amount": amt, "reason": "requested_by_customer"}, f"ref{k}")
        else:  # contend: a full capture and a void race on one authorization
            add("capture", {}, "ccap")
            add("void", {}, "cvoid")
    random.Random(9).shuffle(reqs)
    return reqs


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _run(tmp_path: Path, store_url: str, sandbox: dict[str, int], n_replicas: int,
               label: str) -> None:
    config = _config(tmp_path, store_url, sandbox)
    procs: list[subprocess.Popen[bytes]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        sim = SimControl(f"http://127.0.0.1:{sandbox['control']}", session)
        try:
            bases = []
            for i in range(n_replicas):
                proc, base = await start_gateway(config, tmp_path / f"gateway-{i}.log", session)
                procs.append(proc)
                bases.append(base)
            pays = await _setup_payments(session, bases[0])
            by_id = {p.id: p for p in pays}
            reqs = _plan(pays, n_replicas)

            # ---- the batch, at slow providers; kill replica 0 once enough are in flight
            for sim_name in FOLLOWUP_OPS:
                await sim.faults(sim_name, latency_ms=LATENCY_MS)
            baseline = await _followups_received(sim)

            async def first_try(idx: int, r: Req) -> None:
                await asyncio.sleep(idx * STAGGER_S)  # load shape only, not a synchronisation
                try:
                    r.status, r.answer = await _post(session, bases[r.replica] + r.path,
                                                     r.body, r.key)
                    r.first, r.first_status = "answered", r.status
                except aiohttp.ClientConnectorError:
                    r.first = "refused"
                except (aiohttp.ClientError, TimeoutError):
                    r.first = "dropped"

            batch = [asyncio.create_task(first_try(i, r)) for i, r in enumerate(reqs)]
            threshold = len(reqs) // 2

            async def enough_in_flight() -> bool:
                return await _followups_received(sim) - baseline >= threshold

            await wait_for(enough_in_flight, timeout=15, interval=0.02)
            victim = procs[0]
            os.kill(victim.pid, signal.SIGKILL)
            kill_at, kill_wall = time.monotonic(), time.time()
            victim.wait(timeout=10)
            received_at_kill = await _followups_received(sim) - baseline
            for sim_name in FOLLOWUP_OPS:
                await sim.faults(sim_name, latency_ms=0)
            await asyncio.gather(*batch)
            procs[0] = await restart_gateway(victim, bases[0], config,
                                             tmp_path / "gateway-0.log", session)

            # ---- retry every request without a definite answer, each with its own key.
            # The requests of every other payment that had one in flight at the kill are
            # held back until after the reconciliation pass, so that the pass has stale
            # write-ahead follow-ups to finish, and their retries then must return the
            # real outcome by key.
            def definite(r: Req) -> bool:
                if r.status is None or r.status >= 500:
                    return False
                return not (r.status == 409 and r.code in TRANSIENT_409)

            in_flight_pays = sorted({r.payment for r in reqs if r.first == "dropped"})
            held_pays = set(in_flight_pays[::2])
            retry_window_s = OP_LEASE_S + 12.0

            async def retry(r: Req, deadline: float) -> None:
                k = 0
                while not definite(r) and time.monotonic() < deadline:
                    base = bases[(r.replica + k) % n_replicas]
                    k += 1
                    r.tries += 1
                    try:
                        r.status, r.answer = await _post(session, base + r.path, r.body, r.key)
                    except (aiohttp.ClientError, TimeoutError):
                        r.status, r.answer = None, {}
                    if r.status == 409 and r.code in TRANSIENT_409:
                        since = time.monotonic() - kill_at
                        r.last_409 = since
                        # A same-key claim lapses after the request deadline; another
                        # request's operation lease after OP_LEASE_S (capture/void races).
                        bound = (OP_LEASE_S if r.code == "operation_in_progress"
                                 else REQUEST_DEADLINE_S) + GRACE_S
                        if since > bound:
                            r.late_409.append((round(since, 2), r.code or ""))
                    if not definite(r):
                        await asyncio.sleep(RETRY_INTERVAL_S)

            await asyncio.gather(*(retry(r, kill_at + retry_window_s) for r in reqs
                                   if r.payment not in held_pays))
            retried_done = time.monotonic() - kill_at

            async def payment(pid: str) -> dict[str, Any]:
                return await _get(session, f"{bases[-1]}/v1/payments/{pid}")

            def settled(doc: dict[str, Any]) -> bool:
                return doc["status"] not in UNSETTLED and all(
                    rf["status"] in ("succeeded", "failed") for rf in doc["refunds"])

            before_rec = {p.id: await payment(p.id) for p in pays}
            settled_by_retry = {pid for pid in in_flight_pays
                                if pid not in held_pays and settled(before_rec[pid])}

            # ---- one reconciliation pass, once every payment is past min_age_s and no
            # lease taken before the kill can be live any more
            newest = max(_ts(d["updated_at"]) for d in before_rec.values())
            due = max(newest + MIN_AGE_S, kill_wall + OP_LEASE_S) + 0.3

            async def all_due() -> bool:
                return time.time() > due

            await wait_for(all_due, timeout=OP_LEASE_S + MIN_AGE_S + 10, interval=0.1)
            rec = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "gateway", "reconcile", "--config",
                                 str(config)],
                capture_output=True, text=True, timeout=60, env=child_env())
            assert rec.returncode == 0, rec.stdout + rec.stderr
            report = rec.stdout.strip()
            m = re.search(r"(\d+) examined, (\d+) corrected, (\d+) still unresolved", report)
            assert m, report
            rec_examined, rec_corrected, rec_unresolved = map(int, m.groups())
            live = re.search(r"(\d+) still in flight", report)
            rec_skipped_live = int(live.group(1)) if live else 0
            corrected_ids = set(re.findall(r"^\s*corrected (pay_\S+)", report, re.M))
            after_rec = {pid: await payment(pid) for pid in held_pays}
            settled_by_rec = {pid for pid in held_pays if settled(after_rec[pid])}

            # the held-back requests now: the leases are long gone, so no 409 "in
            # progress" at all (one request at a time per payment: nothing else is live)
            async def retry_payment(pid: str) -> None:
                for r in by_id[pid].reqs:
                    await retry(r, time.monotonic() + 10.0)

            await asyncio.gather(*(retry_payment(pid) for pid in held_pays))

            # ---- compare the gateway with the providers, payment by payment
            problems: list[str] = []
            rec_audited: set[str] = set()
            disagreeing: set[str] = set()  # gateway and provider differ, or not as asked
            unaudited: dict[str, str] = {}
            for p in pays:
                doc = await payment(p.id)
                events = (await _get(session,
                                     f"{bases[-1]}/v1/payments/{p.id}/events"))["data"]
                if any(e.get("source") == "reconciliation" for e in events):
                    rec_audited.add(p.id)
                sim_name = PROVIDERS[p.provider]
                charges = await sim.charges(sim_name, p.id)
                other = [await sim.charges(s, p.id) for s in FOLLOWUP_OPS if s != sim_name]
                issues = _check_payment(p, doc, charges, other)
                if issues:
                    disagreeing.add(p.id)
                if issues:
                    problems.append(_describe(p, doc, charges, events, issues))
                if p.id in corrected_ids and p.id not in rec_audited:
                    # SPEC 9: every correction is recorded in the audit trail; the pass
                    # changed this payment, so its trail must say reconciliation did it
                    unaudited[p.id] = _describe(p, doc, charges, events, [
                        "corrected by the reconciliation pass, but no event of its audit "
                        "trail has source 'reconciliation'"])

            # ---- every key answers definitively, now and for ever (replayed)
            forever = [r for r in reqs if not definite(r)]
            for r in forever:
                problems.append(f"key {r.key} ({r.kind} {r.payment}) never got a definite "
                                f"answer (retried for {retry_window_s:.0f}s after the kill, "
                                f"held-back ones 10s after reconciliation): "
                                f"last {r.status} {r.code} after {r.tries} tries")
            late = [r for r in reqs if r.late_409]
            for r in late:
                problems.append(f"key {r.key} ({r.kind} {r.payment}) answered 409 after its "
                                f"lease could be live: {r.late_409[:5]}")
            for r in reqs:
                if not definite(r):
                    continue
                try:
                    status, again = await _post(session, bases[-1] + r.path, r.body, r.key)
                except aiohttp.ClientError as exc:
                    problems.append(f"key {r.key}: replay failed: {exc!r}")
                    continue
                code = (again.get("error") or {}).get("code")
                if status != r.status or code != r.code:
                    problems.append(f"key {r.key} ({r.kind} {r.payment}): replay after "
                                    f"reconciliation answered {status} {code}, the retry had "
                                    f"{r.status} {r.code}")

            dropped = sum(r.first == "dropped" for r in reqs)
            refused = sum(r.first == "refused" for r in reqs)
            if rec_skipped_live:
                problems.append(f"the reconciliation pass skipped {rec_skipped_live} "
                                f"payment(s) as still in flight {time.time() - kill_wall:.1f}s "
                                f"after the kill (every lease should have lapsed)")
            print(f"\ncrash-followups[{label}]: payments={len(pays)} requests={len(reqs)} "
                  f"replicas={n_replicas} followups_received_by_providers_at_kill="
                  f"{received_at_kill} in_flight_at_kill={dropped} requests "
                  f"({len(in_flight_pays)} payments) not_sent={refused} "
                  f"answered_first_try={sum(r.first == 'answered' for r in reqs)} "
                  f"retried_keys={sum(r.tries > 0 for r in reqs)} "
                  f"retries={sum(r.tries for r in reqs)} "
                  f"retries_done={retried_done:.1f}s_after_kill "
                  f"resumed_by_retry={len(settled_by_retry)}/"
                  f"{len(in_flight_pays) - len(held_pays)} "
                  f"resumed_by_reconciliation={len(settled_by_rec)}/{len(held_pays)} "
                  f"reconcile(examined={rec_examined} corrected={rec_corrected} "
                  f"unresolved={rec_unresolved} skipped_live={rec_skipped_live} "
                  f"audited_as_reconciliation={len(corrected_ids & rec_audited)}/"
                  f"{len(corrected_ids)}) "
                  f"disagreements={len(disagreeing)} unaudited_corrections={len(unaudited)} "
                  f"keys_409_forever={len(forever)} "
                  f"late_409_keys={len(late)}")
            assert not problems, (f"{len(problems)} problem(s) after kill -9 [{label}]:\n"
                                  + "\n".join(problems) + f"\nreconcile report:\n{report}")
            assert not unaudited, (
                f"{len(unaudited)} payment(s) changed by `gateway reconcile` without a "
                f"'reconciliation' entry in their audit trail [{label}]:\n"
                + "\n".join(unaudited.values()) + f"\nreconcile report:\n{report}")
        finally:
            for proc in procs:
                stop(proc)


def _describe(p: Pay, doc: dict[str, Any], charges: list[dict[str, Any]],
              events: list[dict[str, Any]], issues: list[str]) -> str:
    refunds = [(r["id"], r["amount"], r["status"]) for r in doc["refunds"]]
    reqs = [(r.key, r.first, r.first_status, r.status, r.code, r.tries, r.last_409)
            for r in p.reqs]
    trail = [(e.get("type"), e.get("source"), e.get("from_status"), e.get("to_status"),
              e.get("detail") or e.get("error_code") or e.get("reason")) for e in events]
    return (f"{p.id} ({p.provider}, {p.group}): {'; '.join(issues)}\n"
            f"    gateway: status={doc['status']} captured={doc['amount_captured']} "
            f"refunded={doc['amount_refunded']} refunds={refunds}\n"
            f"    sim {PROVIDERS[p.provider]}: {charges}\n"
            f"    requests (key, first try, first status, final status, code, retries, "
            f"last 409 s after kill): "
            f"{reqs}\n"
            f"    events: {trail}")


def _check_payment(p: Pay, doc: dict[str, Any], charges: list[dict[str, Any]],
                   other: list[list[dict[str, Any]]]) -> list[str]:
    issues: list[str] = []
    if any(other):
        issues.append(f"charged at another provider too: {other}")
    if len(charges) != 1:
        issues.append(f"{len(charges)} authorizations at the provider (expected 1)")
        if not charges:
            return issues
    c = charges[0]
    sim_name = PROVIDERS[p.provider]
    status = doc["status"]
    if status in UNSETTLED:
        issues.append(f"still {status} after retries and reconciliation")
    if c["status"] not in STATUS_MAP[sim_name].get(status, set()):
        issues.append(f"status disagrees: gateway {status}, provider {c['status']}")
    if doc["amount_captured"] != c["amount_captured"]:
        issues.append(f"captured disagrees: gateway {doc['amount_captured']}, provider "
                      f"{c['amount_captured']}")
    succeeded = sum(r["amount"] for r in doc["refunds"] if r["status"] == "succeeded")
    if c["amount_refunded"] != succeeded or doc["amount_refunded"] != succeeded:
        issues.append(f"refunded disagrees: provider {c['amount_refunded']}, gateway "
                      f"{doc['amount_refunded']}, gateway's succeeded refunds {succeeded}")
    open_refunds = [r for r in doc["refunds"] if r["status"] not in ("succeeded", "failed")]
    if open_refunds:
        issues.append(f"refunds still open: {open_refunds}")

    # what the merchant asked for, answered definitively and done exactly once
    answers = {(r.kind, r.status, r.code) for r in p.reqs}
    if p.group == "capture":
        want = p.capture_amount if p.capture_amount is not None else p.amount
        if c["amount_captured"] > want:
            issues.append(f"provider captured {c['amount_captured']} > requested {want}")
        if status != "captured" or doc["amount_captured"] != want:
            issues.append(f"expected captured {want}")
        if answers != {("capture", 200, None)}:
            issues.append(f"capture answered {answers}")
    elif p.group == "void":
        if status != "voided" or c["amount_captured"] != 0:
            issues.append("expected voided with nothing captured")
        if answers != {("void", 200, None)}:
            issues.append(f"void answered {answers}")
    elif p.group == "refund":
        if c["amount_captured"] > p.amount:
            issues.append(f"provider captured {c['amount_captured']} > {p.amount}")
        if c["amount_refunded"] > sum(REFUNDS):
            issues.append(f"provider refunded {c['amount_refunded']} > requested "
                          f"{sum(REFUNDS)} (double refund)")
        if status != "partially_refunded" or doc["amount_refunded"] != sum(REFUNDS):
            issues.append(f"expected partially_refunded {sum(REFUNDS)}")
        if len(doc["refunds"]) != len(REFUNDS):
            issues.append(f"{len(doc['refunds'])} refunds recorded (expected {len(REFUNDS)})")
        if answers != {("refund", 201, None)}:
            issues.append(f"refunds answered {answers}")
    else:  # contend: exactly one of capture / void won; the other is a definite 409
        by_kind = {r.kind: r for r in p.reqs}
        cap, void = by_kind["capture"], by_kind["void"]
        if c["amount_captured"] > p.amount:
            issues.append(f"provider captured {c['amount_captured']} > {p.amount}")
        if cap.status == 200 and void.status == 409 and void.code == "invalid_state":
            if status != "captured" or doc["amount_captured"] != p.amount:
                issues.append("the capture won but the payment is not captured in full")
        elif void.status == 200 and cap.status == 409 and cap.code == "invalid_state":
            if status != "voided":
                issues.append("the void won but the payment is not voided")
        else:
            issues.append(f"capture/void race answered capture {cap.status} {cap.code}, "
                          f"void {void.status} {void.code} (expected one 200, one 409 "
                          "invalid_state)")
    return issues


async def test_kill_9_during_concurrent_followups_then_retry_and_reconcile(
    store_url: str, tmp_path: Path, sandbox: dict[str, int]
) -> None:
    """SQLite: one gateway, killed. Redis: two replicas on one store, one of them killed."""
    replicas = 2 if store_url.startswith("redis") else 1
    label = "redis-2-replicas" if replicas == 2 else "sqlite"
    await _run(tmp_path, store_url, sandbox, replicas, label)
