"""Store outages with real processes (issue #11 item 3; SPEC 12.1, 5.1, 9): a real
`gateway serve` and a real `gateway sandbox`, the store failing under them.

* Redis (AOF, ``appendfsync always``) is killed with SIGKILL while ~20 merchants create
  payments at three providers, and restarted on the same port and directory.
* The SQLite file can no longer grow (``RLIMIT_FSIZE`` of the gateway process, lowered and
  lifted from outside with ``prlimit``; Python ignores SIGXFSZ, so SQLite's writes fail
  with EFBIG, which it reports as ``SQLITE_IOERR_WRITE``; a full tmpfs gives
  ``SQLITE_FULL``; both are a failed write the gateway must answer with 503).
* The SQLite directory is read-only when the gateway starts (a read-only bind mount in a
  private mount namespace, or file modes when not root).

Every answer is 201/200, or 503 with Retry-After, or 409 "in progress" with Retry-After,
or a lost connection; never a 500. /readyz is 503 while the store cannot take a write and
200 after. Afterwards the merchants retry every key that got no final answer, the
gateway's own reconciliation loop runs, and for every key ever sent: the payment is
recorded and resolved, its status and amount agree with the simulator, it holds at most
one charge across all providers, and no charge exists for a payment the gateway did not
record (a payment charged while the store failed is never lost). Provider references are
gateway payment ids derived from (merchant, Idempotency-Key), so looking every key's id
up at every simulator finds every charge the gateway ever made.

Turning the file read-only UNDER a running gateway is not possible without privileges
or a block device: Linux refuses to remount read-only a mount with a file open for
writing (EBUSY), and the gateway holds its database open. That case stays covered
in-process by tests/integration/test_store_outage.py (PRAGMA query_only gives the same
SQLITE_READONLY).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.model import derived_id
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import (
    START_TIMEOUT_S,
    RedisProcess,
    child_env,
    free_port,
    http_ok,
    kill_9,
    sandbox_process,
    start_gateway,
    stop,
)

pytestmark = pytest.mark.slow

MERCHANT = "acme"
DEADLINE_S = 3.0  # request_deadline_s = reconciliation.min_age_s
TIMEOUT_S = 2.0  # provider timeout
LATENCY_MS = 300  # at every simulator: a kill lands while calls are at the provider
# Braintree sales are sent once (never retried); an empty search made later than this
# after the send is honest proof that nothing was created.
LOOKUP_PROOF_S = TIMEOUT_S + LATENCY_MS / 1000 + 1.0
RETRY = {"attempts": 2, "backoff_s": 0.05, "backoff_max_s": 0.1, "jitter_s": 0.02}
RECONCILIATION = {"enabled": True, "interval_s": 0.5, "min_age_s": DEADLINE_S,
                  "lease_s": 10, "batch_size": 500}
MERCHANT_GIVE_UP_S = 45.0
CONVERGE_S = 40.0

SIM_OF = {"stripe_s": "stripe", "bt_s": "braintree", "adyen_s": "adyen"}
UNRESOLVED = {"pending", "unknown", "processing", "capture_pending", "void_pending",
              "requires_action"}
TRANSIENT_409 = {"idempotency_request_in_progress", "operation_in_progress"}
#: the simulator's status for a gateway status (manual capture throughout)
SIM_STATUS = {
    "authorized": {"stripe": {"requires_capture"}, "braintree": {"authorized"},
                   "adyen": {"Authorised"}},
    "captured": {"stripe": {"succeeded"},
                 "braintree": {"submitted_for_settlement", "settling", "settled"}},
}
#: simulator statuses that hold no money (released, or never approved)
NO_MONEY = {
    "stripe": {"canceled", "requires_payment_method"},
    "braintree": {"voided", "processor_declined", "gateway_rejected", "failed",
                  "authorization_expired"},
    "adyen": {"Cancelled", "Refused", "Error"},
}


def providers_config(ports: dict[str, int], names: tuple[str, ...]) -> dict[str, Any]:
    common = {"currencies": ["EUR"], "timeout_s": TIMEOUT_S, "connect_timeout_s": 0.5}
    every = {
        "stripe_s": {"type": "stripe", "base_url": f"http://127.0.0.1:{ports['stripe']}",
                     "api_key": "sk_test_outage", **common},
        "bt_s": {"type": "braintree", "base_url": f"http://127.0.0.1:{ports['braintree']}",
                 "merchant_id": "sandbox_merchant", "public_key": "sandbox_public_key",
                 "private_key": "sandbox_private_key",
                 "merchant_account_ids": {"EUR": "sandbox_eur"},
                 "lookup_proof_after_s": LOOKUP_PROOF_S, **common},
        "adyen_s": {"type": "adyen",
                    "base_url": f"http://127.0.0.1:{ports['adyen']}/checkout/v71",
                    "api_key": "sandbox_adyen_key",
                    "hmac_key": "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
                    "merchant_account": "OutageECOM", **common},
    }
    return {n: every[n] for n in names}


def gateway_config(tmp_path: Path, store_url: str, ports: dict[str, int],
                   names: tuple[str, ...], **overrides: Any) -> Path:
    weights = [100 // len(names)] * len(names)
    weights[0] += 100 - sum(weights)
    split = ", ".join(f"{n}: {w}" for n, w in zip(names, weights, strict=True))
    (tmp_path / "routing.yaml").write_text(
        f"version: 1\nrules:\n  - name: default\n    split: {{{split}}}\n")
    return write_config(tmp_path, store_url, providers=providers_config(ports, names),
                        routing_file="routing.yaml", request_deadline_s=DEADLINE_S,
                        retry=RETRY, reconciliation=RECONCILIATION, **overrides)


# ---------------------------------------------------------------------------- merchants


@dataclass
class Call:
    """One merchant request (one Idempotency-Key) and every answer it got."""

    key: str
    path: str
    body: dict[str, Any]
    answers: list[str] = field(default_factory=list)  # "201", "503", "409", "conn", ...
    final: dict[str, Any] | None = None
    first_answer_at: float | None = None  # time.time() of the first answer

    @property
    def payment_id(self) -> str:
        return derived_id("pay_", MERCHANT, self.key)


@dataclass
class Merchants:
    base: str
    session: aiohttp.ClientSession
    calls: list[Call] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # answers the contract does not allow

    async def send(self, call: Call) -> bool:
        """One try of ``call``; True once it got its final answer."""
        try:
            async with self.session.post(self.base + call.path, data=json.dumps(call.body),
                                         headers=headers(idem=call.key)) as r:
                status, text = r.status, await r.text()
                retry_after = r.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            call.answers.append("conn")
            call.first_answer_at = call.first_answer_at or time.time()
            return False
        call.first_answer_at = call.first_answer_at or time.time()
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        # shed by admission control (nothing done) is told apart from the store's 503
        call.answers.append("503 shed" if code == "gateway_overloaded" else str(status))
        if status in (200, 201):
            call.final = body
            return True
        if status == 503 and retry_after and retry_after.isdigit():
            return False
        if status == 409 and code in TRANSIENT_409 and retry_after:
            return False
        self.bad.append(f"{call.key} {call.path}: {status} {code} "
                        f"(Retry-After {retry_after!r}): {text[:300]}")
        return False

    async def until_final(self, call: Call, give_up: float) -> None:
        """Retry with the same key until the answer is final (as a merchant does)."""
        while not await self.send(call):
            assert time.monotonic() < give_up, (
                f"{call.key}: no final answer by the deadline; answers {call.answers}")
            await asyncio.sleep(0.25)

    async def retry(self, todo: list[Call]) -> None:
        give_up = time.monotonic() + MERCHANT_GIVE_UP_S
        sem = asyncio.Semaphore(20)

        async def one(c: Call) -> None:
            async with sem:
                await self.until_final(c, give_up)

        await asyncio.gather(*[one(c) for c in todo])

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path, headers=headers()) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def readyz(self) -> int | None:
        try:
            async with self.session.get(self.base + "/readyz") as r:
                return r.status
        except (aiohttp.ClientError, TimeoutError):
            return None


def new_create(merchants: Merchants, tag: str, n: int, provider: str | None = None) -> Call:
    pm: dict[str, Any] = {"type": "card", "token": "tok_visa"}
    if provider is not None:
        pm["provider_tokens"] = {provider: "tok_visa"}
    call = Call(f"so-{tag}-{n}", "/v1/payments",
                payment_body(amount=1000 + n, reference=f"order-{tag}-{n}", capture="manual",
                             payment_method=pm))
    merchants.calls.append(call)
    return call


# ---------------------------------------------------------------------------- verdict


async def converge(m: Merchants, ids: list[str], maybe_missing: set[str] | None = None
                   ) -> None:
    """Wait (with a deadline) until no payment is left unresolved; ``maybe_missing``: ids
    that may not have been recorded (404 is fine for them)."""
    deadline = time.monotonic() + CONVERGE_S
    left: dict[str, str] = {}
    while time.monotonic() < deadline:
        left = {}
        for pid in ids:
            status, doc = await m.get(f"/v1/payments/{pid}")
            if status == 404 and pid in (maybe_missing or set()):
                continue
            if status != 200 or doc["status"] in UNRESOLVED:
                left[pid] = doc["status"] if status == 200 else f"HTTP {status}"
        if not left:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(left)} payments still unresolved after {CONVERGE_S:g} s: "
                         f"{dict(list(left.items())[:10])}")


@dataclass
class Recovery:
    early: int  # keys retried as soon as the store was back
    late: int  # keys retried only after reconciliation had resolved every payment
    stuck: list[str]  # charged at a provider, recorded unresolved: the result's write failed
    # (or already resolved by reconciliation when the store came back)
    left_to_reconciliation: list[str]  # of those, the ones no merchant retried before


async def recover(m: Merchants, sim: SimControl) -> Recovery:
    """After the store is back, every key without a final answer is retried: half of them
    at once; the others only after the gateway's own reconciliation loop has resolved
    every recorded payment (merchants that come back late, or never: a payment charged
    while the store failed must not wait for a retry)."""
    unfinished = [c for c in m.calls if c.final is None]
    stuck = [c for c in unfinished if c.path == "/v1/payments" and await _stuck(m, sim, c)]
    rest = [c for c in unfinished if c not in stuck]
    late = stuck[0::2] + rest[1::2]
    early = [c for c in unfinished if c not in late]
    await m.retry(early)
    assert not m.bad, f"answers the contract does not allow: {m.bad[:10]}"
    creates = [c.payment_id for c in m.calls if c.path == "/v1/payments"]
    await converge(m, creates, maybe_missing={c.payment_id for c in late})
    await m.retry(late)
    assert not m.bad, f"answers the contract does not allow: {m.bad[:10]}"
    await converge(m, creates)
    return Recovery(len(early), len(late), [c.payment_id for c in stuck],
                    [c.payment_id for c in stuck[0::2]])


async def _stuck(m: Merchants, sim: SimControl, call: Call) -> bool:
    if not any([await sim.charges(s, call.payment_id) for s in SIM_OF.values()]):
        return False
    status, doc = await m.get(f"/v1/payments/{call.payment_id}")
    if status != 200:
        return False
    # still unresolved, or already resolved by reconciliation (it may be quick)
    return doc["status"] in UNRESOLVED or await way_out(m, call.payment_id) == "reconciliation"


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    resolved_by: Counter[str] = field(default_factory=Counter)  # source of the way out
    way_out: dict[str, str] = field(default_factory=dict)  # payment id -> that source
    charged_while_store_failed: int = 0  # by a first request that got no final answer
    charges: int = 0
    approved: int = 0


async def verify(m: Merchants, sim: SimControl, calls: list[Call],
                 captured: set[str] | None = None) -> Verdict:
    """Gateway against simulators, for every create key ever sent."""
    v = Verdict()
    captured = captured or set()
    for call in calls:
        pid = call.payment_id
        held = {name: await sim.charges(s, pid) for name, s in SIM_OF.items()}
        charges = [(name, c) for name, cs in held.items() for c in cs]
        v.charges += len(charges)
        status, doc = await m.get(f"/v1/payments/{pid}")
        if status != 200:
            if charges:
                v.problems.append(f"{pid} ({call.key}): charged {charges} but the gateway "
                                  f"answers {status}: a charge was lost")
            else:
                v.problems.append(f"{pid} ({call.key}): not recorded ({status})")
            continue
        v.statuses[doc["status"]] += 1
        if len(charges) > 1:
            v.problems.append(f"{pid}: {len(charges)} charges: {charges}")
        if doc["amount"] != call.body["amount"]:
            v.problems.append(f"{pid}: amount {doc['amount']} != asked {call.body['amount']}")
        if doc["status"] in SIM_STATUS:
            v.approved += 1
            expect = "captured" if pid in captured else "authorized"
            if doc["status"] != expect:
                v.problems.append(f"{pid}: {doc['status']}, expected {expect}")
            at = [c for name, c in charges if name == doc["provider"]]
            if len(at) != 1:
                v.problems.append(f"{pid}: {doc['status']} at {doc['provider']} but it holds "
                                  f"{at} (all: {charges})")
                continue
            c, sim_name = at[0], SIM_OF[doc["provider"]]
            if c["status"] not in SIM_STATUS[doc["status"]][sim_name]:
                v.problems.append(f"{pid}: gateway {doc['status']}, {sim_name} {c['status']}")
            if c["amount"] != doc["amount"] or c["id"] != doc["provider_reference"]:
                v.problems.append(f"{pid}: gateway {doc['amount']} {doc['provider_reference']}"
                                  f", {sim_name} {c['amount']} {c['id']}")
            if doc["status"] == "captured" and c["amount_captured"] != doc["amount_captured"]:
                v.problems.append(f"{pid}: captured {doc['amount_captured']} vs "
                                  f"{c['amount_captured']} at {sim_name}")
        elif doc["status"] == "failed":  # only on proof that nothing was created
            money = [(n, c) for n, c in charges if c["status"] not in NO_MONEY[SIM_OF[n]]]
            if money:
                v.problems.append(f"{pid}: failed ({doc['failure']}) but held: {money}")
        else:  # declined (tok_visa is never declined) or unresolved
            v.problems.append(f"{pid}: {doc['status']} ({doc['failure']}); held: {charges}")
        first = call.answers[0] if call.answers else ""
        if first in ("200", "201"):
            continue
        v.way_out[pid] = await way_out(m, pid)
        v.resolved_by[v.way_out[pid]] += 1
        sent = [_unix(a["started_at"]) for a in doc["attempts"]]
        if charges and sent and call.first_answer_at and min(sent) <= call.first_answer_at:
            v.charged_while_store_failed += 1  # the provider was called by the first try
    return v


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def way_out(m: Merchants, pid: str) -> str:
    """What resolved a payment whose first request got no final answer: the source of
    the status change that left pending/unknown (provider_response: a later request's own
    provider call; status_lookup: a merchant retry that looked the payment up;
    reconciliation: the background loop)."""
    status, events = await m.get(f"/v1/payments/{pid}/events")
    assert status == 200, events
    for e in events["data"]:
        if (e.get("type") == "status_changed" and e.get("from_status") in UNRESOLVED
                and e.get("to_status") not in UNRESOLVED):
            return str(e.get("source"))
    return "none"


# ---------------------------------------------------------------------------- 1. Redis


async def test_redis_killed_and_restarted_under_load_loses_nothing(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis",
                         ("--appendonly", "yes", "--appendfsync", "always", "--save", ""))
    names = ("stripe_s", "bt_s", "adyen_s")
    redis.start()
    try:
        await redis.wait_up()
        with sandbox_process(tmp_path / "sandbox.log") as ready:
            ports = ready["ports"]
            # AOF: accepted without allow_volatile (durability is checked at start)
            config = gateway_config(tmp_path, redis.url, ports, names,
                                    store_options={"allow_volatile": False})
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(limit=100)) as session:
                sim = SimControl(f"http://127.0.0.1:{ports['control']}", session)
                for s in SIM_OF.values():
                    await sim.faults(s, latency_ms=LATENCY_MS)
                proc, base = await start_gateway(config, tmp_path / "gateway.log", session)
                try:
                    await _redis_outage(Merchants(base, session), sim, redis)
                finally:
                    stop(proc)
    finally:
        redis.stop()


async def _redis_outage(m: Merchants, sim: SimControl, redis: RedisProcess) -> None:
    stop_load = asyncio.Event()
    # before the kill; "down": from the kill until /readyz is 200 again; after that
    phase = {"now": "before"}
    by_phase: dict[str, Counter[str]] = {p: Counter() for p in ("before", "down", "after")}

    async def merchant(i: int) -> None:
        n = 0
        while not stop_load.is_set():
            n += 1
            call = new_create(m, f"m{i}", n)
            started_in = phase["now"]
            done = await m.send(call)
            by_phase[started_in][call.answers[-1]] += 1
            # Every other authorization is captured at once (not Adyen's: it confirms
            # captures only by webhook, and the sandbox delivers none here).
            if done and n % 2 and call.final and call.final["provider"] != "adyen_s":
                cap = Call(f"{call.key}-capture", f"/v1/payments/{call.final['id']}/capture",
                           {})
                m.calls.append(cap)
                started_in = phase["now"]
                done = await m.send(cap)
                by_phase[started_in][f"capture {cap.answers[-1]}"] += 1
            if not done:
                await asyncio.sleep(0.2)  # pacing: a merchant does not hammer a 503

    def created() -> int:
        return sum(1 for c in m.calls if c.final is not None and c.path == "/v1/payments")

    load = [asyncio.create_task(merchant(i)) for i in range(20)]
    try:
        async def some_created() -> bool:
            return created() >= 40

        await wait_for(some_created, timeout=30)
        assert await m.readyz() == 200
        redis.kill()
        phase["now"] = "down"
        killed_at = time.monotonic()

        async def not_ready() -> bool:
            return await m.readyz() == 503

        await wait_for(not_ready, timeout=5)
        await asyncio.sleep(1.5)  # the outage lasts this long, merchants keep sending
        async with m.session.get(m.base + "/healthz") as healthz:
            assert healthz.status == 200  # alive: it is not the process that is broken
        redis.start()
        await redis.wait_up()
        down_s = time.monotonic() - killed_at

        async def ready() -> bool:
            return await m.readyz() == 200

        await wait_for(ready, timeout=15)
        phase["now"] = "after"
        resumed = created()

        async def more_created() -> bool:
            return created() >= resumed + 40

        await wait_for(more_created, timeout=30)
    finally:
        stop_load.set()
        await asyncio.gather(*load, return_exceptions=True)
    for task in load:
        assert task.exception() is None, task.exception()
    creates = [c for c in m.calls if c.path == "/v1/payments"]
    captures = [c for c in m.calls if c.path != "/v1/payments"]
    first_answers = Counter(c.answers[0] for c in creates)
    capture_answers = Counter(c.answers[0] for c in captures)
    assert not m.bad, f"answers the contract does not allow: {m.bad[:10]}"
    assert by_phase["down"]["503"] > 0, by_phase
    # Once /readyz is 200 again every request started after is answered (no connection
    # pooled before the restart is handed out dead).
    # (or shed by admission control: nothing done, the merchant retries)
    assert set(by_phase["after"]) <= {"201", "capture 200", "503 shed",
                                      "capture 503 shed"}, by_phase

    rec = await recover(m, sim)
    for cap in captures:
        assert cap.final is not None and cap.final["status"] == "captured", cap
    v = await verify(m, sim, creates, captured={c.final["id"] for c in captures if c.final})
    print(f"\nredis outage: {len(creates)} payments, {len(captures)} captures, Redis down "
          f"{down_s:.1f} s; first answers {dict(first_answers)}, to captures "
          f"{dict(capture_answers)}; by phase {({p: dict(c) for p, c in by_phase.items()})}; "
          f"keys retried: {rec.early} at once, {rec.late} after reconciliation; charged "
          f"while the store failed: {v.charged_while_store_failed} ({len(rec.stuck)} recorded "
          f"pending after recovery, {len(rec.left_to_reconciliation)} left to "
          f"reconciliation); resolved by {dict(v.resolved_by)}; final {dict(v.statuses)}; "
          f"{v.charges} charges at the simulators")
    assert not v.problems, "\n".join(v.problems[:20])
    # The kill landed while calls were at the providers: charged, then the write failed.
    assert v.charged_while_store_failed > 0, first_answers
    # Charged, and recorded unresolved because the write of the result failed: the ones
    # no merchant retried were resolved by the reconciliation loop.
    assert rec.left_to_reconciliation, rec
    assert {v.way_out[p] for p in rec.left_to_reconciliation} == {"reconciliation"}, v.way_out
    assert v.charges == v.approved


# ---------------------------------------------------------------------------- 2. disk full


@asynccontextmanager
async def piped_gateway(config: Path, log: Path, session: aiohttp.ClientSession
                        ) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """`gateway serve` whose output goes through a pipe (a file would be subject to the
    process's own RLIMIT_FSIZE), copied to ``log`` by a thread. Stopped by PID."""
    for _ in range(3):
        port = free_port()
        proc, copier = _spawn_piped(config, port, log)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if await http_ok(session, f"{base}/healthz"):
                break
            await asyncio.sleep(0.05)
        else:
            stop(proc)
            copier.join(5)
            continue
        try:
            yield proc, base
        finally:
            stop(proc)
            copier.join(5)
        return
    raise AssertionError(f"gateway did not start; log: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _spawn_piped(config: Path, port: int, log: Path
                 ) -> tuple[subprocess.Popen[bytes], threading.Thread]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=child_env())
    copier = threading.Thread(target=_copy, args=(proc, log), daemon=True)
    copier.start()
    return proc, copier


