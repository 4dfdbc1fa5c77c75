"""Per-provider circuit breakers (SPEC sections 5, 7, 11), shareable across replicas.

One :class:`ProviderBreaker` per provider wraps a ``pybreaker.CircuitBreaker``: pybreaker
keeps the state, the failure counter and ``opened_at`` and makes the transitions;
this module adds what pybreaker lacks for asyncio payments:

* **admission is separate from the outcome.** ``admit()`` decides *before* anything is
  sent; the returned :class:`Ticket` is settled once the awaited provider call ended::

      ticket = breakers[provider].admit()   # CircuitOpen (a RejectedSafe): nothing sent
      try:
          result = await adapter.authorize(req)
      except (RejectedSafe, Ambiguous) as fault:
          ticket.failure(fault)
          raise
      except BaseException:                   # CancelledError, bugs: neither
          ticket.release()
          raise
      ticket.success()                        # a decline is a definite answer

  or, with the same semantics (see :meth:`Ticket.settle`)::

      async with breakers[provider].guard():
          result = await adapter.authorize(req)

* **a cancelled call is neither a success nor a failure** (pybreaker's ``exclude`` would
  count it as a success, which would close a half-open circuit);
* **half-open admits exactly one probe at a time** (pybreaker lets every call through);
* the call that trips the breaker keeps its own fault (``throw_new_error_on_trip=False``);
  only :class:`CircuitOpen`, raised by ``admit()``, means "not sent";
* a ticket admitted before a transition is *stale*: its outcome is ignored, so late
  answers of calls sent before the circuit opened neither extend nor close it.

An ``on_state`` observer is told of every transition inline (the gateway sets
``gateway_circuit_state`` / ``gateway_circuit_transitions_total`` from it).

:class:`BreakerBoard` holds the breakers of all providers; with a
:class:`routing.breaker_sync.RedisBreakerSync` their states are shared by replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeGuard

import pybreaker

from providers.base import NotFound, NotSent, ProviderFault

log = logging.getLogger(__name__)

State = Literal["closed", "half_open", "open"]
#: Told of every transition of a breaker (local or applied from another replica): the
#: gateway sets its metrics from it. Runs inline: keep it cheap.
StateObserver = Callable[[str, State], None]


@dataclass(frozen=True)
class BreakerSettings:
    """``breaker:`` of one provider in gateway.yaml."""

    fail_max: int = 5
    reset_timeout_s: float = 30.0
_FROM_PYBREAKER: dict[str, State] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_HALF_OPEN: "half_open",
    pybreaker.STATE_OPEN: "open",
}
_ORDER = {"closed": 0, "half_open": 1, "open": 2}

class CircuitOpen(NotSent):
    """The provider's circuit is open (or half-open with its probe in flight): not sent."""

    def __init__(self, provider: str, retry_after_s: float = 0.0) -> None:
        super().__init__("circuit_open", f"circuit breaker for provider {provider} is open")
        self.provider = provider
        self.retry_after_s = max(0.0, retry_after_s)


@dataclass(frozen=True)
class BreakerRecord:
    """One breaker state as shared between replicas (times in epoch milliseconds)."""

    state: State
    opened_at_ms: int  # when the circuit last opened (0: never)
    ts_ms: int  # when this state was entered; the newer record wins
    origin: str = ""

    @property
    def version(self) -> int:
        """Total order of records: newer wins; at the same ms, open > half_open > closed."""
        return self.ts_ms * 3 + _ORDER[self.state]


def is_state(value: str) -> TypeGuard[State]:
    return value in _ORDER


def _now_ms() -> int:
    return int(time.time() * 1000)


def _to_ms(dt: datetime | None) -> int:
    return int(dt.timestamp() * 1000) if dt is not None else 0


def _is_definite_answer(exc: BaseException) -> bool:
    return isinstance(exc, NotFound)


