"""routing.breaker: per-provider circuit breakers on real pybreaker, shared through Redis."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pybreaker
import pytest
import redis

from gateway import metrics
from gateway.metrics import REGISTRY
from gateway.state_machine import PaymentStatus
from providers.base import Ambiguous, NotFound, NotSent, Outcome, ProviderResult, RejectedSafe
from routing.breaker import BreakerBoard, BreakerSettings, CircuitOpen, ProviderBreaker
from routing.breaker_sync import RedisBreakerSync

APPROVED = ProviderResult(Outcome.SUCCEEDED, PaymentStatus.AUTHORIZED, "ref_ok")
DECLINED = ProviderResult(Outcome.DECLINED, PaymentStatus.DECLINED, "ref_declined")


def pname() -> str:
    """A provider name of its own per test: the metrics registry is process-wide."""
    return f"prov_{uuid.uuid4().hex[:8]}"


def breaker(fail_max: int = 3, reset_timeout_s: float = 30.0) -> ProviderBreaker:
    """A breaker observed by the gateway's metrics, as gateway.app wires it."""
    name = pname()
    metrics.initialise([name])
    return ProviderBreaker(name, BreakerSettings(fail_max, reset_timeout_s),
                           on_state=metrics.circuit_state_changed)


async def call(b: ProviderBreaker, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Exactly the orchestrator's pattern around ONE provider call."""
    ticket = b.admit()
    try:
        result = await fn()
    except (RejectedSafe, Ambiguous) as fault:
        ticket.failure(fault)
        raise
    except BaseException:
        ticket.release()
        raise
    ticket.success()
    return result


def returns(value: Any) -> Callable[[], Awaitable[Any]]:
    async def fn() -> Any:
        return value
    return fn


def raises(exc: BaseException) -> Callable[[], Awaitable[Any]]:
    async def fn() -> Any:
        raise exc
    return fn


async def fail(b: ProviderBreaker, exc: BaseException | None = None) -> None:
    exc = exc if exc is not None else RejectedSafe("connection_refused")
    with pytest.raises(type(exc)) as got:
        await call(b, raises(exc))
    assert got.value is exc


async def wait_until(cond: Callable[[], bool], within: float, step: float = 0.005) -> float:
    """Poll ``cond`` until it holds; return the elapsed seconds, fail at the deadline."""
    start = time.monotonic()
    deadline = start + within
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(step)
    return time.monotonic() - start


async def wait_reset(b: ProviderBreaker) -> None:
    """Time must pass for the reset timeout; poll until a probe would be admitted."""
    await wait_until(lambda: b.available, within=b.settings.reset_timeout_s + 2.0)


def gauge(provider: str) -> float | None:
    return REGISTRY.get_sample_value("gateway_circuit_state", {"provider": provider})


def transitions(provider: str, state: str) -> float:
    v = REGISTRY.get_sample_value(
        "gateway_circuit_transitions_total", {"provider": provider, "state": state}
    )
    return v or 0.0


# ---------------------------------------------------------------------------------------
# One breaker
# ---------------------------------------------------------------------------------------


async def test_opens_after_fail_max_rejected_safe_and_ambiguous_both_count() -> None:
    b = breaker(fail_max=3)
    await fail(b, RejectedSafe("rate_limited", status=429))
    await fail(b, Ambiguous("timeout"))
    assert b.state == "closed" and b.fail_counter == 2
    tripping = Ambiguous("http_503", status=503)
    with pytest.raises(Ambiguous) as got:  # its own fault, not a CircuitBreakerError
        await call(b, raises(tripping))
    assert got.value is tripping
    assert not isinstance(got.value, pybreaker.CircuitBreakerError)
    assert b.state == "open"


async def test_decline_and_success_reset_the_counter() -> None:
    b = breaker(fail_max=3)
    await fail(b)
    await fail(b)
    assert await call(b, returns(DECLINED)) is DECLINED
    assert b.fail_counter == 0
    await fail(b)
    await fail(b)
    assert await call(b, returns(APPROVED)) is APPROVED
    assert b.fail_counter == 0
    await fail(b)
    await fail(b)
    assert b.state == "closed"  # never 3 consecutive failures


async def test_cancellation_is_neither_success_nor_failure() -> None:
    b = breaker(fail_max=2)
    await fail(b)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(call(b, hang))
    await asyncio.wait_for(started.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.fail_counter == 1  # not reset (no success), not incremented (no failure)
    assert b.state == "closed"
    await fail(b)
    assert b.state == "open"


async def test_open_rejects_without_calling() -> None:
    b = breaker(fail_max=1, reset_timeout_s=30.0)
    await fail(b)
    called = False

    async def provider_call() -> ProviderResult:
        nonlocal called
        called = True
        return APPROVED

    with pytest.raises(CircuitOpen) as got:
        await call(b, provider_call)
    assert not called
    assert isinstance(got.value, RejectedSafe)
    assert got.value.error_code == "circuit_open"
    assert got.value.provider == b.name
    assert 25.0 < got.value.retry_after_s <= 30.0
    assert not b.available


async def test_half_open_admits_exactly_one_probe_and_success_closes() -> None:
    b = breaker(fail_max=1, reset_timeout_s=0.2)
    await fail(b)
    await wait_reset(b)
    release = asyncio.Event()
    calls = 0

    async def slow_probe() -> ProviderResult:
        nonlocal calls
        calls += 1
        await release.wait()
        return APPROVED

    tasks = [asyncio.create_task(call(b, slow_probe)) for _ in range(10)]
    await wait_until(lambda: sum(t.done() for t in tasks) == 9, within=2.0)
    assert calls == 1
    assert b.state == "half_open"
    rejected = [t for t in tasks if t.done()]
    assert all(isinstance(t.exception(), CircuitOpen) for t in rejected)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count(APPROVED) == 1
    assert b.state == "closed"
    assert await call(b, returns(APPROVED)) is APPROVED


async def test_probe_failure_reopens_and_restarts_the_timer() -> None:
    b = breaker(fail_max=1, reset_timeout_s=0.2)
    await fail(b)
    first_open = b.opened_at
    await wait_reset(b)
    probe_fault = RejectedSafe("connection_refused")
    await fail(b, probe_fault)  # the probe returns its own fault too
    assert b.state == "open"
    assert b.opened_at is not None and first_open is not None and b.opened_at > first_open
    with pytest.raises(CircuitOpen):
        b.admit()
    await wait_reset(b)  # a new probe after a full new timeout
    assert await call(b, returns(DECLINED)) is DECLINED  # a decline is a healthy answer
    assert b.state == "closed"


async def test_cancelled_probe_frees_the_slot_and_stays_half_open() -> None:
    b = breaker(fail_max=1, reset_timeout_s=0.1)
    await fail(b)
    await wait_reset(b)
    ticket = b.admit()
    assert ticket.probe
    with pytest.raises(CircuitOpen):
        b.admit()
    ticket.release()
    assert b.state == "half_open"
    second = b.admit()
    assert second.probe
    second.success()
    assert b.state == "closed"


async def test_metrics_follow_the_transitions() -> None:
    b = breaker(fail_max=2, reset_timeout_s=0.1)
    assert gauge(b.name) == 0
    await fail(b)
    await fail(b)
    assert gauge(b.name) == 2
    assert transitions(b.name, "open") == 1
    await wait_reset(b)
    ticket = b.admit()
    assert gauge(b.name) == 1
    assert transitions(b.name, "half_open") == 1
    ticket.failure(Ambiguous("timeout"))
    assert gauge(b.name) == 2
    assert transitions(b.name, "open") == 2
    await wait_reset(b)
    b.admit().success()
    assert gauge(b.name) == 0
    assert transitions(b.name, "closed") == 1
    assert transitions(b.name, "half_open") == 2


async def test_stale_ticket_neither_extends_nor_closes() -> None:
    b = breaker(fail_max=1, reset_timeout_s=30.0)
    late_failure = b.admit()
    late_success = b.admit()
    await fail(b)  # opens
    opened = b.opened_at
    late_failure.failure(Ambiguous("timeout"))
    late_success.success()
    assert b.state == "open" and b.opened_at == opened


async def test_guard_context_manager_classifies_outcomes() -> None:
    b = breaker(fail_max=2)
    with pytest.raises(RejectedSafe):
        async with b.guard():
            raise RejectedSafe("connection_refused")
    assert b.fail_counter == 1
    with pytest.raises(RejectedSafe):  # the provider proved nothing exists: an answer
        async with b.guard():
            raise NotFound("no such payment_intent")
    assert b.fail_counter == 0
    with pytest.raises(Ambiguous):
        async with b.guard():
            raise Ambiguous("timeout")
    with pytest.raises(asyncio.CancelledError):
        async with b.guard():
            raise asyncio.CancelledError
    with pytest.raises(KeyError):  # a bug is not the provider's health: neither
        async with b.guard():
            raise KeyError("x")
    assert b.fail_counter == 1
    async with b.guard():
        result = DECLINED
    assert result is DECLINED and b.fail_counter == 0
    await fail(b)
    with pytest.raises(Ambiguous):
        async with b.guard():
            raise Ambiguous("http_502")
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        async with b.guard():
            pytest.fail("must not run while open")


async def test_board_without_sync() -> None:
    names = [pname(), pname()]
    board = BreakerBoard({names[0]: BreakerSettings(1, 30.0), names[1]: BreakerSettings()})
    await board.start()
    try:
        await fail(board[names[0]])
        assert board.states() == {names[0]: "open", names[1]: "closed"}
        assert names[1] in board and len(board) == 2
    finally:
        await board.close()


# ---------------------------------------------------------------------------------------
# Sharing through Redis
# ---------------------------------------------------------------------------------------


async def test_open_and_close_propagate_between_replicas(redis_url: str) -> None:
    p = pname()
    settings = {p: BreakerSettings(fail_max=2, reset_timeout_s=0.5)}
    board1 = BreakerBoard(settings, RedisBreakerSync(redis_url))
    board2 = BreakerBoard(settings, RedisBreakerSync(redis_url))
    await board1.start()
    await board2.start()
    try:
        await fail(board1[p])
        await fail(board1[p])
        assert board1[p].state == "open"
        opened_ms = board1[p].record.opened_at_ms
        took_open = await wait_until(lambda: board2[p].state == "open", within=2.0)
        assert took_open < 1.0, f"open took {took_open:.3f} s to reach replica 2"
        with pytest.raises(CircuitOpen):
            board2[p].admit()
        # the reset timeout runs from the original open on every replica
        assert board2[p].record.opened_at_ms == opened_ms
        remote_opened = board2[p].opened_at
        assert remote_opened is not None
        assert abs(remote_opened.timestamp() * 1000 - opened_ms) < 1.0
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            row = client.hgetall(f"gw:breaker:{{{p}}}")
        finally:
            client.close()
        assert row["state"] == "open" and int(row["opened_at"]) == opened_ms

        await wait_reset(board1[p])
        board1[p].admit().success()  # probe on replica 1 closes the circuit
        assert board1[p].state == "closed"
        took_close = await wait_until(lambda: board2[p].state == "closed", within=2.0)
        assert took_close < 1.0, f"close took {took_close:.3f} s to reach replica 2"
        assert await call(board2[p], returns(APPROVED)) is APPROVED
    finally:
        await board1.close()
        await board2.close()


async def test_replica_started_later_sees_an_open_circuit(redis_url: str) -> None:
    p = pname()
    settings = {p: BreakerSettings(fail_max=1, reset_timeout_s=30.0)}
    board1 = BreakerBoard(settings, RedisBreakerSync(redis_url))
    await board1.start()
    try:
        await fail(board1[p])
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await wait_until(lambda: client.hget(f"gw:breaker:{{{p}}}", "state") == "open", 2.0)
        finally:
            client.close()
        board2 = BreakerBoard(settings, RedisBreakerSync(redis_url))
        await board2.start()
        try:
            assert board2.states() == {p: "open"}  # applied by start(), before any payment
            assert board2[p].retry_after_s() > 25.0
        finally:
            await board2.close()
    finally:
        await board1.close()


async def test_failed_probe_elsewhere_reopens_a_half_open_replica(redis_url: str) -> None:
    p = pname()
    settings = {p: BreakerSettings(fail_max=1, reset_timeout_s=0.3)}
    board1 = BreakerBoard(settings, RedisBreakerSync(redis_url))
    board2 = BreakerBoard(settings, RedisBreakerSync(redis_url))
    await board1.start()
    await board2.start()
    try:
        await fail(board1[p])
        await wait_until(lambda: board2[p].state == "open", within=1.0)
        await wait_reset(board1[p])
        probe2 = board2[p].admit()  # replica 2 probes and waits for its answer
        probe1 = board1[p].admit()
        assert probe1.probe and probe2.probe
        probe1.failure(RejectedSafe("connection_refused"))  # replica 1's probe fails
        reopened_ms = board1[p].record.opened_at_ms
        await wait_until(lambda: board2[p].record.opened_at_ms == reopened_ms, within=1.0)
        assert board2[p].state == "open"
        probe2.success()  # stale: admitted before the newer open, changes nothing
        assert board2[p].state == "open"
    finally:
        await board1.close()
        await board2.close()


async def test_redis_unreachable_breakers_work_locally(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = pname()
    board = BreakerBoard(
        {p: BreakerSettings(fail_max=2, reset_timeout_s=0.2)},
        RedisBreakerSync(f"redis://127.0.0.1:{port}/0", refresh_s=0.05),
    )
    caplog.set_level(logging.WARNING, logger="routing.breaker")
    t0 = time.monotonic()
    await board.start()  # no exception
    assert time.monotonic() - t0 < 2.0
    try:
        assert await call(board[p], returns(APPROVED)) is APPROVED
        await fail(board[p])
        await fail(board[p])  # transition -> fire-and-forget publish fails in background
        assert board[p].state == "open"
        with pytest.raises(CircuitOpen):
            board[p].admit()
        await wait_reset(board[p])
        t1 = time.monotonic()
        assert await call(board[p], returns(DECLINED)) is DECLINED
        assert time.monotonic() - t1 < 0.05  # no Redis wait on the payment path
        assert board.states() == {p: "closed"}
        assert "Redis unavailable" in caplog.text  # logged by start(), once per outage
        assert caplog.text.count("Redis unavailable") == 1
    finally:
        await board.close()


async def test_state_lost_from_redis_is_written_again(redis_url: str) -> None:
    p = pname()
    board = BreakerBoard({p: BreakerSettings(fail_max=1)}, RedisBreakerSync(redis_url))
    await board.start()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await fail(board[p])
        key = f"gw:breaker:{{{p}}}"
        await wait_until(lambda: client.hget(key, "state") == "open", within=1.0)
        client.flushdb()  # e.g. Redis restarted, or the write was lost while it was down
        await wait_until(lambda: client.hget(key, "state") == "open", within=1.0)
    finally:
        client.close()
        await board.close()


async def test_breaker_classifies_by_fault_type_not_by_code() -> None:
    """NotFound is an answer (success), NotSent says nothing (released); a code string
    alone decides nothing: a plain RejectedSafe that happens to say "not_found" is a failure."""
    b = breaker(fail_max=5)
    for fault, failures in ((NotSent("invalid_amount"), 0), (NotFound(), 0),
                            (RejectedSafe("not_found"), 1), (NotSent("circuit_open"), 1)):
        with pytest.raises(RejectedSafe):
            async with b.guard():
                raise fault
        assert b.fail_counter == failures, fault