def _copy(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.stdout is not None
    with log.open("ab") as out:
        for line in proc.stdout:
            out.write(line)
            out.flush()
    proc.stdout.close()


def file_size_limit(pid: int, limit: int | None) -> None:
    """Set (from outside) the largest file the process may write; None lifts it."""
    soft = resource.RLIM_INFINITY if limit is None else limit
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


def db_size(db: Path) -> int:
    return max((p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()), default=0)


async def test_sqlite_disk_full_is_503_and_nothing_charged_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "data" / "gateway.db"
    names = ("stripe_s", "bt_s")
    with sandbox_process(tmp_path / "sandbox.log") as ready:
        ports = ready["ports"]
        config = gateway_config(tmp_path, f"sqlite:///{db}", ports, names)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            sim = SimControl(f"http://127.0.0.1:{ports['control']}", session)
            async with piped_gateway(config, tmp_path / "gateway.log", session) as (proc, base):
                await _disk_full(Merchants(base, session), sim, proc, db)


async def _disk_full(m: Merchants, sim: SimControl, proc: subprocess.Popen[bytes],
                     db: Path) -> None:
    # Before: a few payments, one of them (at Stripe) to capture later.
    before = [new_create(m, "before", n, provider="stripe_s" if n == 0 else None)
              for n in range(4)]
    for call in before:
        assert await m.send(call), call.answers
        assert call.final is not None and call.final["status"] == "authorized", call.final
    to_capture = before[0].payment_id
    for s in ("stripe", "braintree"):
        await sim.faults(s, latency_ms=LATENCY_MS)

    # The disk fills up while 8 merchants keep creating payments (staggered, so that
    # some are always at a provider): 1 MB more, then no file of the gateway can grow.
    # Calls at the providers when it happens are charged, and then their result cannot
    # be written.
    limit = db_size(db) + 1024 * 1024
    file_size_limit(proc.pid, limit)
    full = asyncio.Event()
    fill: list[Call] = []

    async def merchant(i: int) -> None:
        await asyncio.sleep(i * LATENCY_MS / 1000 / 8)
        n = 0
        while not full.is_set() and n < 40:
            n += 1
            call = new_create(m, f"fill{i}", n)
            fill.append(call)
            if not await m.send(call):
                full.set()

    await asyncio.wait_for(asyncio.gather(*[merchant(i) for i in range(8)]), 60)
    assert full.is_set(), f"{len(fill)} payments written, the store never failed"
    assert not m.bad, f"answers the contract does not allow: {m.bad[:10]}"
    assert db_size(db) <= limit

    # While full: /readyz is 503, writes are 503 with Retry-After, reads answer. (The
    # failed transaction left part of a WAL frame's worth of room below the limit, as a
    # real full disk leaves room inside blocks already allocated: a one-page write such
    # as the readiness probe's may still fit, until that room is used up.)
    async def not_ready() -> bool:
        return await m.readyz() == 503

    await wait_for(not_ready, timeout=10)
    status, ready = await m.get("/readyz")
    assert status == 503 and ready["checks"]["store"] is False, ready
    during = new_create(m, "during", 0)
    assert not await m.send(during) and during.answers == ["503"], (during.answers, m.bad)
    capture = Call("so-capture-during", f"/v1/payments/{to_capture}/capture", {})
    m.calls.append(capture)
    assert not await m.send(capture) and capture.answers == ["503"], (capture.answers, m.bad)
    assert not m.bad, f"answers the contract does not allow: {m.bad[:10]}"
    status, doc = await m.get(f"/v1/payments/{to_capture}")
    assert status == 200 and doc["status"] == "authorized", doc
    status, listed = await m.get(f"/v1/events?payment_id={to_capture}")
    assert status == 200 and listed["object"] == "list", listed
    status, events = await m.get(f"/v1/payments/{to_capture}/events")
    assert status == 200 and events["data"], events
    unanswered = [c for c in fill if c.final is None]
    recorded = 0
    for call in unanswered:  # the write-ahead record is readable; never "failed"
        status, doc = await m.get(f"/v1/payments/{call.payment_id}")
        if status == 200:
            recorded += 1
            # unresolved, or already authorized when the status change was written and
            # a later write of the same request (its idempotency record) hit the limit
            assert doc["status"] in UNRESOLVED | {"authorized"}, doc
        else:
            assert status == 404, doc

    # Space again: ready, the same keys complete, the charged payments are resolved.
    file_size_limit(proc.pid, None)

    async def ready_again() -> bool:
        return await m.readyz() == 200

    await wait_for(ready_again, timeout=10)
    rec = await recover(m, sim)
    assert capture.final is not None and capture.final["status"] == "captured", capture.final
    creates = [c for c in m.calls if c.path == "/v1/payments"]
    v = await verify(m, sim, creates, captured={to_capture})
    print(f"\nsqlite disk full: {len(creates)} payments, {len(fill)} sent while filling "
          f"({len(unanswered)} without a final answer, {recorded} of them already recorded "
          f"pending); first answers {dict(Counter(c.answers[0] for c in creates))}; "
          f"keys retried: {rec.early} at once, {rec.late} after reconciliation; charged "
          f"while the store failed: "
          f"{v.charged_while_store_failed} ({len(rec.stuck)} recorded pending after recovery, "
          f"{len(rec.left_to_reconciliation)} left to reconciliation); resolved by "
          f"{dict(v.resolved_by)}; final "
          f"{dict(v.statuses)}")
    assert not v.problems, "\n".join(v.problems[:20])
    assert v.charged_while_store_failed > 0, "no call was at a provider when the disk filled"
    # Charged, and recorded unresolved because the write of the result failed: the ones
    # no merchant retried were resolved by the reconciliation loop.
    assert rec.left_to_reconciliation, rec
    assert {v.way_out[p] for p in rec.left_to_reconciliation} == {"reconciliation"}, v.way_out
    assert v.charges == v.approved


# ---------------------------------------------------------------------------- 3. read-only


@contextmanager
def read_only(directory: Path) -> Iterator[list[str]]:
    """Yields a command prefix under which ``directory`` is read-only: a read-only bind
    mount in a private mount namespace (root: file modes do not stop it), else file modes."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [directory, *directory.iterdir()]}
        for p in modes:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield []
        finally:
            for p, mode in modes.items():
                p.chmod(stat.S_IMODE(mode))
        return
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is required to make a directory read-only as root"
    mount = (f"mount --bind {directory} {directory} && "
             f"mount -o remount,bind,ro {directory} && exec \"$@\"")
    for ns in (["--mount"], ["--user", "--map-root-user", "--mount"]):
        probe = subprocess.run([unshare, *ns, "sh", "-c", mount, "sh", "true"],
                               capture_output=True)
        if probe.returncode == 0:
            yield [unshare, *ns, "sh", "-c", mount, "sh"]
            return
    raise AssertionError(f"cannot make {directory} read-only: {probe.stderr.decode()}")


def serve_read_only(data: Path, config: Path) -> subprocess.CompletedProcess[bytes]:
    """`gateway serve` with ``data`` read-only; returns when it exits."""
    with read_only(data) as prefix:
        probe = subprocess.run([*prefix, "sh", "-c", f"touch {data}/probe"],
                               capture_output=True)
        assert probe.returncode != 0, "the directory is not read-only"
        return subprocess.run(
            [*prefix, sys.executable, "-m", "gateway", "serve", "--config", str(config),
             "--port", str(free_port())],
            capture_output=True, env=child_env(), timeout=START_TIMEOUT_S)


async def test_sqlite_on_a_read_only_directory_refuses_to_start_then_recovers(
    tmp_path: Path
) -> None:
    data = tmp_path / "data"
    db = data / "gateway.db"
    log = tmp_path / "gateway.log"
    with sandbox_process(tmp_path / "sandbox.log") as ready:
        config = gateway_config(tmp_path, f"sqlite:///{db}", ready["ports"], ("stripe_s",))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            proc, base = await start_gateway(config, log, session)
            m = Merchants(base, session)
            try:
                calls = [new_create(m, "ro", n) for n in range(3)]
                for call in calls:
                    assert await m.send(call), call.answers
            finally:
                kill_9(proc)  # no clean shutdown: the WAL still holds the payments

            run = serve_read_only(data, config)
            err = run.stderr.decode(errors="replace")
            lines = [ln for ln in err.splitlines() if ln.startswith("gateway:")]
            assert run.returncode == 1, (run.returncode, err[-2000:])
            assert "Traceback" not in err, err[-2000:]
            assert len(lines) == 1 and str(db) in lines[0] and "readonly" in lines[0], err

            proc, base = await start_gateway(config, log, session)  # writable again
            m.base = base
            try:
                assert await m.readyz() == 200
                for call in calls:  # nothing written before was lost
                    status, doc = await m.get(f"/v1/payments/{call.payment_id}")
                    assert status == 200 and doc["status"] == "authorized", doc
                    replay = Call(call.key, call.path, call.body)
                    assert await m.send(replay)
                    assert replay.final is not None and replay.final["id"] == call.payment_id
            finally:
                stop(proc)
