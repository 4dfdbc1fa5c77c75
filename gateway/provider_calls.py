"""One provider call, measured and retried by the SPEC section 5 rules.

:func:`call_provider` runs an adapter coroutine factory and

* records ``gateway_provider_calls_total`` / ``..._duration_seconds`` per try;
* turns any stray exception into a :class:`ProviderFault` via the cause-chain
  classifier (an SDK or transport error is never a decline);
* retries an ``Ambiguous`` outcome on the SAME provider with the SAME provider
  idempotency key (the factory closes over it), bounded by attempts and a deadline,
  with exponential backoff and jitter (tenacity);
* once a try was ambiguous, a later ``RejectedSafe`` does not make the call safe: the
  first try may have been processed, so the call stays ``Ambiguous``; except
  :class:`~providers.base.NotCreated`, a lookup's final proof (lookups create nothing).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from gateway import metrics
from gateway.admission import waiting_on_provider
from gateway.config import RetrySettings
from providers.base import (
    Ambiguous,
    NotCreated,
    Operation,
    Outcome,
    ProviderFault,
    RejectedSafe,
)
from providers.faults import classify_transport_error

T = TypeVar("T")


@dataclass
class CallRecord:
    """What happened across the tries of one call (for the attempt record)."""

    started_at: float = 0.0
    duration_ms: int = 0
    tries: int = 0


def _outcome_of(result: object) -> str:
    outcome = getattr(result, "outcome", Outcome.SUCCEEDED)
    return str(outcome)


async def _one_try(provider: str, operation: Operation, factory: Callable[[], Awaitable[T]]) -> T:
    t0 = time.perf_counter()
    outcome = "ambiguous"
    try:
        with waiting_on_provider():
            result = await factory()
        outcome = _outcome_of(result)
        return result
    except ProviderFault as fault:
        outcome = fault.outcome.value
        raise
    except Exception as exc:  # an adapter let an SDK/transport error through
        classified = classify_transport_error(exc)
        outcome = classified.outcome.value
        raise classified from exc
    finally:
        metrics.child(metrics.PROVIDER_DURATION, provider, operation).observe(
            time.perf_counter() - t0)
        metrics.child(metrics.PROVIDER_CALLS, provider, operation, outcome).inc()


async def call_provider(
    provider: str,
    operation: Operation,
    factory: Callable[[], Awaitable[T]],
    retry: RetrySettings,
    deadline: float,
    record: CallRecord | None = None,
) -> T:
    """Run ``factory`` with the retry rules; ``deadline`` is a ``time.monotonic()`` value.

    The first try runs without the retry machinery (building and stepping tenacity's
    AsyncRetrying was ~3 % of the CPU of an authorization, and almost every call ends at
    its first try); only an Ambiguous first try enters :func:`_retried`, which gives
    tenacity that try as its attempt 1, so attempts, waits and the deadline are as if
    tenacity had run it (stop_before_delay's "elapsed + next wait >= remaining" reads
    "now + next wait >= deadline" either way)."""
    rec = record or CallRecord()
    rec.started_at = time.time()
    t0 = time.perf_counter()
    try:
        rec.tries = 1
        try:
            return await _one_try(provider, operation, factory)
        except Ambiguous as exc:
            first = exc
        # outside the except block: the later tries' exceptions do not chain to the first
        return await _retried(provider, operation, factory, retry, deadline, rec, first)
    finally:
        rec.duration_ms = int((time.perf_counter() - t0) * 1000)


async def _retried(provider: str, operation: Operation, factory: Callable[[], Awaitable[T]],
                   retry: RetrySettings, deadline: float, rec: CallRecord,
                   first: Ambiguous) -> T:
    """Tries 2.. after an Ambiguous first try, by the SPEC section 5 rules (tenacity)."""
    remaining = max(0.0, deadline - time.monotonic())
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retry.attempts) | stop_before_delay(remaining),
        wait=wait_exponential_jitter(
            multiplier=retry.backoff_s, max=retry.backoff_max_s, jitter=retry.jitter_s
        ),
        retry=retry_if_exception_type(Ambiguous),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            number = attempt.retry_state.attempt_number
            if number == 1:
                raise first  # the try call_provider made: tenacity's attempt 1
            rec.tries = number
            metrics.child(metrics.RETRIES, provider, operation).inc()
            try:
                return await _one_try(provider, operation, factory)
            except NotCreated:
                raise  # a lookup's final proof: earlier unanswered lookups change nothing
            except RejectedSafe as exc:
                # the first try may have been processed: the call stays Ambiguous
                raise Ambiguous(
                    first.error_code, f"{first.message}; then {exc.error_code}"
                ) from exc
    raise AssertionError("unreachable: tenacity stops by raising")  # pragma: no cover
