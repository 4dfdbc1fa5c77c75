"""Choose the rule and ordered provider candidates for one payment (SPEC section 7).

``decide`` is pure and deterministic: first matching rule wins; the candidate order is

* ``providers`` rule: the list as written;
* ``split`` rule: the provider whose weight bucket contains ``split_bucket(payment_id)``
  first, then the other split providers by weight, highest first (ties keep the order
  written), then ``fallback`` as written.

The bucket is ``sha256(payment_id) mod 100``, so a replay or retry of the same payment
never re-rolls (as long as the rule's weights are unchanged; the orchestrator stamps the
config version on the payment). Duplicates are dropped keeping the first position, then
candidates are filtered by capability, in order, with the first reason that applies:

* ``provider not configured`` - named by the rule but absent from gateway.yaml now;
* ``currency XXX not supported`` - not in the provider's ``currencies``;
* ``no provider token`` - ``provider_tokens`` were given and do not name the provider;
* ``amount not representable: ...`` - the provider cannot be sent this amount in this
  currency exactly (its wire units, e.g. KWD 5124 at Stripe, IDR 1050 at Adyen);
* ``3-D Secure challenge not supported`` - the payment method needs 3-D Secure
  (``payment_method.three_d_secure: "required"``, or a sandbox token that always
  challenges, ``tok_3ds``) and the provider's declaration says it cannot complete a
  challenge (``Capabilities.three_ds_challenge``: Braintree authenticates on the client
  only), so a split never sends such a payment where it would be declined.

Circuit-breaker state is *not* considered here: the orchestrator skips open breakers
and records them as attempts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from providers.amounts import currency_refusal, wire_refusal
from providers.registry import declaration
from providers.simulator.tokens import CardBehavior, resolve_token
from routing.rules import ProviderInfo, RoutableRequest, RoutingTable, Rule

SPLIT_BUCKETS = 100
AMOUNT_NOT_REPRESENTABLE = "amount not representable"


class NoRouteError(LookupError):
    """No rule matched (impossible for a validated table: it ends with a catch-all)."""


@dataclass(frozen=True)
class RouteRequest:
    payment_id: str
    amount: int
    currency: str
    country: str | None = None
    brand: str | None = None
    merchant_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    provider_tokens: frozenset[str] | None = None
    #: The payment method needs a 3-D Secure challenge (see :func:`needs_three_ds`).
    three_ds_required: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, payment_id: str,
                  merchant_id: str | None = None) -> RouteRequest:
        """From a validated POST /v1/payments body (SPEC section 3)."""
        pm = body.get("payment_method") or {}
        customer = body.get("customer") or {}
        tokens = pm.get("provider_tokens")
        return cls(
            payment_id=payment_id,
            amount=int(body["amount"]),
            currency=str(body["currency"]),
            country=customer.get("country"),
            brand=pm.get("brand"),
            merchant_id=merchant_id,
            metadata=dict(body.get("metadata") or {}),
            provider_tokens=frozenset(tokens) if tokens is not None else None,
            three_ds_required=needs_three_ds(pm),
        )


def needs_three_ds(payment_method: Mapping[str, Any]) -> bool:
    """Whether a payment method needs a 3-D Secure challenge: the request says so
    (``three_d_secure: "required"``), or its token (or one of its provider tokens) is a
    shared sandbox token whose documented behaviour is a challenge (``tok_3ds``, SPEC 6)."""
    if payment_method.get("three_d_secure") == "required":
        return True
    tokens = [payment_method.get("token"),
              *dict(payment_method.get("provider_tokens") or {}).values()]
    return any(isinstance(t, str) and (card := resolve_token(t)) is not None
               and card.behavior is CardBehavior.REQUIRES_ACTION for t in tokens)


def three_ds_capable(provider_type: str | None) -> bool:
    """The provider type's declared capability (an unknown type has none)."""
    try:
        return bool(provider_type) and declaration(str(provider_type)).capabilities \
            .three_ds_challenge
    except KeyError:
        return False


@dataclass(frozen=True)
class Decision:
    rule: str
    version: str
    candidates: tuple[str, ...]  # ordered, capable providers to try
    excluded: tuple[tuple[str, str], ...]  # (provider, reason), in rule order
    request: RouteRequest = field(compare=False, hash=False)
    split_bucket: int | None = None  # 0..99 for a split rule
    split_choice: str | None = None  # the provider the bucket picked
    #: The matched rule's cascade_on: these decline codes move to the next candidate.
    cascade_on: frozenset[str] = frozenset()
    #: The kind of each excluded provider's exclusion.
    exclusion_kinds: Mapping[str, ExclusionKind] = field(default_factory=dict, compare=False,
                                                          hash=False)


