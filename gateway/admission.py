"""Admission control (issue #15 item 5): a bound on the payment operations one process
has in progress, so that past its capacity the gateway sheds work instead of taking more
than it can do (latency of everyone rising, pools exhausted, payments left pending).

A payment operation is a request that may call a provider: ``POST /v1/payments`` (a new
authorization, or the replay of one), and the follow-ups ``capture``, ``void``,
``refunds`` and ``confirm`` of a payment. While ``admission.max_in_flight`` of them are
in progress in this process, the next one is answered at once ``503`` with
``Retry-After`` (``admission.retry_after_s``) and error code ``gateway_overloaded``,
before its handler runs: nothing is stored, no idempotency key is claimed, no provider is
called, so the merchant may retry with the same Idempotency-Key (the 503 is not
remembered). Every shed request counts in ``gateway_requests_shed_total{operation}``.
Reads, webhooks, health and admin endpoints are never shed (they are cheap, and a
provider's webhook must not be refused for the merchants' load).

Two bounds, both checked when an operation arrives (the second off unless configured):

* ``admission.max_in_flight``: operations in progress at all (memory, store places,
  provider connections);
* ``admission.max_busy``: operations in progress that are *not* waiting on a provider,
  i.e. that want the event loop (parsing, the store, building and reading provider calls).
  An operation counts as waiting from the moment its provider call is awaited
  (:func:`waiting_on_provider`, used by :mod:`gateway.provider_calls`) until it returns.

Past its CPU capacity every admitted operation waits for all the others on the loop, so
latency grows with the number busy, not with the number waiting on a provider: a fixed
``max_in_flight`` low enough to keep latency down with a fast provider (8 at 2x capacity,
bench/overload.py) capped a slow provider's throughput (35 vs 118 payments/s with the
simulator 200 ms slower), and one high enough for the slow provider let the fast one's
latency run to 0.4-0.9 s. Counting the busy ones apart bounds the loop's queue in both
cases: with a slow provider most operations in flight are waiting and new ones are
admitted up to ``max_in_flight``.

``max_busy`` still let the fast provider's admitted p99 reach 130-180 ms at 2x capacity:
an operation whose provider has answered counts as waiting until the loop gets to read
the answer, so under overload the waiting ones are busy too. What every admitted
operation does wait for is the event loop's queue, so by default the bound follows it
(:class:`LoopLagControl`, off with ``admission.loop_lag_target_ms: 0``): a timer measures
how late the loop runs it (its lag: the time a ready callback waits for the loop) every
10 ms, and once per 50 ms window the in-flight limit in force, :attr:`Admission.limit`,
is

* cut when most of the window's samples are later than ``loop_lag_target_ms``: to the
  operations awaiting a provider now plus the busy rest of the most that were in flight
  in the window scaled by target / the window's median lag, not below
  ``admission.min_in_flight``; the loop is saturated, more work on it only adds latency,
  while an operation awaiting its provider is not on it (with a slow provider most are:
  scaling all of them cut its throughput by up to 40 %). The cut is immediate and whole
  (waiting a second window, or cutting at most by half, let the queue built meanwhile
  dominate the admitted p99), but one late sample is a stall, not saturation (a GC pass,
  one long callback: with a provider 200 ms slow, cutting on the window's mean lag cost
  a quarter of the throughput, bench/overload.py);
* raised by an eighth (at least 1, not above ``max_in_flight``) when the window's mean
  lag is under half the target and the limit was reached in the window (an operation was
  shed, or the limit is full): there is CPU left and it is wanted, as with a slow
  provider where the operations in flight are waiting, not running;
* else left alone (it starts at ``max_in_flight``).

So a fast provider's overload settles at the few operations the CPU can serve without
queueing, and a slow one's at as many as its latency needs, up to ``max_in_flight``.
Measured in bench/overload.py (README). The lag of the last window is the gauge
``gateway_event_loop_lag_seconds``, the limit in force ``gateway_admission_limit``.

An operation already admitted is never stopped or queued by these bounds (its provider
answer is processed at once); only new arrivals are shed, and a lowered limit sheds new
ones until enough admitted ones have finished. The check is two integer comparisons on
the event loop (no lock: the loop is one thread), so a shed answer costs little more than
reading the request. Sizing: see ``AdmissionSettings`` in :mod:`gateway.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from aiohttp import web

from gateway import metrics
from gateway.api.errors import ApiError
from providers.base import Operation

#: The operations counted and shed, as labels of gateway_requests_shed_total.
OPERATIONS: Final = (Operation.AUTHORIZE, Operation.CAPTURE, Operation.VOID, Operation.REFUND,
                     Operation.CONFIRM)

#: (method, route template) -> operation
_ROUTES: Final[dict[tuple[str, str], Operation]] = {
    ("POST", "/v1/payments"): Operation.AUTHORIZE,
    ("POST", "/v1/payments/{payment_id}/capture"): Operation.CAPTURE,
    ("POST", "/v1/payments/{payment_id}/void"): Operation.VOID,
    ("POST", "/v1/payments/{payment_id}/refunds"): Operation.REFUND,
    ("POST", "/v1/payments/{payment_id}/confirm"): Operation.CONFIRM,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def operation_of(method: str, route: str) -> Operation | None:
    """The payment operation a request is (``route``: its route template), else None."""
    return _ROUTES.get((method, route))


class Ticket:
    """One admitted operation's place: how many of its provider calls are awaited now
    (more than one only if an operation ever ran provider calls side by side)."""

    __slots__ = ("admission", "done", "waiting")

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.waiting = 0
        self.done = False


class Admission:
    """Counts the payment operations in progress in this process against ``limit``
    (all of them) and ``busy_limit`` (those not waiting on a provider). ``limit`` is the
    bound in force: ``ceiling`` (``max_in_flight``) unless a :class:`LoopLagControl`
    moves it, between ``floor`` and ``ceiling``."""

    def __init__(self, limit: int, retry_after_s: int = 1, busy_limit: int | None = None,
                 floor: int | None = None) -> None:
        busy = limit if busy_limit is None else busy_limit
        lowest = limit if floor is None else floor
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if busy < 1 or busy > limit:
            raise ValueError("busy_limit must be >= 1 and <= limit")
        if lowest < 1 or lowest > limit:
            raise ValueError("floor must be >= 1 and <= limit")
        if retry_after_s < 1:
            raise ValueError("retry_after_s must be >= 1")
        self.ceiling = limit
        self.floor = lowest
        self.limit = limit
        self.busy_limit = busy
        self.retry_after_s = retry_after_s
        self._in_flight = 0
        self._waiting = 0
        #: since the controller last looked: the limit was reached (it may rise), and the
        #: most operations in flight at once
        self.reached = False
        self.peak = 0
        # every operation's series exists from the start, at 0 (the alert's increase())
        self._shed = {op: metrics.REQUESTS_SHED.labels(op) for op in OPERATIONS}
        self._limit_gauge = metrics.ADMISSION_LIMIT
        self._limit_gauge.set(limit)

    def set_limit(self, limit: int) -> None:
        """Put the bound in force at ``limit``, kept within ``floor`` .. ``ceiling``."""
        self.limit = max(self.floor, min(self.ceiling, limit))
        self._limit_gauge.set(self.limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Admitted operations awaiting a provider's answer now."""
        return self._waiting

    @property
    def busy(self) -> int:
        """Admitted operations not waiting on a provider."""
        return self._in_flight - self._waiting

    def try_enter(self, operation: Operation) -> Ticket | None:
        """Take a place for ``operation``; None (and counted as shed) when none is left.
        Every ticket must be given back by one :meth:`leave`."""
        if (self._in_flight >= self.limit
                or self._in_flight - self._waiting >= self.busy_limit):
            self.reached = True
            self._shed[operation].inc()
            return None
        self._in_flight += 1
        if self._in_flight > self.peak:
            self.peak = self._in_flight
            if self._in_flight >= self.limit:
                self.reached = True
        return Ticket(self)

    def leave(self, ticket: Ticket) -> None:
        if ticket.done:
            return
        ticket.done = True
        self._in_flight -= 1
        self._waiting -= ticket.waiting  # a provider call it left behind stops counting
        ticket.waiting = 0

    def refusal(self) -> ApiError:
        return ApiError(
            503, "internal", "gateway_overloaded",
            "the gateway is at its limit of payment operations in progress; "
            "nothing was done: retry after Retry-After seconds with the same "
            "Idempotency-Key", headers={"Retry-After": str(self.retry_after_s)})


