"""The canonical state machine: table checks and property-based event sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.state_machine import (
    CORRECTION_EDGES,
    RANK,
    REFUSAL_EDGES,
    TERMINAL,
    TRANSITIONS,
    Applied,
    Ignored,
    InvariantError,
    Ledger,
    PaymentStatus,
    Snapshot,
    StatusEvent,
    apply_event,
    can_transition,
    check_capture,
    reserve_refund,
    settle_refund,
)

S = PaymentStatus

SPEC_EDGES = {
    S.PENDING: {S.REQUIRES_ACTION, S.PROCESSING, S.UNKNOWN, S.AUTHORIZED, S.CAPTURED, S.DECLINED,
                S.FAILED},
    S.REQUIRES_ACTION: {S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.EXPIRED},
    S.PROCESSING: {S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.VOIDED,
                   S.DECLINED, S.FAILED},
    S.UNKNOWN: {S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.VOIDED, S.DECLINED,
                S.FAILED},
    S.AUTHORIZED: {S.CAPTURE_PENDING, S.CAPTURED, S.VOID_PENDING, S.VOIDED, S.EXPIRED},
    S.CAPTURE_PENDING: {S.CAPTURED, S.AUTHORIZED},
    S.VOID_PENDING: {S.VOIDED, S.AUTHORIZED},
    S.CAPTURED: {S.PARTIALLY_REFUNDED, S.REFUNDED},
    S.PARTIALLY_REFUNDED: {S.PARTIALLY_REFUNDED, S.REFUNDED},
}


def test_table_is_exactly_the_spec() -> None:
    for status in S:
        assert set(TRANSITIONS[status]) == SPEC_EDGES.get(status, set()), status


def test_terminal_statuses_have_no_exits() -> None:
    assert {S.REFUNDED, S.VOIDED, S.DECLINED, S.FAILED, S.EXPIRED} == TERMINAL
    for status in TERMINAL:
        assert not TRANSITIONS[status]


@pytest.mark.parametrize(("terminal", "target"), sorted(CORRECTION_EDGES))
def test_money_moved_after_failed_or_declined_is_applied_as_a_correction(
    terminal: PaymentStatus, target: PaymentStatus
) -> None:
    snap = Snapshot(terminal, Ledger(amount=500))
    result = apply_event(snap, StatusEvent(target, authorized=500))
    assert isinstance(result, Applied) and result.correction
    assert result.snapshot.status == target and result.snapshot.ledger.authorized == 500
    if target == S.CAPTURED:
        assert result.snapshot.ledger.captured == 500


@pytest.mark.parametrize("terminal", [S.FAILED, S.DECLINED])
@pytest.mark.parametrize("target", [S.VOIDED, S.EXPIRED, S.PROCESSING, S.REQUIRES_ACTION,
                                    S.UNKNOWN, S.CAPTURE_PENDING])
def test_no_correction_without_evidence_that_money_moved(
    terminal: PaymentStatus, target: PaymentStatus
) -> None:
    result = apply_event(Snapshot(terminal, Ledger(amount=500)), StatusEvent(target))
    assert isinstance(result, Ignored)


def test_corrections_never_leave_a_hold_or_a_capture() -> None:
    for src, dst in CORRECTION_EDGES:
        assert src in (S.FAILED, S.DECLINED) and dst in (S.AUTHORIZED, S.CAPTURED)


def test_every_edge_moves_forward_except_refusals_and_self_loops() -> None:
    for src, targets in TRANSITIONS.items():
        for dst in targets:
            if (src, dst) in REFUSAL_EDGES or src == dst:
                continue
            assert RANK[dst] >= RANK[src], (src, dst)


def fresh(amount: int = 1000) -> Snapshot:
    return Snapshot(S.PENDING, Ledger(amount=amount))


def test_late_authorization_after_capture_is_ignored() -> None:
    snap = fresh()
    snap = apply_event(snap, StatusEvent(S.AUTHORIZED)).snapshot
    snap = apply_event(snap, StatusEvent(S.CAPTURED, captured=600)).snapshot
    result = apply_event(snap, StatusEvent(S.AUTHORIZED))
    assert isinstance(result, Ignored)
    assert "stale" in result.reason
    assert result.snapshot.status == S.CAPTURED
    assert result.snapshot.ledger.captured == 600


def test_capture_more_than_authorized_is_ignored() -> None:
    snap = apply_event(fresh(), StatusEvent(S.AUTHORIZED, authorized=500)).snapshot
    result = apply_event(snap, StatusEvent(S.CAPTURED, captured=501))
    assert isinstance(result, Ignored)
    assert "amounts rejected" in result.reason


def test_capture_pending_never_counts_as_captured() -> None:
    """#13 item 6: a requested capture is not money moved until the provider confirms."""
    snap = apply_event(fresh(), StatusEvent(S.AUTHORIZED, authorized=1000)).snapshot
    pending = apply_event(snap, StatusEvent(S.CAPTURE_PENDING, captured=600))
    assert isinstance(pending, Applied) and pending.snapshot.ledger.captured == 0
    done = apply_event(pending.snapshot, StatusEvent(S.CAPTURED, captured=600))
    assert isinstance(done, Applied) and done.snapshot.ledger.captured == 600


