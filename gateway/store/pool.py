"""Bounded store pools that wait, never raise (issue #15 item 4).

The problem this solves: redis-py's default pool (100 connections) raised "Too many
connections" as soon as a burst needed a 101st, in whatever store operation of a request
came next -- often the write after the provider call, leaving the payment ``pending``
until reconciliation and the merchant with an error for a payment that was made. SQLite's
single executor thread had an unbounded queue: past capacity every request waited
longer, none was refused.

Design: **a request takes its store budget once, at its first store operation, and keeps
it until it ends.**

* Each store has a :class:`RequestBudget` of ``store_options.pool_size`` places and a
  wait of ``store_options.pool_timeout_s``. ``gateway.api.middleware`` opens a
  :func:`request_scope` around every request (health and metrics excepted). The
  request's first store operation -- for a POST the idempotency claim, for a follow-up
  the read of the payment before it -- takes a place, waiting up to ``pool_timeout_s``
  for one; if none frees it raises :class:`StoreError`, which the middleware answers
  ``503 store_unavailable`` with ``Retry-After``. At that point nothing was claimed,
  stored or sent to a provider, so the same Idempotency-Key may be retried as it is.
* Every later operation of that request finds its place already held and does not wait
  on the budget again. The place is given back when the request ends (answered, failed
  or cancelled).
* Redis: the connection pool is a ``BlockingConnectionPool`` (it waits, it does not
  raise) of ``pool_size + BACKGROUND_RESERVE`` connections. A request makes its store
  calls one after another, so the ``pool_size`` requests holding a place use at most
  ``pool_size`` connections; work outside requests (reconciliation, the notification
  worker's deliveries, ``/readyz``'s ping, the start's backfill) is limited to
  :data:`BACKGROUND_RESERVE` connections at a time by its own semaphore. The pool is
  therefore never short of a connection for an admitted request; should it ever be (a
  request running store calls concurrently), the wait is :data:`LATER_WAIT_S`, far
  beyond any normal wait, before the usual StoreError path. A request past its claim
  does not fail on the pool.
* SQLite: statements run on one executor thread; the budget bounds its queue to the
  ``pool_size`` requests holding a place (one statement each at a time) plus the
  background work, with the same wait and 503 at the first operation.

What if a store operation fails later anyway (Redis down mid-request, not a pool wait):
unchanged, the write-ahead design covers it -- the payment and its attempt are durable
before the provider call, the request answers 503 ``store_unavailable`` and keeps its
idempotency claim, and a retry with the same key after the lease (or reconciliation)
resolves the attempt from the provider without charging twice.

Sizing (defaults: ``GatewayConfig.store_pool_size`` / ``store_pool_timeout_s``): a
place is held for the whole request, provider call included, so ``pool_size`` must
cover a process's in-flight requests at capacity (throughput x latency): it is twice
``admission.max_in_flight``'s default, so admission control (``503 gateway_overloaded``,
fast) sheds payments first and reads and webhooks still find room; the budget is the
backstop when admission control is off or set high. Measured (``bench/overload.py``, 2x
capacity): the Redis pool opened 130 connections with 128 places and no admission
control (about one per place, the background using 2), 65 with ``max_in_flight`` 64;
pool sizes 32 to 256 gave the same throughput, only the admitted latency grew with them
(a place is held for the request's whole run: latency = places / throughput).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from redis.asyncio import BlockingConnectionPool

from gateway import metrics
from gateway.store.base import StoreError

#: Redis connections kept for work outside requests (reconciliation, notifications,
#: /readyz, start-up backfill), on top of ``pool_size``.
BACKGROUND_RESERVE = 16
#: How long a store call already past its request's first operation (or a background
#: one) may wait for a Redis connection before it fails: far longer than any normal wait.
LATER_WAIT_S = 30.0


class _Scope:
    __slots__ = ("closed", "held")

    def __init__(self) -> None:
        self.held: list[RequestBudget] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True
        held, self.held = self.held, []
        for budget in held:
            budget.give_back()


_SCOPE: ContextVar[_Scope | None] = ContextVar("gateway_store_request_scope", default=None)


@contextmanager
def request_scope() -> Iterator[None]:
    """The extent of one request: the store places it takes are given back at its end."""
    scope = _Scope()
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)
        scope.close()


class RequestBudget:
    """``size`` requests may use a store at once; the next waits ``wait_s`` for a place."""

    def __init__(self, size: int, wait_s: float, name: str) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        if wait_s <= 0:
            raise ValueError("pool timeout must be > 0")
        self.size = size
        self.wait_s = wait_s
        self._name = name
        self._sem = asyncio.Semaphore(size)
        self._in_use = 0
        self._waiting = 0

    @property
    def in_use(self) -> int:
        """Places held by requests now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Requests waiting for a place now."""
        return self._waiting

    async def admit(self) -> bool:
        """Before a store operation: True if it belongs to a request (which now holds a
        place, taken here if this is its first operation), False outside any request.
        Raises StoreError when no place frees within ``wait_s``."""
        scope = _SCOPE.get()
        if scope is None or scope.closed:
            return False
        if self in scope.held:
            return True
        if self._sem.locked():  # no place free: wait for one, within wait_s
            self._waiting += 1
            try:
                await asyncio.wait_for(self._sem.acquire(), self.wait_s)
            except TimeoutError:
                metrics.STORE_POOL_TIMEOUTS.labels("request").inc()
                raise StoreError(
                    f"{self._name}: no store place free within {self.wait_s:g} s "
                    f"({self.size} requests are using the store; store_options.pool_size)"
                ) from None
            finally:
                self._waiting -= 1
        else:  # a place is free and nobody waits: taken at once (no wait_for task)
            await self._sem.acquire()
        self._in_use += 1
        if scope.closed:  # the request ended while this (spawned) call waited
            self.give_back()
            return False
        scope.held.append(self)
        return True

    def give_back(self) -> None:
        self._in_use -= 1
        self._sem.release()


class BudgetedPool(BlockingConnectionPool):
    """A blocking Redis pool of ``budget.size + reserve`` connections: a request's
    connections come under its budget place, other callers share ``reserve``."""

    def __init__(self, *, budget: RequestBudget, reserve: int | None = None,
                 **kwargs: Any) -> None:
        reserve = BACKGROUND_RESERVE if reserve is None else reserve
        super().__init__(max_connections=budget.size + reserve, timeout=LATER_WAIT_S,
                         **kwargs)
        self.budget = budget
        self.reserve = reserve
        self._background = asyncio.Semaphore(reserve)
        self._background_conns: set[int] = set()

    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> Any:
        if await self.budget.admit():
            return await super().get_connection()
        try:
            await asyncio.wait_for(self._background.acquire(), LATER_WAIT_S)
        except TimeoutError:
            metrics.STORE_POOL_TIMEOUTS.labels("background").inc()
            raise StoreError(f"redis: no background connection free within "
                             f"{LATER_WAIT_S:g} s") from None
        try:
            connection = await super().get_connection()
        except BaseException:
            self._background.release()
            raise
        self._background_conns.add(id(connection))
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            if id(connection) in self._background_conns:
                self._background_conns.discard(id(connection))
                self._background.release()
