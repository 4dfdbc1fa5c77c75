"""The provider-neutral form of one verified webhook event (SPEC section 8).

Each provider package has a ``webhook.py`` whose ``verify_and_parse(raw_body, headers,
<secrets>, now=None)`` checks the signature on the RAW bytes (constant-time) and
returns a list of :class:`WebhookEvent` (Adyen batches several items per request; a
Stripe ``charge.refunded`` may carry several refunds). It raises:

* :class:`InvalidSignature` -- missing / wrong signature, or no secret configured
  (HTTP 401; the body is never applied);
* :class:`StaleTimestamp` -- a valid signature whose timestamp is outside the
  tolerance (Stripe; HTTP 400);
* :class:`MalformedWebhook` -- the signature is fine (or cannot even be looked for)
  but the body is not a webhook of that provider (HTTP 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus

Target = Literal["payment", "refund", "dispute", "ignore"]


class WebhookError(Exception):
    """Base class: the request must not be applied."""


class InvalidSignature(WebhookError):
    """Missing or wrong signature (or no secret to check it with)."""


class StaleTimestamp(WebhookError):
    """The signature is valid but its timestamp is outside the tolerance."""


class MalformedWebhook(WebhookError):
    """The body cannot be parsed as a webhook of this provider."""


@dataclass(frozen=True)
class DisputeInfo:
    """What a dispute (chargeback) notification says (SPEC section 16), provider-neutral.

    ``dispute_reference`` is the provider's id of the dispute (Stripe ``dp_...``, the
    Braintree dispute id, Adyen's dispute ``pspReference``); ``amount`` the disputed
    amount in ISO 4217 minor units (None when the notification has none that converts);
    ``reason`` the provider's own reason (code); ``status`` is None when the provider's
    state is not in that provider's table (reported through
    :data:`providers.status_table.on_unmapped`, never guessed); ``evidence_due_by`` the
    deadline to respond (epoch seconds) when the provider says one.
    """

    dispute_reference: str
    amount: int | None
    currency: str | None
    reason: str | None
    status: DisputeStatus | None
    evidence_due_by: float | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """One verified provider event, normalized.

    ``event_id`` is the dedupe identity (SPEC section 8): the Stripe event id; Adyen
    ``pspReference:eventCode:success``; Braintree ``kind:subject id:timestamp``.
    ``payment_reference`` is the provider's id of the PAYMENT (PaymentIntent id,
    Braintree sale transaction id, Adyen payment pspReference = ``originalReference``
    of a modification); ``merchant_reference`` the gateway payment id when the event
    carries it. ``status`` is a :class:`PaymentStatus` for ``target == "payment"``,
    a :class:`RefundStatus` for ``"refund"``, None for ``"ignore"`` and ``"dispute"``:
    a dispute event carries its facts in ``dispute`` (:class:`DisputeInfo`) and never
    moves the payment's own status.
    """

    provider_type: str
    event_id: str
    kind: str
    occurred_at: float | None
    payment_reference: str | None
    merchant_reference: str | None
    target: Target
    status: PaymentStatus | RefundStatus | None
    amount: int | None = None
    refund_reference: str | None = None
    refund_id: str | None = None  # the gateway refund id, when the event carries it
    raw_summary: str = ""
    #: An authorization that the provider captures by itself when the payment is
    #: automatic-capture (Adyen ``AUTHORISATION``): then it means ``captured``.
    captured_if_automatic: bool = False
    #: set when ``target == "dispute"``
    dispute: DisputeInfo | None = None

    def payment_status(self) -> PaymentStatus | None:
        return self.status if isinstance(self.status, PaymentStatus) else None

    def refund_status(self) -> RefundStatus | None:
        return self.status if isinstance(self.status, RefundStatus) else None


__all__ = [
    "DisputeInfo",
    "InvalidSignature",
    "MalformedWebhook",
    "StaleTimestamp",
    "Target",
    "WebhookError",
    "WebhookEvent",
]
