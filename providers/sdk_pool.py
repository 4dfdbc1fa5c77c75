"""The bounded thread pool a synchronous SDK (braintree, Adyen) runs in, never the loop.

An adapter either gets an executor from outside (never shut down here) or owns one,
created on first use and shut down by :meth:`SdkPool.close`.

Its size is the provider option ``sdk_threads`` (gateway.yaml, per Braintree / Adyen
provider; :data:`DEFAULT_THREADS` when absent): each call holds a thread for the
provider's whole answer time, so the pool caps that provider's calls in flight at
``sdk_threads`` -- by Little's law a process reaches at most ``sdk_threads / latency``
calls per second (8 threads at a 300 ms provider: ~27/s), whatever admission control
lets in. Measured (bench/saturation.py --sdk-threads 8,32 --provider-latency-ms 300,
SQLite, 64 clients): Braintree 14 -> 56 payments/s, Adyen 15 -> 70/s from 8 to 32
threads, with less CPU per payment (queueing); at 100 ms 32 threads was still the best
of 8/32/64 (64 adds GIL contention: Adyen 7.8 -> 9.6 ms CPU per payment from 8 to 64).
Hence 32: one process's CPU ceiling (~85 Braintree payments/s) at a ~350 ms provider.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: The provider option naming the pool's size.
THREADS_OPTION = "sdk_threads"
DEFAULT_THREADS = 32
MAX_THREADS = 512


def threads_errors(options: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """What is wrong with ``sdk_threads`` in a provider's options (nothing when absent)."""
    value = options.get(THREADS_OPTION)
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        return [((THREADS_OPTION,), f"must be an integer from 1 to {MAX_THREADS}")]
    return []


def threads(options: Mapping[str, Any]) -> int:
    """The pool size the options ask for (checked by :func:`threads_errors`)."""
    value = options.get(THREADS_OPTION)
    return DEFAULT_THREADS if value is None else int(value)


class SdkPool:
    def __init__(self, thread_name: str, max_workers: int,
                 given: Executor | None = None) -> None:
        self._thread_name = thread_name
        self._max_workers = max_workers
        self._given = given
        self._own: ThreadPoolExecutor | None = None

    def executor(self) -> Executor:
        if self._given is not None:
            return self._given
        if self._own is None:
            self._own = ThreadPoolExecutor(max_workers=self._max_workers,
                                           thread_name_prefix=self._thread_name)
        return self._own

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.executor(), functools.partial(fn, *args))

    async def close(self, *, wait: bool) -> None:
        """Shut the owned pool down. ``wait=True`` waits (off the loop) for calls in
        flight, which end at the SDK's timeout; ``wait=False`` returns at once."""
        own, self._own = self._own, None
        if own is None:
            return
        if wait:
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(own.shutdown, wait=True, cancel_futures=True))
        else:
            own.shutdown(wait=False, cancel_futures=True)
