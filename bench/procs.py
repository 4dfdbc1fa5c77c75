"""Real processes for the performance benches (issue #15): the simulators in a `gateway
sandbox` process, the gateway in a `gateway serve` process (so its CPU can be read from
/proc/<pid>/stat, apart from the simulators and the load generator), and open- and
closed-loop load generators. Every process is started and stopped by PID here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import _free_port, headers, write_config

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps({"amount": 1000, "currency": "EUR", "capture": "manual",
                   "payment_method": {"type": "card", "token": "tok_visa"}})
#: the simulators' sandbox credentials (any sk_test_ key; see the declarations)
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"


def _env() -> dict[str, str]:
    return {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def tag() -> str:
    """A fresh tag for the Idempotency-Keys and references of one run: letters and short
    digit groups only (a long digit run may pass the Luhn check: rejected as a card)."""
    return uuid.uuid4().hex[:12].translate(str.maketrans("0123456789", "ghijklmnop"))


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def sandbox(log: Path) -> Iterator[dict[str, Any]]:
    """`gateway sandbox` on OS-chosen ports; yields its ready line (ports, base URLs)."""
    args = [PYTHON, "-m", "gateway", "sandbox", "--host", "127.0.0.1", "--control-port", "0",
            "--stripe-port", "0", "--braintree-port", "0", "--adyen-port", "0"]
    with log.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, env=_env(), cwd=ROOT)
    ready: dict[str, Any] = {}

    def read_ready() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{") and '"sandbox_listening"' in line:
                ready.update(json.loads(line))
                break

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    reader.join(30)
    try:
        if not ready:
            raise SystemExit(f"gateway sandbox did not start: {log.read_text()[-2000:]}")
        ready["pid"] = proc.pid
        yield ready
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def providers_at(urls: dict[str, str], kind: str) -> dict[str, Any]:
    """One real-shaped provider of ``kind`` whose base URL is the sandbox's simulator."""
    if kind == "stripe":
        return {"stripe_main": {"type": "stripe", "api_key": "sk_test_bench",
                                "base_url": urls["stripe"], "currencies": ["EUR"],
                                "timeout_s": 10}}
    if kind == "braintree":
        return {"bt_main": {"type": "braintree", "merchant_id": "bench",
                            "public_key": "bench_public", "private_key": "bench_private",
                            "base_url": urls["braintree"], "currencies": ["EUR"],
                            "merchant_account_ids": {"EUR": "bench_eur"}, "timeout_s": 10}}
    if kind == "adyen":
        return {"adyen_main": {"type": "adyen", "api_key": "bench_adyen_key",
                               "merchant_account": "BenchECOM", "hmac_key": ADYEN_HMAC,
                               "base_url": urls["adyen"] + "/v71", "currencies": ["EUR"],
                               "timeout_s": 10}}
    raise ValueError(kind)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live children (the workers of a supervisor)."""
    total = 0.0
    pids = [pid, *children(pid)]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


@dataclass
class Gateway:
    base: str
    proc: subprocess.Popen[bytes]
    config: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


def _spawn(directory: Path, store: str, providers: dict[str, Any], workers: int,
           extra: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    extra.setdefault("server", {"max_connections": 4000, "backlog": 1024})
    config = write_config(directory, store, providers, **extra)
    port = _free_port()
    log = directory / "gateway.log"
    env = _env()
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory / "metrics")
        (directory / "metrics").mkdir(exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "gateway", "--log-level", "WARNING", "serve", "--config",
             str(config), "--port", str(port), "--workers", str(workers)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    return proc, f"http://127.0.0.1:{port}", config, log


#: admission: for closed-loop runs that measure capacity: raised out of reach. A closed-loop
#: client that is shed (503) sends its next payment at once instead of after Retry-After,
#: so with the default bounds such a run would measure the shedding, not the capacity
#: (the limit that follows the loop's lag is off too).
OPEN_ADMISSION: dict[str, float] = {"max_in_flight": 100_000, "max_busy": 100_000,
                                    "loop_lag_target_ms": 0}


@contextlib.asynccontextmanager
async def gateway(directory: Path, store: str, providers: dict[str, Any], workers: int = 1,
                  **extra: Any) -> AsyncIterator[Gateway]:
    """`gateway serve` on a free port with this store and these providers (``extra``:
    more gateway.yaml keys)."""
    proc, base, config, log = _spawn(directory, store, providers, workers, extra)
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gateway did not start: {log.read_text()[-3000:]}")
                try:
                    async with s.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        if workers > 1:
            await _wait_workers(proc.pid, workers)
        yield Gateway(base, proc, config)
    finally:
        stop(proc)


async def _wait_workers(pid: int, workers: int) -> None:
    for _ in range(600):  # 30 s
        if len(children(pid)) >= workers:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the workers' own start-up


# ------------------------------------------------------------------------ load generators


@dataclass
class Sample:
    start: float
    latency: float
    status: int
    body: dict[str, Any] | None = None
    late: float = 0.0  # open loop: how late this process started the request (its own lag)


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    elapsed: float = 0.0

    def latencies(self, status: int | None = None) -> list[float]:
        return [s.latency for s in self.samples if status is None or s.status == status]

    def count(self, status: int) -> int:
        return sum(1 for s in self.samples if s.status == status)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


Call = Callable[[int], Awaitable[tuple[int, dict[str, Any] | None]]]


async def open_loop(call: Call, rate: float, duration: float) -> Run:
    """Requests started at fixed times ``i / rate`` whatever the answers (latency counted
    from the scheduled time, so a slow server cannot slow the arrivals)."""
    run = Run()
    total = int(rate * duration)
    t0 = time.monotonic() + 0.05
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, at: float) -> None:
        late = time.monotonic() - at
        try:
            status, body = await call(i)
        except (aiohttp.ClientError, TimeoutError, OSError):
            status, body = -1, None
        run.samples.append(Sample(at - t0, time.monotonic() - at, status, body, late))

    for i in range(total):
        at = t0 + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    run.elapsed = time.monotonic() - t0
    return run


async def closed_loop(call: Call, clients: int, duration: float, warmup: float = 1.0) -> Run:
    """``clients`` loops, each sending its next request when the last one answered; only
    requests started after ``warmup`` and finished before the end are counted."""
    run = Run()
    counter = iter(range(10**9))
    t0 = time.monotonic()
    start, end = t0 + warmup, t0 + warmup + duration

    async def client() -> None:
        while time.monotonic() < end:
            i = next(counter)
            began = time.monotonic()
            try:
                status, body = await call(i)
            except (aiohttp.ClientError, TimeoutError, OSError):
                status, body = -1, None
            done = time.monotonic()
            if began >= start and done <= end:
                run.samples.append(Sample(began - start, done - began, status, body))

    await asyncio.gather(*[client() for _ in range(clients)])
    run.elapsed = duration
    return run


def payment_call(session: aiohttp.ClientSession, base: str, prefix: str,
                 keep_body: bool = False) -> Call:
    async def call(i: int) -> tuple[int, dict[str, Any] | None]:
        async with session.post(f"{base}/v1/payments", data=BODY,
                                headers=headers(f"{prefix}-{i}")) as r:
            data = await r.read()
            body = json.loads(data) if keep_body and data else None
            if keep_body and body is not None:
                body["_retry_after"] = r.headers.get("Retry-After")
            return r.status, body
    return call


def session(limit: int = 2000) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=60))
