"""Where the gateway's CPU goes on a Stripe authorization: py-spy samples a `gateway serve`
process under closed-loop load (simulators in a `gateway sandbox` process), only while a
thread holds the GIL (``--gil``: Python running, i.e. CPU, not waits: an fsync of the
SQLite executor thread or an idle loop are not counted), and the top functions are printed
by own time (samples in the function itself) and by total time (samples with the function
anywhere on the stack), as shares of those samples.

py-spy is a measuring tool, not a dependency: ``.venv/bin/pip install py-spy`` first (it
needs ptrace rights on the gateway process: root, or ``kernel.yama.ptrace_scope=0``).

    .venv/bin/python bench/profile_authorize.py [--store sqlite|redis] [--duration 15]
        [--clients 16] [--top 10] [--flame out.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import private_redis, tempdir
from bench.procs import (
    OPEN_ADMISSION,
    closed_loop,
    gateway,
    payment_call,
    providers_at,
    sandbox,
    tag,
)
from bench.procs import session as http_session


def _py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("py-spy is needed: .venv/bin/pip install py-spy")
    return exe


def _frame(raw: str) -> str:
    """``handler (gateway/api/payments.py:123)`` -> ``handler (gateway/api/payments.py)``."""
    name, _, where = raw.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/work/main/", 1)[-1]
    return f"{name} ({path})"


def summarise(raw: Path, top: int) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    out = [f"{samples} samples"]
    out.append(f"top {top} by own time:")
    out += [f"  {n / samples * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append(f"top {top} by total time (excluding the event loop's own frames):")
    loop_frames = ("run_forever", "_run_once", "_run (asyncio", "run (asyncio", "run_until",
                   "<module>", "main (", "_run_module", "run_app", "_serve", "serve (",
                   "cli_main", "_run_code", "run (runpy", "_bootstrap", "Thread.run", "_worker (")
    ranked = [(f, n) for f, n in total.most_common(top * 4)
              if not any(m in f for m in loop_frames)]
    out += [f"  {n / samples * 100:5.1f}%  {f}" for f, n in ranked[:top]]
    return "\n".join(out)


async def main_async(ns: argparse.Namespace) -> None:
    exe = _py_spy()
    tmp = tempdir()
    raw = tmp / "profile.txt"
    with sandbox(tmp / "sandbox.log") as ready, private_redis() as redis_url:
        store = f"sqlite:///{tmp / 'gw.db'}" if ns.store == "sqlite" else redis_url
        async with gateway(tmp / "gw", store, providers_at(ready["base_urls"], "stripe"),
                           admission=OPEN_ADMISSION) as gw, \
                http_session() as s:
            call = payment_call(s, gw.base, f"prof-{tag()}")
            load = asyncio.create_task(closed_loop(call, ns.clients, ns.duration + 3, 1.0))
            await asyncio.sleep(1.5)
            spy = await asyncio.create_subprocess_exec(
                exe, "record", "-p", str(gw.pid), "-d", str(int(ns.duration)), "-r", "200",
                "-f", "raw", "-o", str(raw), "--nonblocking", "--gil",
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, err = await spy.communicate()
            run = await load
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-1500:]}")
            if ns.flame:
                flame = await asyncio.create_subprocess_exec(
                    exe, "record", "-p", str(gw.pid), "-d", "3", "-o", ns.flame,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await flame.wait()
    print(f"Stripe authorizations, {ns.store}, {ns.clients} clients: "
          f"{run.count(201) / run.elapsed:.0f} payments/s while sampled")
    print(summarise(raw, ns.top))
    if ns.raw:
        shutil.copyfile(raw, ns.raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--flame", default=None, help="also write a flame graph SVG here")
    p.add_argument("--raw", default=None, help="also keep py-spy's raw stacks here")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
