"""Idempotency-Key handling for every POST under /v1 (SPEC section 3).

* key: required, 1-255 printable ASCII; scope is (merchant, key);
* fingerprint: method + path + canonical JSON body;
* same key + fingerprint, finished -> same HTTP status, resource's CURRENT state,
  ``Idempotent-Replayed: true``; nothing is sent to a provider again;
* different fingerprint -> 422 ``idempotency_key_reused``;
* still running (live lease) -> 409 ``idempotency_request_in_progress`` + Retry-After;
* only final answers are remembered (the IETF httpapi draft; Stripe does the same):
  a created/changed resource (2xx), 422, and a 409 that is a definite answer about the
  resource (e.g. "cannot void a captured payment"). NOT remembered, so the same key may
  be retried: a 409 for a concurrent operation (:data:`TRANSIENT_CONFLICTS`), a 503
  (provider unavailable, nothing changed), 404 and other errors;
* a crashed owner's lease lapses after the request deadline; the next retry takes
  the claim over and resumes from the write-ahead payment record.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.api.errors import ApiError
from gateway.logs import contains_card_number
from gateway.store import ClaimOutcome, Store
from gateway.store.base import Completion, PaymentInsert

_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
#: 409 codes that say "not now", not "no": never stored as the key's answer.
TRANSIENT_CONFLICTS = frozenset({"operation_in_progress", "idempotency_request_in_progress"})


#: canonical JSON of a body (one encoder, not one built per request)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    canonical = _CANONICAL.encode(body)
    return hashlib.sha256(f"{method.upper()}\n{path}\n{canonical}".encode()).hexdigest()


def require_key(value: str | None) -> str:
    if value is None:
        raise ApiError(400, "invalid_request", "idempotency_key_missing",
                       "the Idempotency-Key header is required on every POST",
                       param="Idempotency-Key")
    if not _KEY.match(value):
        raise ApiError(400, "invalid_request", "idempotency_key_invalid",
                       "Idempotency-Key must be 1-255 printable ASCII characters",
                       param="Idempotency-Key")
    if contains_card_number(value):  # it would be stored as the key: refuse it first
        raise ApiError(400, "invalid_request", "raw_card_data_rejected",
                       "the Idempotency-Key must not contain a card number",
                       param="Idempotency-Key")
    return value


@dataclass(frozen=True)
class Execution:
    merchant_id: str
    key: str
    fingerprint: str
    recovered: bool  # the claim was taken over from a crashed/expired owner
    #: the claim also wrote the request's new payment (``prepare`` of run_idempotent)
    created: bool = False
    #: the request's answer, for its last payment write to store with it (a success not
    #: written that way is completed by run_idempotent after ``execute``)
    completion: Completion | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Outcome:
    status: int
    payment_id: str
    #: The payment as the request's last write stored it (answered without reading it
    #: again); None: read it. Not part of the stored idempotency record.
    payment: dict[str, Any] | None = field(default=None, compare=False, repr=False)


async def run_idempotent(
    store: Store,
    execution_key: tuple[str, str, str],
    lease_s: float,
    ttl_s: float,
    execute: Callable[[Execution], Awaitable[Outcome]],
    replay: Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]],
    prepare: Callable[[], PaymentInsert | None] | None = None,
    answer: tuple[int, str] | None = None,
) -> tuple[int, dict[str, Any] | Outcome, bool]:
    """Claim, then execute or replay. Returns (status, body-or-outcome, replayed).

    ``prepare``: the new payment the request creates, written with the claim when the
    claim is the caller's (``Execution.created``); None from it: nothing is written with
    the claim. ``answer``: (status, payment id) of a success known before ``execute``
    runs; its last write may store it (``Execution.completion``)."""
    merchant_id, key, fp = execution_key
    insert = prepare() if prepare is not None else None
    claim = await store.claim_idempotency(merchant_id, key, fp, lease_s, ttl_s, insert)
    if claim.outcome == ClaimOutcome.MISMATCH:
        metrics.IDEMPOTENCY.labels("mismatch").inc()
        raise ApiError(422, "idempotency_conflict", "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request",
                       param="Idempotency-Key")
    if claim.outcome == ClaimOutcome.IN_PROGRESS:
        metrics.IDEMPOTENCY.labels("conflict").inc()
        raise ApiError(409, "idempotency_conflict", "idempotency_request_in_progress",
                       "a request with this Idempotency-Key is still in progress",
                       param="Idempotency-Key",
                       headers={"Retry-After": str(max(1, math.ceil(claim.retry_after)))})
    if claim.outcome == ClaimOutcome.COMPLETED:
        metrics.IDEMPOTENCY.labels("replayed").inc()
        assert claim.record is not None and claim.record.response is not None
        response = claim.record.response
        if claim.payment is not None and "error" not in response:
            # the claim read the payment its answer names: answer it as it is now
            return (int(response["status"]), Outcome(int(response["status"]),
                    str(response["payment_id"]), claim.payment), True)
        status, body = await replay(response)
        return status, body, True
    metrics.IDEMPOTENCY.labels("new").inc()
    completion = None if answer is None else Completion(
        merchant_id, key, {"status": answer[0], "payment_id": answer[1]}, ttl_s)
    ex = Execution(merchant_id, key, fp, recovered=claim.outcome == ClaimOutcome.TAKEN_OVER,
                   created=claim.created, completion=completion)
    try:
        outcome = await execute(ex)
    except ApiError as err:
        if err.status == 422 or (err.status == 409 and err.code not in TRANSIENT_CONFLICTS):
            # a definite answer about the resource: remember it
            await store.complete_idempotency(
                merchant_id, key, {"status": err.status, "error": err.body()}, ttl_s)
        else:  # 503 safe failure, 404, ...: not remembered, the client may retry
            await store.release_idempotency(merchant_id, key)
        raise
    except BaseException:
        # Unexpected failure (or cancellation): keep the claim; its lease lapses and a
        # retry resumes from the write-ahead payment record.
        raise
    response = {"status": outcome.status, "payment_id": outcome.payment_id}
    if completion is None or not completion.written or completion.response != response:
        await store.complete_idempotency(merchant_id, key, response, ttl_s)
    return outcome.status, outcome, ex.recovered
