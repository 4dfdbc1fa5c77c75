"""The bounded thread pool a synchronous SDK (braintree, Adyen) runs in, never the loop.

An adapter either gets an executor from outside (never shut down here) or owns one,
created on first use and shut down by :meth:`SdkPool.close`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


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