def test_check_capture_bounds() -> None:
    snap = apply_event(fresh(), StatusEvent(S.AUTHORIZED)).snapshot
    check_capture(snap, 1000)
    with pytest.raises(InvariantError):
        check_capture(snap, 1001)
    with pytest.raises(InvariantError):
        check_capture(snap, 0)
    with pytest.raises(InvariantError):
        check_capture(fresh(), 10)


def test_refund_reservation_and_settlement() -> None:
    snap = apply_event(fresh(), StatusEvent(S.CAPTURED, captured=800)).snapshot
    snap = reserve_refund(snap, 300)
    with pytest.raises(InvariantError):
        reserve_refund(snap, 501)  # 300 reserved + 501 > 800
    snap = reserve_refund(snap, 500)
    snap = settle_refund(snap, 300, succeeded=True)
    assert snap.status == S.PARTIALLY_REFUNDED
    snap = settle_refund(snap, 500, succeeded=False)  # released
    assert snap.ledger.refundable == 500
    snap = settle_refund(reserve_refund(snap, 500), 500, succeeded=True)
    assert snap.status == S.REFUNDED
    assert snap.ledger.refunded == 800


# ------------------------------------------------------------------ properties

statuses = st.sampled_from(list(S))
amounts = st.one_of(st.none(), st.integers(min_value=0, max_value=1500))
events = st.builds(StatusEvent, statuses, amounts, amounts)
ops = st.one_of(
    st.tuples(st.just("event"), events),
    st.tuples(st.just("reserve"), st.integers(min_value=-5, max_value=1500)),
    st.tuples(st.just("settle"), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(amount=st.integers(min_value=1, max_value=1000), sequence=st.lists(ops, max_size=40))
def test_random_sequences_keep_every_invariant(amount: int, sequence: list) -> None:
    snap = fresh(amount)
    reserved: list[int] = []
    for kind, arg in sequence:
        before = snap
        if kind == "event":
            result = apply_event(snap, arg)
            if isinstance(result, Applied):
                edge = (before.status, result.snapshot.status)
                assert result.correction == (edge in CORRECTION_EDGES)
                assert result.correction or can_transition(*edge)
                assert result.previous == before.status
                forward = RANK[result.snapshot.status] >= RANK[before.status]
                assert forward or edge in REFUSAL_EDGES or result.correction
            else:
                assert result.snapshot == before
            snap = result.snapshot
        elif kind == "reserve":
            try:
                snap = reserve_refund(snap, arg)
                reserved.append(arg)
            except InvariantError:
                assert snap == before
        elif reserved:
            amt = reserved.pop(0)
            snap = settle_refund(snap, amt, succeeded=arg)
            if snap.status != before.status:
                assert can_transition(before.status, snap.status)
        led = snap.ledger
        assert 0 <= led.captured <= led.authorized <= led.amount
        assert led.refunded + led.refund_pending <= led.captured
        if before.status in TERMINAL and snap.status != before.status:
            # the only way out of a terminal status: evidence that money moved after all
            assert (before.status, snap.status) in CORRECTION_EDGES