class LoopLagControl:
    """Moves an :class:`Admission`'s limit by the event loop's lag (see the module
    docstring): :meth:`run` samples the lag, :meth:`adjust` decides once per window."""

    INTERVAL_S: Final = 0.01  # one lag sample per 10 ms (about 5 us of CPU each)
    WINDOW_S: Final = 0.05  # one decision per 50 ms of samples
    INCREASE: Final = 0.125

    def __init__(self, admission: Admission, target_s: float) -> None:
        if not target_s > 0:
            raise ValueError("target_s must be > 0")
        self.admission = admission
        self.target_s = target_s
        self._lag_gauge = metrics.EVENT_LOOP_LAG

    def adjust(self, lags_s: Sequence[float]) -> int:
        """One window's decision from its lag samples; returns the limit now in force."""
        a = self.admission
        if not lags_s:
            return a.limit
        mean_lag_s = sum(lags_s) / len(lags_s)
        self._lag_gauge.set(mean_lag_s)
        if 2 * sum(1 for lag in lags_s if lag > self.target_s) > len(lags_s):
            # most samples late: the loop is saturated, not stalled once (a GC pass, one
            # long callback). Its queue grows with the operations in it: scale what was in
            # flight to the target by the median lag (4x the target: a quarter)
            scale = self.target_s / statistics.median(lags_s)
            waiting = a.waiting
            busy = max(min(a.limit, a.peak) - waiting, 1)
            a.set_limit(waiting + int(busy * scale))
        else:
            full = a.reached or a.in_flight >= a.limit
            if full and mean_lag_s < self.target_s / 2:
                a.set_limit(a.limit + max(1, int(a.limit * self.INCREASE)))
        a.reached = False
        a.peak = a.in_flight
        return a.limit

    async def run(self) -> None:
        """Sample the lag and adjust, until cancelled."""
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        window_start = loop.time()
        while True:
            due = loop.time() + self.INTERVAL_S
            await asyncio.sleep(self.INTERVAL_S)
            now = loop.time()
            lags.append(max(0.0, now - due))
            if now - window_start >= self.WINDOW_S:
                self.adjust(lags)
                lags, window_start = [], now