def split_bucket(payment_id: str) -> int:
    """The payment's sticky bucket in ``range(100)``."""
    digest = hashlib.sha256(payment_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS


def split_order(split: tuple[tuple[str, int], ...], bucket: int) -> tuple[str, ...]:
    """The split providers with the bucket's pick first, then the rest by weight desc."""
    if not split:
        return ()
    chosen = split[-1][0]
    upper = 0
    for name, weight in split:
        upper += weight
        if bucket < upper:
            chosen = name
            break
    rest = sorted((s for s in split if s[0] != chosen), key=lambda s: -s[1])
    return (chosen, *(name for name, _ in rest))


def rule_order(rule: Rule, payment_id: str) -> tuple[str, ...]:
    """A rule's candidates before filtering (duplicates removed, first position kept)."""
    if rule.split:
        names = split_order(rule.split, split_bucket(payment_id)) + rule.fallback
    else:
        names = rule.providers
    return tuple(dict.fromkeys(names))


class ExclusionKind(StrEnum):
    """Why routing left a provider out, as a type (the reason text is for people)."""

    NOT_CONFIGURED = "not_configured"
    CURRENCY = "currency"  # the provider (or its configuration) cannot charge the currency
    NO_TOKEN = "no_token"  # the payment method has no token for this provider
    AMOUNT_NOT_REPRESENTABLE = "amount_not_representable"  # not exactly on its wire
    #: the payment needs 3-D Secure and the provider cannot complete a challenge
    THREE_DS_UNSUPPORTED = "three_ds_unsupported"


def exclusion(name: str, request: RouteRequest, providers: Mapping[str, ProviderInfo]
              ) -> tuple[ExclusionKind, str] | None:
    """Why ``name`` cannot take ``request`` (kind, human reason), or None."""
    info = providers.get(name)
    if info is None:
        return ExclusionKind.NOT_CONFIGURED, "provider not configured"
    if request.currency not in info.currencies:
        return ExclusionKind.CURRENCY, f"currency {request.currency} not supported"
    if request.provider_tokens is not None and name not in request.provider_tokens:
        return ExclusionKind.NO_TOKEN, "no provider token"
    ptype = getattr(info, "type", None)
    if currency_refusal(ptype, request.currency) is not None:
        return ExclusionKind.CURRENCY, f"currency {request.currency} not supported by {ptype}"
    refusal = wire_refusal(ptype, request.amount, request.currency)
    if refusal is not None:
        return (ExclusionKind.AMOUNT_NOT_REPRESENTABLE,
                f"{AMOUNT_NOT_REPRESENTABLE}: {refusal}")
    if request.three_ds_required and not three_ds_capable(ptype):
        return (ExclusionKind.THREE_DS_UNSUPPORTED,
                f"3-D Secure challenge not supported by {ptype} (the payment method "
                "needs 3-D Secure)")
    return None


def match(table: RoutingTable, request: RoutableRequest) -> Rule:
    """The first rule whose conditions hold."""
    for rule in table.rules:
        if rule.when.matches(request):
            return rule
    raise NoRouteError(f"no routing rule matches (config {table.version})")


def decide(table: RoutingTable, request: RouteRequest,
           providers: Mapping[str, ProviderInfo]) -> Decision:
    """Pick the rule and the ordered, capability-filtered provider candidates."""
    rule = match(table, request)
    candidates: list[str] = []
    excluded: list[tuple[str, str]] = []
    kinds: dict[str, ExclusionKind] = {}
    for name in rule_order(rule, request.payment_id):
        found = exclusion(name, request, providers)
        if found is None:
            candidates.append(name)
        else:
            kinds[name] = found[0]
            excluded.append((name, found[1]))
    bucket = split_bucket(request.payment_id) if rule.split else None
    return Decision(
        rule=rule.name,
        version=table.version,
        candidates=tuple(candidates),
        excluded=tuple(excluded),
        request=request,
        split_bucket=bucket,
        split_choice=split_order(rule.split, bucket)[0] if bucket is not None else None,
        cascade_on=frozenset(rule.cascade_on),
        exclusion_kinds=kinds,
    )
