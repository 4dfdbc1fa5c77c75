"""The provider contract shared by every adapter (SPEC section 5).

An adapter turns one gateway operation (authorize, capture, void, refund, lookup)
into one provider SDK call and reports exactly one :class:`Outcome`:

* a definite answer is *returned* as :class:`ProviderResult`
  (``SUCCEEDED`` or ``DECLINED``);
* a transport or integration fault is *raised* as a :class:`ProviderFault`:

      ProviderFault                 integration fault, never a decline
      +-- RejectedSafe              provably not processed -> fail over is safe
      |   +-- NotCreated            a lookup's final proof that an attempt created nothing
      |   +-- NotFound              the provider answered: no such object (a definite
      |   |                         answer: the provider is healthy)
      |   +-- NotSent               refused before anything was sent (breaker open, no
      |                             provider reference, amount/currency it cannot take):
      |                             says nothing about the provider's health
      +-- Ambiguous                 may have been processed -> retry same key, then lookup
      +-- ProviderMismatch          answered for another amount/currency than was sent:
                                    never a success, never retried, never failed over

This split keeps "the card was declined" and "the provider is down" apart in the
type system: an SDK exception can never be mistaken for a decline.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from providers.statuses import PaymentStatus, RefundStatus


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REJECTED_SAFE = "rejected_safe"
    AMBIGUOUS = "ambiguous"


class Operation(StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    LOOKUP = "lookup"
    #: Completing a 3-D Secure challenge (:meth:`Provider.complete_action`).
    CONFIRM = "confirm"
    #: Ending an unfinished 3-D Secure payment (:meth:`Provider.abandon_action`).
    ABANDON = "abandon"


class ProviderFault(Exception):
    """A provider call failed without a definite answer. Never a decline."""

    outcome: Outcome

    def __init__(self, error_code: str, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message or error_code)
        self.error_code = error_code
        self.message = message or error_code
        self.http_status = status


class RejectedSafe(ProviderFault):
    """The request provably did not reach / was not processed by the provider."""

    outcome = Outcome.REJECTED_SAFE


class NotCreated(RejectedSafe):
    """Final proof from the provider that an ambiguous attempt created nothing (SPEC 5.1).

    Only a lookup raises it, and only on an answer the provider guarantees final for that
    request: an idempotent replay the provider deduplicates, or a lookup by a guaranteed key
    made after the original request can no longer be executed. A search that finds nothing
    while the request may still be processed is *not* this: it is :class:`Ambiguous`.
    """

    #: The ``error_code`` of every NotCreated (also the payment's failure code when it
    #: ends failed for it, and a failover reason).
    CODE = "not_created"

    def __init__(self, message: str = "") -> None:
        super().__init__(self.CODE, message or "the provider created nothing")


class NotFound(RejectedSafe):
    """The provider answered that the referenced object does not exist (HTTP 404,
    ``resource_missing``). A definite answer: a circuit breaker counts it as a success."""

    #: The ``error_code`` of every NotFound.
    CODE = "not_found"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(self.CODE, message or "not found", status=status)


class NotSent(RejectedSafe):
    """Refused before anything was sent to the provider (``error_code`` says why): a
    circuit breaker neither counts it as a failure nor as a success."""


class Ambiguous(ProviderFault):
    """The request may have been processed: the outcome is unknown."""

    outcome = Outcome.AMBIGUOUS

    #: The ``error_code`` of a lookup that found nothing yet where finding nothing proves
    #: nothing (an eventually consistent search, SPEC 5.1): the provider answered, so the
    #: operator's sync reports the payment unresolved rather than the provider unavailable.
    NOT_VISIBLE_YET = "not_visible_yet"


class ProviderMismatch(ProviderFault):
    """The provider's answer is about another amount or currency than the gateway sent
    (e.g. a Braintree sale charged in the default account's currency). The adapter has
    tried to void/cancel what was created: ``released`` says whether that provably
    succeeded (then the payment is ``failed``), otherwise the payment is ``unknown``."""

    outcome = Outcome.AMBIGUOUS

    def __init__(self, message: str, *, provider_reference: str | None,
                 released: bool) -> None:
        super().__init__("provider_amount_mismatch", message)
        self.provider_reference = provider_reference
        self.released = released


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    decline_code: str | None = None
    provider_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.decline_code is not None:
            out["decline_code"] = self.decline_code
        if self.provider_code is not None:
            out["provider_code"] = self.provider_code
        return out


@dataclass(frozen=True)
class ProviderResult:
    """A definite answer about a payment from the provider."""

    outcome: Outcome  # SUCCEEDED or DECLINED
    status: PaymentStatus
    provider_reference: str | None = None
    raw_status: str | None = None
    amount_authorized: int | None = None
    amount_captured: int | None = None
    failure: Failure | None = None
    next_action: dict[str, Any] | None = None


@dataclass(frozen=True)
class RefundResult:
    """A definite answer about one refund."""

    outcome: Outcome  # SUCCEEDED (the refund exists, see status) or DECLINED
    status: RefundStatus
    provider_reference: str | None = None
    raw_status: str | None = None
    failure: Failure | None = None


@dataclass(frozen=True)
class AuthorizeRequest:
    payment_id: str
    amount: int
    currency: str
    capture_manual: bool
    token: str
    idempotency_key: str
    reference: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    customer_country: str | None = None
    #: Where the provider sends the customer back after a 3-D Secure challenge (the
    #: gateway's return endpoint for this payment); None: the adapter's default.
    return_url: str | None = None


@dataclass(frozen=True)
class PaymentRef:
    """What an adapter needs to act on an existing authorization."""

    payment_id: str
    provider_reference: str | None
    amount: int
    currency: str
    capture_manual: bool = True


class Provider(abc.ABC):
    """One configured provider account (e.g. ``stripe_main``)."""

    name: str
    type: str
    currencies: frozenset[str]
    #: Whether the provider deduplicates a retried request by its idempotency key
    #: (Stripe, Adyen: documented). When not, operations that create money movements are
    #: sent once and resolved by lookup instead of retried.
    retries_deduplicated: bool = True
    creating_operations: frozenset[Operation] = frozenset({Operation.AUTHORIZE,
                                                           Operation.REFUND})

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections / pools; called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` opened."""

    @abc.abstractmethod
    async def authorize(self, req: AuthorizeRequest) -> ProviderResult: ...

    @abc.abstractmethod
    async def capture(
        self, ref: PaymentRef, amount: int, idempotency_key: str
    ) -> ProviderResult: ...

    @abc.abstractmethod
    async def void(self, ref: PaymentRef, idempotency_key: str) -> ProviderResult: ...

    @abc.abstractmethod
    async def refund(
        self, ref: PaymentRef, refund_id: str, amount: int, idempotency_key: str
    ) -> RefundResult: ...

    async def complete_action(self, ref: PaymentRef, returned: dict[str, str],
                              idempotency_key: str) -> ProviderResult:
        """Finish a ``requires_action`` payment after the customer's 3-D Secure challenge.

        ``returned`` is what the customer's return to the gateway carried (query
        parameters, e.g. Adyen's ``redirectResult``; empty when the customer has not come
        back yet). The answer is checked against the payment's amount and currency like an
        authorization. A provider without :attr:`Capabilities.three_ds_challenge` never
        gets here (routing keeps 3-D Secure payments away from it)."""
        raise NotSent("three_ds_unsupported",
                      f"{self.type} cannot complete a 3-D Secure challenge server-side")

    #: Whether :meth:`abandon_action` can end an unfinished 3-D Secure payment with an
    #: answer the provider guarantees (SPEC 5.1).
    abandons_action: bool = False

    async def abandon_action(self, ref: PaymentRef, idempotency_key: str) -> ProviderResult:
        """End a ``requires_action`` payment whose customer never finished the challenge,
        so that nothing can be charged for it any more, and answer its final state at the
        provider: ``voided`` (cancelled there: nothing charged, and it can no longer be
        completed), or the state the customer's completion reached meanwhile (authorized,
        captured, declined), to apply as it is. Any doubt raises :class:`Ambiguous`. Only
        called when :attr:`abandons_action`."""
        raise NotSent("abandon_unsupported",
                      f"{self.type} gives no answer that proves an unfinished 3-D Secure "
                      "payment can no longer be charged")

    async def retrieve_refund(self, refund_reference: str) -> RefundResult:
        """Current state of a refund, for providers that can look one up."""
        raise Ambiguous("lookup_unsupported", f"{self.type} refunds are confirmed by webhook")

    @abc.abstractmethod
    async def lookup(
        self, ref: PaymentRef, authorize: AuthorizeRequest | None, *,
        sent_at: float | None = None, may_create: bool = True,
    ) -> ProviderResult:
        """Find out the payment's state at the provider.

        ``authorize`` is the original request (same idempotency key) for providers
        whose only lookup is an idempotent replay. ``sent_at`` (unix seconds) is when the
        attempt was first sent: a provider whose proof depends on the original request
        having expired needs it. ``may_create=False`` forbids a lookup that could itself
        create the payment (a replay of a create that never arrived): past the replay
        window only a pure lookup is allowed. Raises :class:`NotCreated` only on final
        proof that the attempt created nothing; any other doubt is :class:`Ambiguous`.
        """