class _Failed(Exception):
    """Stands for a failure reported without its exception."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: ProviderBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._owner._on_state_change(_FROM_PYBREAKER[new_state.name])


class Ticket:
    """Admission of one provider call; settle it exactly once (later calls are ignored)."""

    __slots__ = ("_breaker", "_done", "_state", "probe")

    def __init__(
        self, breaker: ProviderBreaker, state: pybreaker.CircuitBreakerState, probe: bool
    ) -> None:
        self._breaker = breaker
        self._state = state
        self._done = False
        self.probe = probe  # True: this call is the half-open probe

    def success(self) -> None:
        """A definite answer (approved, declined, ...): resets the failure counter."""
        self._finish("success", None)

    def failure(self, fault: BaseException | None = None) -> None:
        """A rejected_safe or ambiguous outcome: counts towards ``fail_max``."""
        self._finish("failure", fault)

    def release(self) -> None:
        """Neither (cancelled, or nothing was sent): frees a half-open probe slot."""
        self._finish("release", None)

    def settle(self, exc: BaseException | None) -> None:
        """Classify how the call ended: ``None`` -> success; a ProviderFault -> failure,
        except :class:`NotFound` (a definite answer: success) and :class:`NotSent`
        (release); anything else (CancelledError, bugs) -> release."""
        if exc is None:
            self.success()
        elif isinstance(exc, ProviderFault):
            if isinstance(exc, NotSent):
                self.release()
            else:
                self.failure(exc)  # NotFound is excluded inside pybreaker
        else:
            self.release()

    def _finish(self, kind: str, fault: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._breaker._finish(self, kind, fault)


class ProviderBreaker:
    """The circuit breaker of one provider. Never blocks, never awaits."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        on_transition: Callable[[str, BreakerRecord], None] | None = None,
        on_state: StateObserver | None = None,
        origin: str = "",
        probe_lease_s: float = 60.0,
    ) -> None:
        self.name = name
        self.settings = settings
        self._on_transition = on_transition
        self._on_state = on_state
        self._origin = origin
        self._probe_lease_s = probe_lease_s  # a probe never settled frees its slot after this
        self._probe: Ticket | None = None
        self._probe_since = 0.0
        self._remote: BreakerRecord | None = None  # set while applying a remote record
        self.record = BreakerRecord("closed", 0, 0, origin)
        # never counted as failures (pybreaker counts them as successes): cancellation
        # and "not sent" never reach pybreaker (Ticket.release), listed for safety
        exclude: list[Any] = [asyncio.CancelledError, CircuitOpen, _is_definite_answer]
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout_s,
            throw_new_error_on_trip=False,
            exclude=exclude,
            listeners=[_Listener(self)],
            name=name,
            state_storage=self._storage,
        )

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``closed`` | ``half_open`` | ``open`` (open stays open until the next admit)."""
        return _FROM_PYBREAKER[self._cb.current_state]

    @property
    def fail_counter(self) -> int:
        return self._cb.fail_counter

    @property
    def opened_at(self) -> datetime | None:
        return self._storage.opened_at

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self.state != "open":
            return 0.0
        opened_at = self.opened_at
        if opened_at is None:
            return 0.0
        left = opened_at + timedelta(seconds=self._cb.reset_timeout) - datetime.now(UTC)
        return max(0.0, left.total_seconds())

    @property
    def available(self) -> bool:
        """Would :meth:`admit` let a call through now? (changes nothing)"""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return self.retry_after_s() <= 0.0
        return not self._probe_busy()

    def _probe_busy(self) -> bool:
        return (
            self._probe is not None
            and time.monotonic() - self._probe_since < self._probe_lease_s
        )

    # -- the payment path --------------------------------------------------------------

    def admit(self) -> Ticket:
        """Admit one call or raise :class:`CircuitOpen` (then nothing may be sent)."""
        cb = self._cb
        with cb._lock:
            st = cb.state
            if st.name == pybreaker.STATE_OPEN:
                left = self.retry_after_s()
                if left > 0.0:
                    raise CircuitOpen(self.name, left)
                cb.half_open()
                st = cb.state
            if st.name == pybreaker.STATE_HALF_OPEN:
                if self._probe_busy():
                    raise CircuitOpen(self.name)
                ticket = Ticket(self, st, probe=True)
                self._probe, self._probe_since = ticket, time.monotonic()
                return ticket
            return Ticket(self, st, probe=False)

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[Ticket]:
        """``async with breaker.guard(): await call()`` - admit, then :meth:`Ticket.settle`."""
        ticket = self.admit()
        try:
            yield ticket
        except BaseException as exc:
            ticket.settle(exc)
            raise
        ticket.settle(None)

    def _finish(self, ticket: Ticket, kind: str, fault: BaseException | None) -> None:
        cb = self._cb
        with cb._lock:
            if self._probe is ticket:
                self._probe = None
            if kind == "release" or cb.state is not ticket._state:
                return  # neither, or stale: admitted before the last transition
            if kind == "success":
                ticket._state.call(_noop)
                return
            exc = fault if fault is not None else _Failed()
            tb = exc.__traceback__
            try:
                ticket._state.call(_raise, exc)
            except BaseException as raised:
                if raised is not exc:
                    raise
            finally:
                exc.__traceback__ = tb

    # -- transitions -------------------------------------------------------------------

    def _on_state_change(self, state: State) -> None:
        """pybreaker listener: runs inline on every transition, keep it cheap."""
        if self._on_state is not None:
            self._on_state(self.name, state)
        self._probe = None
        if self._remote is not None:
            self.record = self._remote
            return
        opened = self._storage.opened_at  # already set by cb.open()
        now = max(_now_ms(), self.record.ts_ms + 1)  # strictly increasing per breaker
        self.record = BreakerRecord(state, _to_ms(opened), now, self._origin)
        if self._on_transition is not None:
            try:
                self._on_transition(self.name, self.record)
            except Exception:  # never let sharing break the payment path
                log.exception("breaker %s: publishing the transition failed", self.name)

    def apply_remote(self, rec: BreakerRecord) -> bool:
        """Adopt a newer state written by another replica; True when it was applied.

        ``open`` opens the local circuit keeping the remote ``opened_at`` (the reset timeout
        runs from the original open; an in-flight local probe becomes stale); ``closed``
        closes it; ``half_open`` opens a closed breaker (with the remote ``opened_at``, so
        it probes at once) and leaves an open or half-open one alone.
        """
        cb = self._cb
        with cb._lock:
            if rec.version <= self.record.version:
                return False
            self._remote = rec
            try:
                local = cb.current_state
                if rec.state == "closed":
                    if local != pybreaker.STATE_CLOSED:
                        cb.close()
                elif rec.state == "open" or local == pybreaker.STATE_CLOSED:
                    # a remote half_open only matters to a closed breaker: an open or
                    # half-open one already runs its own timer and its own single probe
                    if local != pybreaker.STATE_OPEN:
                        cb.open()
                    if rec.opened_at_ms > 0:
                        self._storage.opened_at = datetime.fromtimestamp(
                            rec.opened_at_ms / 1000, UTC
                        )
            finally:
                self._remote = None
            self.record = rec
            return True


def _noop() -> None:
    return None


def _raise(exc: BaseException) -> None:
    raise exc


# ---------------------------------------------------------------------------------------
# The board and replica sharing
# ---------------------------------------------------------------------------------------


class BreakerSync(Protocol):
    """Shares breaker states between replicas; ``publish`` must return immediately."""

    def attach(self, breakers: Mapping[str, ProviderBreaker], origin: str) -> None: ...

    def publish(self, provider: str, record: BreakerRecord) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class BreakerBoard:
    """All providers' breakers: ``board[provider]``, ``states()``, ``start()``/``close()``."""

    def __init__(
        self, settings: Mapping[str, BreakerSettings], sync: BreakerSync | None = None, *,
        on_state: StateObserver | None = None,
    ) -> None:
        self.origin = uuid.uuid4().hex[:12]
        self._sync = sync
        publish = sync.publish if sync is not None else None
        self._breakers = {
            name: ProviderBreaker(name, s, on_transition=publish, on_state=on_state,
                                  origin=self.origin)
            for name, s in settings.items()
        }
        if sync is not None:
            sync.attach(self._breakers, self.origin)

    def __getitem__(self, provider: str) -> ProviderBreaker:
        return self._breakers[provider]

    def __contains__(self, provider: object) -> bool:
        return provider in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)

    def states(self) -> dict[str, str]:
        return {name: b.state for name, b in self._breakers.items()}

    async def start(self) -> None:
        if self._sync is not None:
            await self._sync.start()

    async def close(self) -> None:
        if self._sync is not None:
            await self._sync.close()


__all__ = [
    "BreakerBoard",
    "BreakerRecord",
    "BreakerSettings",
    "BreakerSync",
    "CircuitOpen",
    "ProviderBreaker",
    "State",
    "StateObserver",
    "Ticket",
]
