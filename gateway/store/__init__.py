"""Payment, idempotency and lease storage (SPEC section 10).

``make_store(url)`` picks the backend: ``sqlite:///...`` -> :class:`SQLiteStore`,
``redis://...`` / ``rediss://...`` -> :class:`RedisStore`. Call ``await store.open()``
before use and ``await store.close()`` at shutdown.

Semantics both backends share (``tests/unit/gateway/store/test_store.py`` runs one suite
against both):

Payments
  * ``insert_payment`` stores ``version = 1`` (also set on the caller's ``doc``); the doc
    needs a string ``id``, a string ``status`` and a numeric ``updated_at``.
    :class:`AlreadyExists` if the id exists.
  * ``update_payment`` is a CAS on ``version``: on success the stored doc has
    ``version = expected_version + 1`` (also set on the caller's ``doc``) and the events
    were appended in the same atomic step; on failure nothing is written (no events
    either) and the caller's ``doc`` is left as it was.
  * ``get_payment`` returns a fresh dict on every call: mutating it never changes the
    store (nor does mutating a doc after inserting it).
  * ``list_events`` returns events in append order (the insert's events first); an
    unknown id gives ``[]``.
  * ``find_by_provider_reference`` answers from the payment's current doc: after the
    reference changes, the old one no longer resolves.
  * ``query_payments`` searches the reconciliation index only: payments whose status is
    in :data:`RECONCILE_STATUSES` or whose doc has ``"needs_reconcile": true``. Within
    it: ``status in query.statuses``, ``updated_at < query.updated_before``,
    ``provider`` if given, ``doc[k] == v`` for each ``extra`` item; oldest
    ``updated_at`` first (then id), at most ``limit``.

  * ``search_payments`` (SPEC 3.1) pages through one merchant's payments newest first,
    ordered by ``(created_at desc, id desc)``; filters ``reference``, ``status``,
    ``provider``, ``created_gte`` <= created_at < ``created_lt``; ``starting_after``
    ``(created_at, id)`` continues strictly after that position; at most ``limit`` docs
    plus ``has_more``. Docs without a string ``merchant_id`` or a numeric ``created_at``
    are not searchable. Its indexes change in the same atomic write as the payment.

Idempotency (``claim_idempotency(scope, key, fingerprint, lease_s, ttl_s)``)
  * No record, or an expired one (past its ttl: it behaves as absent) -> a new
    ``in_progress`` record with ``lease_until = now + lease_s``, kept
    ``max(ttl_s, lease_s)`` -> ``NEW``.
  * Otherwise, checked in this order: a different fingerprint -> ``MISMATCH``; completed
    -> ``COMPLETED`` (``record.response`` to replay); ``lease_until > now`` ->
    ``IN_PROGRESS`` with ``retry_after = max(1, ceil(lease_until - now))`` seconds;
    lease lapsed -> the caller takes it over: ``lease_until = now + lease_s``, same
    ``created_at``, expiry extended to at least ``now + max(ttl_s, lease_s)`` ->
    ``TAKEN_OVER``.
  * Every outcome carries the record as it is after the call.
  * ``complete_idempotency`` sets ``state = "completed"`` and the response and keeps
    the record ``ttl_s`` from now; on an absent/expired record it does nothing (there is
    no fingerprint to keep; the next claim is ``NEW``).
  * ``release_idempotency`` deletes the record (the next claim is ``NEW``).
  * ``claim_idempotency(..., insert=PaymentInsert(doc, events))`` also inserts the payment
    in the same atomic step when the caller gets the claim (``NEW`` / ``TAKEN_OVER``) and
    no payment with that id exists (``claim.created``); ``update_payment(...,
    completion=Completion(scope, key, response, ttl_s))`` completes the record in the
    same atomic step as a successful CAS (``completion.written``). A new payment is thus
    two writes: the claim with the payment and its first attempt (before the provider
    call) and the update with the provider's answer and the stored response.
  * There is no owner token: completing or releasing does not check who holds the lease.

Leases
  * ``acquire_lease`` takes a free or expired lease, or renews (new expiry
    ``now + ttl_s``) the one ``owner`` already holds; False while another owner's lease
    is live. ``release_lease`` by a non-owner is a no-op.

Clocks: SQLite uses this host's ``time.time()``; Redis uses the Redis server's ``TIME``
(one clock for all replicas), so idempotency times from Redis are server time.

Errors: backend failures raise :class:`StoreError`; ``ping()`` returns False instead.

Pools: both backends bound how many requests use them at once and make a request wait
for its place at its first store operation, never later (:mod:`gateway.store.pool`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from gateway.store.base import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT_S,
    RECONCILE_STATUSES,
    AlreadyExists,
    Claim,
    ClaimOutcome,
    EventSearch,
    IdempotencyRecord,
    PaymentQuery,
    PaymentSearch,
    Store,
    StoreError,
    in_reconcile_index,
)
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore

__all__ = [
    "RECONCILE_STATUSES",
    "AlreadyExists",
    "Claim",
    "ClaimOutcome",
    "EventSearch",
    "IdempotencyRecord",
    "PaymentQuery",
    "PaymentSearch",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "in_reconcile_index",
    "make_store",
    "sqlite_path",
]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL (SQLAlchemy convention).

    ``sqlite:///var/gw.db`` -> ``var/gw.db`` (relative to the working directory);
    ``sqlite:////var/lib/gw.db`` -> ``/var/lib/gw.db`` (absolute).
    """
    if not url.startswith(_SQLITE_PREFIX):
        raise ValueError(f"not a sqlite:/// store URL: {url!r}")
    rest = url[len(_SQLITE_PREFIX) :]
    if not rest or rest.endswith("/") or "?" in rest:
        raise ValueError(
            f"sqlite store URL needs a file path, e.g. sqlite:///data/gateway.db: {url!r}"
        )
    if rest.startswith("//"):
        rest = "/" + rest.lstrip("/")
    return Path(rest)


def make_store(url: str, *, pool_size: int = DEFAULT_POOL_SIZE,
               pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S) -> Store:
    """Build (not open) the store for ``url``.

    * ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` -> SQLiteStore
    * ``redis://host:port/db`` (or ``rediss://``) -> RedisStore

    ``pool_size`` / ``pool_timeout_s``: the per-request budget (:mod:`gateway.store.pool`).
    Raises ValueError for anything else.
    """
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme == "sqlite":
        return SQLiteStore(sqlite_path(url), pool_size=pool_size, pool_timeout_s=pool_timeout_s)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, pool_size=pool_size, pool_timeout_s=pool_timeout_s)
    raise ValueError(
        f"unsupported store URL {url!r}: expected sqlite:///path/to/file.db or redis://host:port/db"
    )
