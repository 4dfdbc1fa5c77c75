"""Overload at 2x capacity (#15): is the excess shed quickly, and do the admitted payments
stay fast and whole?

Simulators in a `gateway sandbox` process, the gateway in a `gateway serve` process. Per
store and round (``--repeat``): first the capacity of one process (closed loop,
``--clients`` clients, Stripe, without admission control), then an open-loop burst of
``--factor`` x that rate (new payments at fixed times whatever the answers) for
``--duration`` seconds, once per admission limit of ``--limits`` (``none``: raised out of
reach; ``default``: the gateway's defaults, the limit following the loop's lag;
``N``: a fixed ``max_in_flight`` and ``max_busy`` N; ``N/B``: fixed ``max_in_flight`` N,
``max_busy`` B; ``...@T``: the limit following the loop's lag, ``loop_lag_target_ms`` T,
between the default ``min_in_flight`` and N). Printed per run:
the offered rate, 201s per second, the share shed (503 ``gateway_overloaded`` with Retry-
After), p50 / p99 of the admitted (201) payments and of the shed answers, the p99 of this
process's own lateness in sending (``client late``: the load generator shares the box; its
lateness is inside every latency above), every other answer (other statuses, connection
errors), the mean provider authorization call as the gateway timed it (``prov``) and the
gateway's mean time serving a payment request over the admitted ones (``served``: its
shed answers are in that sum too, so a slight overstatement; ``served`` near ``ok p50``
says the latency is the gateway's, not the client's), the admission limit in force
sampled every 0.25 s (``lim`` min/median/max; ``--trace-limit`` prints the samples),
on Redis the connections the gateway's pool opened (``conns``: it keeps them, so
the count when idle is its peak), and, once the gateway is idle again, the payments left
``pending`` / ``processing`` / ``unknown`` (listed through ``GET /v1/payments?status=``)
and how many of a sample of the shed requests were stored (none should be: looked up by
reference).

Then, per store, the cost of a shed answer alone (``--shed-only``, on by default):
``max_in_flight`` 1 held by one payment the Stripe simulator answers only after the burst,
and the same burst rate: every other payment is shed, so the gateway does nothing else;
printed: shed p50 / p99 / max and the gateway's CPU-ms per shed answer (/proc/<pid>/stat).

    .venv/bin/python bench/overload.py [--stores sqlite,redis] [--factor 2]
        [--duration 10] [--limits none,default,64,8] [--clients 64] [--repeat 1]
        [--no-shed-only] [--trace-limit]
        [--pool-sizes default,64,256]  (store_options.pool_size per run)
        [--provider-latency-ms 0]  (the Stripe simulator answers this much later: a
                                    slow provider, where a low fixed limit caps throughput)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import headers, private_redis, tempdir
from bench.procs import (
    BODY,
    OPEN_ADMISSION,
    Gateway,
    closed_loop,
    gateway,
    median,
    open_loop,
    payment_call,
    pct,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session
from gateway.config import AdmissionSettings

UNFINISHED = ("pending", "processing", "unknown")


async def capacity(s: aiohttp.ClientSession, base: str, clients: int) -> float:
    run = await closed_loop(payment_call(s, base, f"cap-{tag()}"), clients, 5.0, 1.0)
    return run.count(201) / run.elapsed


async def left_unfinished(s: aiohttp.ClientSession, base: str) -> dict[str, int]:
    out = {}
    for status in UNFINISHED:
        n, after = 0, None
        while True:
            params = {"status": status, "limit": "100"}
            if after:
                params["starting_after"] = after
            async with s.get(f"{base}/v1/payments", params=params,
                             headers=headers("unused")) as r:
                page = await r.json()
            n += len(page["data"])
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        out[status] = n
    return out


async def stored(s: aiohttp.ClientSession, base: str, references: list[str]) -> int:
    n = 0
    for ref in references:
        async with s.get(f"{base}/v1/payments", params={"reference": ref},
                         headers=headers("unused")) as r:
            n += len((await r.json())["data"])
    return n


async def scrape(s: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The gateway's /metrics as {series with its labels: value}."""
    async with s.get(f"{base}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


async def admission_limit(s: aiohttp.ClientSession, base: str) -> int:
    """gateway_admission_limit from /metrics: the limit in force."""
    limit = (await scrape(s, base)).get("gateway_admission_limit")
    if limit is None:
        raise AssertionError("gateway_admission_limit not in /metrics")
    return int(limit)


def delta(before: dict[str, float], after: dict[str, float], name: str,
          label: str = "") -> float:
    """How much the series of ``name`` (those with ``label``, e.g. ``route="/x"``) grew
    between two scrapes, summed over their other labels (in any order: with --workers the
    multiprocess exposition sorts them)."""
    def total(m: dict[str, float]) -> float:
        return sum(v for k, v in m.items()
                   if k.startswith(name + "{") and label in k)
    return total(after) - total(before)


def provider_mean_ms(before: dict[str, float], after: dict[str, float]) -> float:
    """The mean provider authorization call between two scrapes, as the gateway timed it
    (gateway_provider_call_duration_seconds)."""
    name, op = "gateway_provider_call_duration_seconds", 'operation="authorize"'
    calls = delta(before, after, f"{name}_count", op)
    return delta(before, after, f"{name}_sum", op) / calls * 1000 if calls else float("nan")


async def sample_limit(s: aiohttp.ClientSession, base: str, into: list[int]) -> None:
    """Append gateway_admission_limit every 0.25 s until cancelled."""
    while True:
        into.append(await admission_limit(s, base))
        await asyncio.sleep(0.25)


async def redis_clients(url: str) -> int:
    """Clients connected to the (private) Redis now, this one included."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url)
    try:
        return int((await client.info("clients"))["connected_clients"])
    finally:
        await client.aclose()


async def one_run(s: aiohttp.ClientSession, base: str, rate: float, duration: float,
                  label: str) -> str:
    prefix = f"ovl-{tag()}"
    bodies = {}

    async def call(i: int) -> tuple[int, dict[str, Any] | None]:
        ref = f"{prefix}-{i}"
        body = json.dumps({"amount": 1000, "currency": "EUR", "capture": "manual",
                           "reference": ref,
                           "payment_method": {"type": "card", "token": "tok_visa"}})
        async with s.post(f"{base}/v1/payments", data=body, headers=headers(ref)) as r:
            data = await r.read()
            if r.status == 503:
                err = json.loads(data).get("error", {}).get("code")
                if err == "gateway_overloaded" and r.headers.get("Retry-After"):
                    bodies[i] = ref
                    return 1503, None  # shed, as admission control answers
            return r.status, None

    before = await scrape(s, base)
    run = await open_loop(call, rate, duration)
    after = await scrape(s, base)
    prov = provider_mean_ms(before, after)
    served = delta(before, after, "gateway_http_request_duration_seconds_sum",
                   'route="/v1/payments"')
    ok, shed = run.latencies(201), run.latencies(1503)
    late = [x.late for x in run.samples]
    others = Counter("error" if x.status == -1 else x.status for x in run.samples
                     if x.status not in (201, 1503))
    # wait until the gateway is idle (every request answered above); then count
    unfinished = await left_unfinished(s, base)
    shed_refs = list(bodies.values())
    sample = shed_refs[:: max(1, len(shed_refs) // 200)]  # up to ~200 lookups
    stored_shed = await stored(s, base, sample)
    other = ", ".join(f"{n}x{k}" for k, n in sorted(others.items(), key=str)) or "0"
    left = "/".join(str(unfinished[k]) for k in UNFINISHED)
    return (f"{label:30} {rate:7.0f} {len(ok) / run.elapsed:7.0f} "
            f"{len(shed) / max(1, len(run.samples)) * 100:6.1f}% "
            f"{median(ok) * 1000:8.1f} {pct(ok, 0.99) * 1000:8.1f} "
            f"{median(shed) * 1000:8.1f} {pct(shed, 0.99) * 1000:8.1f}  {other:>10}  {left:>8}"
            f"  {stored_shed:>4}/{len(sample):<4}  {pct(late, 0.99) * 1000:8.1f}"
            f"  prov {prov:5.1f} served {served / max(1, len(ok)) * 1000:5.1f}")


def admission_of(limit: str) -> dict[str, Any]:
    """The admission: block of one ``--limits`` entry (see the module docstring)."""
    if limit == "default":
        return {}
    if limit == "none":
        return OPEN_ADMISSION
    bounds, _, lag = limit.partition("@")
    in_flight, _, busy = bounds.partition("/")
    return {"max_in_flight": int(in_flight), "max_busy": int(busy or in_flight),
            "loop_lag_target_ms": float(lag or 0)}


SHED_ONLY_S = 5.0  # the shed-only burst; the held payment is answered 2 s after it


async def shed_only(s: aiohttp.ClientSession, gw: Gateway, control: str, rate: float,
                    provider_latency_ms: int, label: str) -> str:
    """The cost of shedding alone: one payment held at the simulator fills
    ``max_in_flight`` 1; every payment of the burst is shed."""
    async def stripe_total() -> int:
        async with s.get(f"{control}/_sim/stripe/requests") as r:
            return int((await r.json())["total"])

    async def latency(ms: int) -> None:
        async with s.post(f"{control}/_sim/stripe/faults",
                          data=json.dumps({"latency_ms": ms})) as r:
            assert r.status == 200, await r.text()

    await latency(int((SHED_ONLY_S + 2) * 1000))
    before = await stripe_total()
    async def hold() -> tuple[int, dict[str, Any] | None]:
        return await payment_call(s, gw.base, f"held-{tag()}")(0)

    held = asyncio.create_task(hold())
    try:
        for _ in range(200):  # until the held payment is at the simulator (10 s at most)
            if await stripe_total() > before:
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit("the held payment never reached the simulator")

        async def call(i: int) -> tuple[int, dict[str, Any] | None]:
            async with s.post(f"{gw.base}/v1/payments", data=BODY,
                              headers=headers(f"so-{tag()}-{i}")) as r:
                data = await r.read()
                shed = (r.status == 503 and r.headers.get("Retry-After") and
                        json.loads(data)["error"]["code"] == "gateway_overloaded")
                return (1503 if shed else r.status), None

        cpu0 = gw.cpu()
        run = await open_loop(call, rate, SHED_ONLY_S)
        cpu = gw.cpu() - cpu0
    finally:
        await latency(provider_latency_ms)
        held_status, _ = await held
    shed = run.latencies(1503)
    others = len(run.samples) - len(shed)
    return (f"{label:30} {rate:7.0f}/s for {SHED_ONLY_S:g} s: {len(shed)} shed, p50 "
            f"{median(shed) * 1000:.1f} ms, p99 {pct(shed, 0.99) * 1000:.1f} ms, max "
            f"{max(shed, default=float('nan')) * 1000:.1f} ms, gateway CPU "
            f"{cpu / max(1, len(shed)) * 1000:.2f} ms per shed answer, client late p99 "
            f"{pct([x.late for x in run.samples], 0.99) * 1000:.1f} ms; other answers "
            f"{others}; the held payment {held_status}")


async def main_async(ns: argparse.Namespace) -> None:
    tmp = tempdir()
    lines = []
    shed_lines: list[str] = []
    n = 0
    with sandbox(tmp / "sandbox.log") as ready, private_redis() as redis_url:
        urls = ready["base_urls"]
        if ns.provider_latency_ms:
            async with http_session() as s, s.post(
                    f"{ready['control_url'].rstrip('/')}/_sim/stripe/faults",
                    data=json.dumps({"latency_ms": ns.provider_latency_ms})) as r:
                assert r.status == 200, await r.text()
        for store in ns.stores.split(","):
            def store_url(d: Path, n: int, store: str = store) -> str:
                return (f"sqlite:///{d / 'gw.db'}" if store == "sqlite"
                        else redis_url.rsplit("/", 1)[0] + f"/{n % 16}")

            for k, limit in enumerate(x for _ in range(ns.repeat)
                                      for x in ns.limits.split(",")):
                if k % len(ns.limits.split(",")) == 0:
                    # the capacity before each round of the limits (the box is shared: it
                    # moves), without admission control (a shed answer is cheap: clients
                    # that are shed would loop on them and measure nothing)
                    n += 1
                    async with gateway(tmp / f"run{n}", store_url(tmp / f"run{n}", n),
                                       providers_at(urls, "stripe"),
                                       admission=admission_of("none")) as gw, \
                            http_session(limit=0) as s:
                        cap = await capacity(s, gw.base, ns.clients)
                for pool_size in ns.pool_sizes.split(","):
                    n += 1
                    d = tmp / f"run{n}"
                    url = store_url(d, n)
                    admission = admission_of(limit)
                    d_adm = AdmissionSettings()
                    in_flight = admission.get("max_in_flight", d_adm.max_in_flight)
                    busy = admission.get("max_busy", d_adm.max_busy or in_flight)
                    lag = admission.get("loop_lag_target_ms", d_adm.loop_lag_target_ms)
                    bounds = f"{in_flight}/{busy}" + (f"@{lag:g}" if lag else "")
                    extra: dict[str, Any] = {}
                    if pool_size != "default":  # store_options.pool_size (gateway.store.pool)
                        extra["store_options"] = {"pool_size": int(pool_size)}
                        if store != "sqlite":
                            extra["store_options"]["allow_volatile"] = True
                    async with gateway(d, url, providers_at(urls, "stripe"),
                                       admission=admission, **extra) as gw, \
                            http_session(limit=0) as s:
                        label = f"{store} limit={limit}" + (
                            f"({bounds})" if limit == "default" else "") + (
                            f" pool={pool_size}" if pool_size != "default" else "")
                        limits: list[int] = []
                        sampler = asyncio.create_task(sample_limit(s, gw.base, limits))
                        line = await one_run(s, gw.base, cap * ns.factor, ns.duration, label)
                        sampler.cancel()
                        # the limit in force during the burst, sampled every 0.25 s
                        line += (f"  lim {min(limits):3d}/{median(limits):3.0f}/"
                                 f"{max(limits):3d}" if limits else "  lim   -")
                        if ns.trace_limit:
                            print(f"{label} limit every 0.25 s: {limits}", file=sys.stderr)
                        if store != "sqlite":  # the pool keeps what it opened: its peak
                            line += f"  conns {await redis_clients(redis_url) - 1:4d}"
                    lines.append(f"{line}   cap {cap:.0f}/s")
                    print(lines[-1], flush=True)
            if ns.shed_only:
                n += 1
                d = tmp / f"run{n}"
                async with gateway(d, store_url(d, n), providers_at(urls, "stripe"),
                                   admission={"max_in_flight": 1}) as gw, \
                        http_session(limit=0) as s:
                    shed_lines.append(await shed_only(
                        s, gw, ready["control_url"].rstrip("/"), cap * ns.factor,
                        ns.provider_latency_ms, f"{store} shed only"))
                print(shed_lines[-1], flush=True)
    print(f"\nStripe payments at {ns.factor:g}x one process's measured capacity, open loop, "
          f"{ns.duration:g} s; provider latency +{ns.provider_latency_ms} ms")
    print(f"{'':30} {'offered':>7} {'201/s':>7} {'shed':>7} {'ok p50':>8} {'ok p99':>8} "
          f"{'shed p50':>8} {'shed p99':>8}  {'other':>10}  {'left p/p/u':>8}  shed stored"
          f"  client late p99")
    for line in lines:
        print(line)
    if shed_lines:
        print("\nshedding alone (max_in_flight 1, held), at the last burst's rate:")
        for line in shed_lines:
            print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--limits", default="none,default,64,8")
    p.add_argument("--trace-limit", action="store_true",
                   help="print the admission limit's samples of each run (stderr)")
    p.add_argument("--no-shed-only", dest="shed_only", action="store_false",
                   help="skip the shed-only run")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the --limits list this many times, alternated")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--provider-latency-ms", type=int, default=0)
    p.add_argument("--pool-sizes", default="default",
                   help="store_options.pool_size values to run each limit with")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
