"""Base class of one simulated provider and the fault-injection middleware.

A concrete simulator (Stripe, Braintree, Adyen) adds its wire-protocol routes,
renders errors in its own format and reports its charges. Every route gets a
``name``: it is the *operation* under which ``GET /_sim/{provider}/requests``
counts the request.

Fault order for each request: (refuse: drop silently) -> count -> read the body ->
latency -> hang | late_process -> 429 -> 5xx -> process -> 5xx after processing ->
(drop_after_process: close with no response).

Injected 429/5xx answers are produced before processing (nothing happened), except
with ``error_after_process``: then the 5xx replaces the answer of a request that was
processed. A simulator whose provider remembers such answers (Stripe stores a 500
against the Idempotency-Key) takes the fault over with :meth:`take_after_process_fault`;
otherwise the middleware replaces the handler's answer.

``late_process``: the request waits ``late_process_ms`` and is then processed in a task
the provider owns (kept in a set, awaited through :func:`asyncio.shield`), so neither a
client disconnect nor a cancelled handler stops it. aiohttp >= 3.9 does not cancel
handlers on disconnect unless ``handler_cancellation=True``; the shield keeps the
semantics if that changes. Pending late work is dropped by :meth:`reset`/:meth:`close`.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from aiohttp import web

from providers.simulator.disputes import DisputeRefused, DisputeRequest
from providers.simulator.faults import FaultMode, FaultSettings
from providers.simulator.ledger import ChargeView, RequestCounter
from providers.simulator.settlement import SettlementBook, SettlementFault, SettlementRefused
from providers.simulator.webhooks import WebhookSender

HANG_POLL_S = 0.05
#: request keys: the injected after-processing 5xx status, and "a simulator took it over"
AFTER_PROCESS_FAULT: web.RequestKey[int] = web.RequestKey("sim_after_process_fault", int)
AFTER_PROCESS_TAKEN: web.RequestKey[bool] = web.RequestKey("sim_after_process_taken", bool)


def operation_of(request: web.Request) -> str:
    route = request.match_info.route
    return getattr(route, "name", None) or "unmatched"


def drop_connection(request: web.BaseRequest) -> None:
    """Close the client connection without writing anything (FIN, no bytes)."""
    protocol = request.protocol
    if protocol is not None:
        protocol.force_close()
    elif request.transport is not None:
        request.transport.close()


class SimulatedProvider(abc.ABC):
    """One provider's simulated API; the host serves :meth:`build_app` on its own port."""

    name: str = "provider"
    #: whether the provider has a search API (``search_lag_ms`` may be set)
    supports_search: bool = False

    def __init__(self, *, seed: int | None = None, webhook_url: str | None = None) -> None:
        self.faults = FaultSettings()
        self.requests = RequestCounter()
        self.rng = random.Random(seed)
        self.webhooks = WebhookSender(webhook_url)
        self.base_url: str | None = None  # set by the host once the port is bound
        self._stopping = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()
        self._late: set[asyncio.Task[web.StreamResponse]] = set()
        #: what settled, for ``GET /_sim/{provider}/settlement`` (cleared by :meth:`reset`)
        self.settlement = SettlementBook(self.settlement_payout_id)

    # ---------------------------------------------------------------- hooks

    @abc.abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the provider API routes (each with a ``name`` = operation)."""

    @abc.abstractmethod
    def fault_response(self, status: int) -> web.Response:
        """An injected 429 or 5xx answer in the provider's wire format."""

    @abc.abstractmethod
    def charges(self, reference: str) -> list[ChargeView]:
        """Every authorization held for a gateway payment id / reference."""

    @abc.abstractmethod
    def reset_state(self) -> None:
        """Forget all payments, refunds and idempotency records."""

    def dispute(self, request: DisputeRequest) -> dict[str, object]:
        """Open / win / lose a dispute on a gateway payment's captured charge and send
        the provider's notification (``POST /_sim/{provider}/disputes``); raises
        :class:`~providers.simulator.disputes.DisputeRefused`. Returns what the control
        API answers."""
        raise DisputeRefused(404, "disputes_unsupported",
                             f"the {self.name} simulator does not simulate disputes")

    def settlement_payout_id(self, day: dt.date, currency: str, account: str) -> str:
        """The provider's id of the payout of ``day``'s ``currency`` for ``account``."""
        return f"{account}:{day.isoformat()}:{currency}"

    def settlement_report(self, day: dt.date) -> tuple[bytes, str]:
        """``GET /_sim/{provider}/settlement?date=``: the day's settlement data in the
        provider's real format, and its content type."""
        raise SettlementRefused(404, "settlement_unsupported",
                                f"the {self.name} simulator does not simulate settlement")

    def settlement_fault(self, fault: SettlementFault) -> dict[str, object]:
        """``POST /_sim/{provider}/settlement_faults`` (see
        :mod:`providers.simulator.settlement`)."""
        return self.settlement.add_fault(fault, known=bool(self.charges(fault.reference)))

    # ---------------------------------------------------------------- shared

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._fault_middleware])
        app.on_response_prepare.append(self._stamp_date)
        self.add_routes(app)
        return app

    async def _stamp_date(self, request: web.Request, response: web.StreamResponse) -> None:
        """``clock_skew_s``: the ``Date`` header (RFC 9110, set by aiohttp otherwise)
        shows this provider's clock running that far ahead (negative: behind)."""
        skew = self.faults.clock_skew_s
        if skew:
            response.headers["Date"] = formatdate(time.time() + skew, usegmt=True)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` after ``delay`` seconds (asynchronous provider-side outcomes);
        pending ones are dropped by :meth:`reset` and :meth:`close`."""
        holder: list[asyncio.TimerHandle] = []

        def run() -> None:
            self._timers.discard(holder[0])
            fn()

        holder.append(asyncio.get_running_loop().call_later(delay, run))
        self._timers.add(holder[0])

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def cancel_late(self) -> None:
        """Drop requests still waiting in ``late_process`` (their clients get no answer)."""
        for task in list(self._late):
            task.cancel()
        self._late.clear()

    def searchable(self, created_monotonic: float) -> bool:
        """Whether an object created at that :func:`time.monotonic` is visible to search
        under the current ``search_lag_ms``."""
        return self.faults.searchable(time.monotonic() - created_monotonic)

    def take_after_process_fault(self, request: web.Request) -> int | None:
        """The injected 5xx status to answer *instead of* this processed request's result
        (``error_after_process``), or None. The caller answers it itself (and may store it,
        as Stripe does); the middleware then leaves the answer alone."""
        status = request.get(AFTER_PROCESS_FAULT)
        if status is not None:
            request[AFTER_PROCESS_TAKEN] = True
        return status

    def reset(self) -> None:
        self.cancel_timers()
        self.cancel_late()
        self.reset_state()
        self.settlement.clear()
        self.faults = FaultSettings()
        self.requests.clear()
        self.webhooks.cancel_retries()
        self.webhooks.configure({"duplicate_rate": 0.0, "reorder_window_ms": 0})

    def prepare(self) -> None:
        """Called by the host on the event loop it serves from, before binding."""
        self._stopping = asyncio.Event()

    async def close(self) -> None:
        self._stopping.set()
        self.cancel_timers()
        self.cancel_late()
        await self.webhooks.close()

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            try:
                await asyncio.wait_for(self._stopping.wait(), HANG_POLL_S)
            except TimeoutError:
                continue
        drop_connection(request)
        return web.Response()  # never written: the transport is gone

    async def _process_late(
        self, request: web.Request, delay_s: float,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if delay_s > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), delay_s)
            except TimeoutError:
                pass
            else:  # the simulator is stopping: the request is never processed
                drop_connection(request)
                return web.Response()
        return await handler(request)

    async def _late_process(
        self, request: web.Request, delay_s: float,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        task = asyncio.ensure_future(self._process_late(request, delay_s, handler))
        self._late.add(task)
        task.add_done_callback(self._late.discard)
        try:
            # shield: cancelling this handler (client gone, server shutdown) leaves the
            # provider-side processing running; its answer then goes nowhere.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                drop_connection(request)  # the work was dropped by reset(): no answer
                return web.Response()
            raise

    @web.middleware
    async def _fault_middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        faults = arrival = self.faults
        if faults.mode is FaultMode.REFUSE:  # a request on a connection opened before
            drop_connection(request)
            return web.Response()
        self.requests.hit(operation_of(request))
        # Read the whole body first: a real provider that received a request processes it
        # even if the client goes away during the (simulated) processing latency.
        await request.read()
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        faults = self.faults  # the settings may have changed while sleeping
        if faults.mode is FaultMode.HANG:
            return await self._hang(request)
        if arrival.mode is FaultMode.LATE_PROCESS:  # decided when the request arrived
            return await self._late_process(request, arrival.late_process_ms / 1000, handler)
        if faults.mode is FaultMode.LATE_PROCESS:
            return await self._late_process(request, faults.late_process_ms / 1000, handler)
        if faults.roll_rate_limit(self.rng):
            return self.fault_response(429)
        error_status = faults.error_status if faults.roll_error(self.rng) else None
        if error_status is not None and not faults.error_after_process:
            return self.fault_response(error_status)
        if error_status is not None:
            request[AFTER_PROCESS_FAULT] = error_status
        response = await handler(request)
        if error_status is not None and not request.get(AFTER_PROCESS_TAKEN):
            response = self.fault_response(error_status)
        if self.faults.mode is FaultMode.DROP_AFTER_PROCESS:
            drop_connection(request)
        return response