ADMISSION: Final = web.AppKey("admission", Admission)

#: The admitted operation the current task runs for (set by the middleware; tasks the
#: handler starts inherit it, and stop counting once the operation has left).
_TICKET: ContextVar[Ticket | None] = ContextVar("admission_ticket", default=None)


@contextmanager
def waiting_on_provider() -> Iterator[None]:
    """Count the current operation as waiting on a provider for the ``with`` block (a
    no-op outside an admitted operation: reconciliation, webhooks, the CLI)."""
    ticket = _TICKET.get()
    if ticket is None or ticket.done:
        yield
        return
    ticket.waiting += 1
    ticket.admission._waiting += 1
    try:
        yield
    finally:
        if not ticket.done:
            ticket.waiting -= 1
            ticket.admission._waiting -= 1


def _route(request: web.Request) -> str | None:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else None


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sheds payment operations past the app's :data:`ADMISSION` limit (placed inside
    ``request_context``, which turns the ApiError into the JSON 503 and counts it)."""
    if request.method != "POST":
        return await handler(request)
    route = _route(request)
    operation = operation_of(request.method, route) if route is not None else None
    admission = request.app.get(ADMISSION)
    if operation is None or admission is None:
        return await handler(request)
    ticket = admission.try_enter(operation)
    if ticket is None:
        raise admission.refusal()
    token = _TICKET.set(ticket)
    try:
        return await handler(request)
    finally:
        _TICKET.reset(token)
        admission.leave(ticket)


def install(app: web.Application, limit: int, retry_after_s: int = 1,
            busy_limit: int | None = None, *, floor: int | None = None,
            lag_target_s: float = 0.0) -> Admission:
    """Create the app's admission control (call before the app is frozen) and return it;
    ``admission_middleware`` must be among the app's middlewares. With ``lag_target_s``
    > 0 a :class:`LoopLagControl` moves its limit between ``floor`` and ``limit`` while
    the app runs (a cleanup_ctx task)."""
    admission = Admission(limit, retry_after_s, busy_limit, floor)
    app[ADMISSION] = admission
    if lag_target_s > 0 and admission.floor < admission.ceiling:
        control = LoopLagControl(admission, lag_target_s)

        async def lag_control_ctx(_app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(control.run(), name="admission-lag-control")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                admission.set_limit(admission.ceiling)

        app.cleanup_ctx.append(lag_control_ctx)
    return admission
