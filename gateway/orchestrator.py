"""Payment orchestration: authorize across candidates, follow-ups on the authorizing provider.

Rules (SPEC section 5):

* The payment document (and each attempt, with its provider idempotency key) is
  written BEFORE the provider is called, so a crash leaves enough to resume.
* ``rejected_safe`` -> next candidate (failover); ``declined`` -> terminal, no failover;
  ``ambiguous`` -> retried with the same key, then an idempotent replay / lookup; still
  unresolved -> ``unknown``. Failover after ambiguity, and ``failed`` after it, only on
  :class:`~providers.base.NotCreated`: final proof from the provider (SPEC 5.1) -- each
  adapter's ``lookup`` docstring says what counts as proof there.
* Every attempt and follow-up operation carries a lease (``_live_until`` /
  ``lease_until``: the request deadline plus the provider's timeout) while the provider
  may still be working on it; reconciliation leaves it alone until then (SPEC 9.1).
* Capture / void / refund go to the authorizing provider only. A safe failure changes
  nothing (:class:`ProviderUnavailable`, HTTP 503); an ambiguous one leaves the payment
  ``capture_pending`` / ``void_pending`` or the refund ``unknown`` until resolved.
  Capture and void are write-ahead (``_operation``: op, amount, provider key, started_at,
  lease) and resumable: the merchant's retry with the same key resumes the operation;
  another request gets 409 only while the lease is live, after which it first finishes
  the stale operation (same provider key); finished operations stay listed by key
  (``_ops_done``) so a retry returns the operation's real outcome.
* Amount reservations and the one-operation-at-a-time lock are compare-and-swap writes
  of the payment document (:func:`mutate`).

The jobs live in their own modules, composed here: :mod:`gateway.authorize` (authorize,
attempts, cascade, failover), :mod:`gateway.follow_ups` (capture / void operations),
:mod:`gateway.refunds` (refunds), :mod:`gateway.resolution` (resolve / lookup after
ambiguity), on :mod:`gateway.orchestrator_base` (shared wiring and helpers) and
:mod:`gateway.operation_errors`.
"""

from __future__ import annotations

from gateway.follow_ups import OPS_DONE_LIMIT, _op_done, _op_key, finish_operation
from gateway.operation_errors import InvalidAmount, OperationError, ProviderUnavailable
from gateway.orchestrator_base import _count_mismatch
from gateway.refunds import Refunds, apply_refund_result
from gateway.resolution import Resolution

__all__ = [
    "OPS_DONE_LIMIT",
    "InvalidAmount",
    "OperationError",
    "Orchestrator",
    "ProviderUnavailable",
    "_count_mismatch",
    "_op_done",
    "_op_key",
    "apply_refund_result",
    "finish_operation",
]


class Orchestrator(Resolution, Refunds):
    """Authorize, capture / void, refund and resolve payments (see the module docstring)."""
