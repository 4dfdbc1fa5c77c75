"""The canonical payment state machine (SPEC section 4).

Everything that changes a payment's status or amounts goes through this module:

* :class:`PaymentStatus` / :class:`RefundStatus` -- the canonical statuses (defined in
  :mod:`providers.statuses`);
* :data:`TRANSITIONS` -- the allowed-transition table (anything else is rejected);
* :class:`Ledger` -- the amounts of one payment and their invariants
  (captured <= authorized <= amount; refunds pending + succeeded <= captured);
* :func:`apply_event` -- forward-only application of a status report coming from a
  provider response, a webhook or reconciliation. It never raises for a stale or
  disallowed event: it returns :class:`Ignored` so the caller can audit it.

The functions are pure: they take a snapshot and return a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# re-exported: the gateway names them from here
from providers.statuses import PaymentStatus as PaymentStatus
from providers.statuses import RefundStatus as RefundStatus

S = PaymentStatus

TERMINAL: frozenset[PaymentStatus] = frozenset(
    {S.REFUNDED, S.VOIDED, S.DECLINED, S.FAILED, S.EXPIRED}
)

_FROM_UNRESOLVED = frozenset(
    {S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.VOIDED, S.DECLINED, S.FAILED}
)

TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    S.PENDING: frozenset(
        {S.REQUIRES_ACTION, S.PROCESSING, S.UNKNOWN, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED}
    ),
    S.REQUIRES_ACTION: frozenset(
        {S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.EXPIRED}
    ),
    S.PROCESSING: _FROM_UNRESOLVED,
    S.UNKNOWN: _FROM_UNRESOLVED,
    S.AUTHORIZED: frozenset({S.CAPTURE_PENDING, S.CAPTURED, S.VOID_PENDING, S.VOIDED, S.EXPIRED}),
    S.CAPTURE_PENDING: frozenset({S.CAPTURED, S.AUTHORIZED}),
    S.VOID_PENDING: frozenset({S.VOIDED, S.AUTHORIZED}),
    S.CAPTURED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.REFUNDED: frozenset(),
    S.VOIDED: frozenset(),
    S.DECLINED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}

#: Progress rank used to explain why an event is stale. Edges in TRANSITIONS go to a
#: higher rank, except the explicit "modification refused" edges back to authorized
#: and the self-loops on processing / partially_refunded.
RANK: dict[PaymentStatus, int] = {
    S.PENDING: 0,
    S.UNKNOWN: 1,
    S.PROCESSING: 1,
    S.REQUIRES_ACTION: 1,
    S.AUTHORIZED: 3,
    S.CAPTURE_PENDING: 4,
    S.VOID_PENDING: 4,
    S.CAPTURED: 5,
    S.PARTIALLY_REFUNDED: 6,
    S.REFUNDED: 7,
    S.VOIDED: 7,
    S.DECLINED: 7,
    S.FAILED: 7,
    S.EXPIRED: 7,
}

#: Edges that go back in rank on purpose: the provider refused a modification.
REFUSAL_EDGES: frozenset[tuple[PaymentStatus, PaymentStatus]] = frozenset(
    {(S.CAPTURE_PENDING, S.AUTHORIZED), (S.VOID_PENDING, S.AUTHORIZED)}
)

#: Corrections: a later definite provider answer that money moved (an authorization or a
#: capture) after the gateway or the provider reported ``failed`` / ``declined``. Applied
#: (and audited and counted as a correction), never the other way round: evidence that
#: money moved may overturn "no money moved", evidence of nothing can never overturn a hold.
CORRECTION_EDGES: frozenset[tuple[PaymentStatus, PaymentStatus]] = frozenset(
    {(S.FAILED, S.AUTHORIZED), (S.FAILED, S.CAPTURED),
     (S.DECLINED, S.AUTHORIZED), (S.DECLINED, S.CAPTURED)}
)

#: Unresolved statuses, the one definition: reconciliation looks at payments in these
#: (the stores' reconciliation index, the unresolved gauge, crash recovery derive from it).
UNRESOLVED: frozenset[PaymentStatus] = frozenset(
    {S.PENDING, S.UNKNOWN, S.PROCESSING, S.CAPTURE_PENDING, S.VOID_PENDING}
)
#: A follow-up (capture or void) was sent and its outcome is not known yet: the payment
#: waits on that operation (unresolved), and a refusal returns it to authorized.
MODIFICATION_PENDING: frozenset[PaymentStatus] = frozenset({S.CAPTURE_PENDING, S.VOID_PENDING})
#: A refund in these is not settled yet (reconciliation asks about it).
OPEN_REFUND_STATUSES: frozenset[RefundStatus] = frozenset(
    {RefundStatus.PENDING, RefundStatus.UNKNOWN})
#: A refund in these is settled: a final answer, never changed afterwards.
SETTLED_REFUND_STATUSES: frozenset[RefundStatus] = frozenset(RefundStatus) - OPEN_REFUND_STATUSES
#: Unresolved because the authorization's outcome is not known yet (the follow-ups
#: capture_pending / void_pending wait on their own operation instead).
AUTHORIZATION_UNRESOLVED: frozenset[PaymentStatus] = UNRESOLVED - MODIFICATION_PENDING


def can_transition(current: PaymentStatus, target: PaymentStatus) -> bool:
    return target in TRANSITIONS[current]


class InvariantError(ValueError):
    """An amount change would break an invariant; nothing was applied."""


@dataclass(frozen=True)
class Ledger:
    """The money of one payment, in minor units."""

    amount: int
    authorized: int = 0
    captured: int = 0
    refunded: int = 0
    refund_pending: int = 0

    def check(self) -> Ledger:
        values = (self.amount, self.authorized, self.captured, self.refunded, self.refund_pending)
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
            raise InvariantError("amounts must be non-negative integers")
        if self.authorized > self.amount:
            raise InvariantError("authorized exceeds the payment amount")
        if self.captured > self.authorized:
            raise InvariantError("captured exceeds authorized")
        if self.refunded + self.refund_pending > self.captured:
            raise InvariantError("refunds exceed captured")
        return self

    @property
    def refundable(self) -> int:
        return self.captured - self.refunded - self.refund_pending


@dataclass(frozen=True)
class Snapshot:
    status: PaymentStatus
    ledger: Ledger


@dataclass(frozen=True)
class StatusEvent:
    """A report that the payment is now in ``status``.

    ``authorized`` / ``captured`` carry the amounts the reporter knows of; ``None``
    means "not stated" and the ledger keeps (or derives) its value.
    """

    status: PaymentStatus
    authorized: int | None = None
    captured: int | None = None


@dataclass(frozen=True)
class Applied:
    snapshot: Snapshot
    previous: PaymentStatus
    correction: bool = False  # a CORRECTION_EDGES edge: "no money moved" was wrong


@dataclass(frozen=True)
class Ignored:
    snapshot: Snapshot
    reason: str
    #: the payment already has the reported status (a confirmation, not a stale report)
    already: bool = False


def _ledger_for(snapshot: Snapshot, event: StatusEvent) -> Ledger:
    led = snapshot.ledger
    authorized = led.authorized if event.authorized is None else event.authorized
    captured = led.captured if event.captured is None else event.captured
    target = event.status
    if target in (S.AUTHORIZED, S.CAPTURE_PENDING, S.VOID_PENDING) and authorized == 0:
        authorized = led.amount
    if target == S.CAPTURE_PENDING:
        captured = led.captured  # requested, not confirmed: amount_capture_pending shows it
    if target == S.CAPTURED:
        if authorized == 0:
            authorized = led.amount
        if captured == 0:
            captured = authorized
    if target in (S.VOIDED, S.EXPIRED) and captured:
        raise InvariantError("a voided or expired payment cannot hold captured funds")
    if target in (S.DECLINED, S.FAILED):
        authorized, captured = 0, 0
    return replace(led, authorized=authorized, captured=captured).check()


def apply_event(snapshot: Snapshot, event: StatusEvent) -> Applied | Ignored:
    """Apply ``event`` if it is an allowed forward edge; otherwise ignore it.

    Refund-driven statuses (partially_refunded / refunded) are set by
    :func:`settle_refund`, never by a bare status event.
    """
    current, target = snapshot.status, event.status
    if target == current and target not in (S.PROCESSING, S.PARTIALLY_REFUNDED):
        return Ignored(snapshot, f"already {current}", already=True)
    if target in (S.PARTIALLY_REFUNDED, S.REFUNDED):
        return Ignored(snapshot, "refund statuses follow from refunds, not from status events")
    correction = (current, target) in CORRECTION_EDGES
    if not correction and not can_transition(current, target):
        why = "stale" if RANK[target] <= RANK[current] else "not allowed"
        return Ignored(snapshot, f"{why}: {current} -> {target}")
    try:
        ledger = _ledger_for(snapshot, event)
    except InvariantError as exc:
        return Ignored(snapshot, f"amounts rejected: {exc}")
    return Applied(Snapshot(target, ledger), current, correction)


# ----------------------------------------------------------------- captures & refunds


def check_capture(snapshot: Snapshot, amount: int) -> None:
    """Raise InvariantError unless ``amount`` may be captured now."""
    if snapshot.status != S.AUTHORIZED:
        raise InvariantError(f"cannot capture a payment in status {snapshot.status}")
    if amount <= 0 or amount > snapshot.ledger.authorized:
        raise InvariantError("capture amount must be between 1 and the authorized amount")


def reserve_refund(snapshot: Snapshot, amount: int) -> Snapshot:
    """Reserve ``amount`` for a new refund (it counts against the refundable amount)."""
    if snapshot.status not in (S.CAPTURED, S.PARTIALLY_REFUNDED):
        raise InvariantError(f"cannot refund a payment in status {snapshot.status}")
    if amount <= 0:
        raise InvariantError("refund amount must be positive")
    if amount > snapshot.ledger.refundable:
        raise InvariantError("refund amount exceeds the refundable amount")
    led = replace(snapshot.ledger, refund_pending=snapshot.ledger.refund_pending + amount).check()
    return Snapshot(snapshot.status, led)


def settle_refund(snapshot: Snapshot, amount: int, succeeded: bool) -> Snapshot:
    """Turn a reserved refund into succeeded (moves the status) or release it (failed)."""
    led = snapshot.ledger
    if amount > led.refund_pending:
        raise InvariantError("settling more than is reserved")
    if not succeeded:
        return Snapshot(snapshot.status, replace(led, refund_pending=led.refund_pending - amount))
    led = replace(
        led, refund_pending=led.refund_pending - amount, refunded=led.refunded + amount
    ).check()
    status = S.REFUNDED if led.refunded == led.captured else S.PARTIALLY_REFUNDED
    if not can_transition(snapshot.status, status):
        raise InvariantError(f"cannot move {snapshot.status} -> {status}")
    return Snapshot(status, led)
