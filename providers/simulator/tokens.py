"""Sandbox payment-method tokens understood by every simulator (SPEC section 6).

A token resolves to a neutral :class:`SandboxCard`; each simulator renders the
behaviour in its own wire format (a Stripe 402 ``card_declined``, a Braintree
``processor_declined`` transaction, an Adyen ``Refused`` resultCode, ...).
An unknown token resolves to ``None``: the simulator answers with its
provider's invalid-request error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class CardBehavior(StrEnum):
    APPROVE = "approve"
    DECLINE = "decline"  # generic issuer decline
    INSUFFICIENT_FUNDS = "insufficient_funds"
    REQUIRES_ACTION = "requires_action"  # 3-D Secure challenge
    PENDING = "pending"  # accepted, final result arrives asynchronously


@dataclass(frozen=True)
class SandboxCard:
    behavior: CardBehavior
    brand: str = "visa"
    last4: str = "4242"

    @property
    def declines(self) -> bool:
        return self.behavior in (CardBehavior.DECLINE, CardBehavior.INSUFFICIENT_FUNDS)


B = CardBehavior

#: Tokens every simulator accepts.
SANDBOX_TOKENS: Mapping[str, SandboxCard] = {
    "tok_visa": SandboxCard(B.APPROVE, "visa", "4242"),
    "tok_mastercard": SandboxCard(B.APPROVE, "mastercard", "4444"),
    "tok_decline": SandboxCard(B.DECLINE, "visa", "0002"),
    "tok_insufficient_funds": SandboxCard(B.INSUFFICIENT_FUNDS, "visa", "9995"),
    "tok_3ds": SandboxCard(B.REQUIRES_ACTION, "visa", "3220"),
    "tok_pending": SandboxCard(B.PENDING, "visa", "0077"),
}


def resolve_token(
    token: str | None, provider_tokens: Mapping[str, SandboxCard] | None = None
) -> SandboxCard | None:
    """The card behind ``token``: shared sandbox tokens first, then provider-specific ones."""
    if not token:
        return None
    card = SANDBOX_TOKENS.get(token)
    if card is None and provider_tokens:
        card = provider_tokens.get(token)
    return card
