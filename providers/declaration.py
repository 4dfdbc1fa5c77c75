"""What one provider folder tells the gateway about itself (issue #12: one folder per provider).

Each ``providers/<name>/declaration.py`` exports ``DECLARATION``, a :class:`ProviderDeclaration`;
``providers/registry.py`` lists the folders. The gateway reads everything provider-specific
from the declaration (which gateway.yaml keys the type takes and which are secrets, how its
options are checked, how the adapter is built, how its webhooks are verified, its simulator,
its ``gateway doctor`` probe, its capabilities) and never branches on a provider type.

Factories take a :class:`ProviderSettings`: the checked gateway.yaml entry. For a
``sandbox: true`` provider the gateway has already pointed ``base_url`` at the in-process
simulator and merged :attr:`ProviderDeclaration.sandbox_credentials` under the configured
credentials.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.base import Provider
from providers.doctor_checks import Check, SignedNotification
from providers.settings import ProviderSettings
from providers.settlement import SettlementLine
from providers.webhook_event import WebhookEvent

#: gateway.yaml key path below the provider's entry, e.g. ``("merchant_account_ids", "USD")``.
KeyPath = tuple[str | int, ...]
#: One problem found in a provider's own options: where, and what is wrong.
OptionError = tuple[KeyPath, str]


@dataclass(frozen=True)
class Capabilities:
    """How the provider behaves where providers differ."""

    #: Capture, void and refund are only *received* by the call; the provider's webhook
    #: confirms them (Adyen). Reconciliation waits for that notification and flags the
    #: payment when it is overdue instead of asking again.
    modifications_confirmed_by_webhook: bool = False
    #: The provider can take a payment through a 3-D Secure challenge and finish it from
    #: the server (``Provider.complete_action``): it answers ``requires_action`` with a
    #: redirect a browser can follow, and the gateway completes it afterwards (Stripe:
    #: PaymentIntent ``next_action.redirect_to_url``, then retrieve/confirm; Adyen:
    #: ``RedirectShopper`` + ``action``, then ``/payments/details``). Routing leaves a
    #: provider without it out of payments whose method needs 3-D Secure
    #: (``routing.select.ExclusionKind.THREE_DS_UNSUPPORTED``).
    three_ds_challenge: bool = False


@dataclass(frozen=True)
class ProviderDeclaration:
    #: The ``type:`` value in gateway.yaml.
    type: str
    #: Credential keys, resolved as secrets (``${ENV}``, ``file:``), never logged.
    secret_keys: tuple[str, ...]
    #: The credentials a real (not sandbox) provider cannot work without.
    required_secrets: tuple[str, ...]
    #: The provider's own option keys (strict-key schema: ``None`` for a value, ``"free"``
    #: for a mapping whose keys are data, such as currency -> merchant account).
    option_keys: Mapping[str, Any]
    #: Every problem in the options and credentials of one checked entry.
    check_options: Callable[[ProviderSettings], Sequence[OptionError]]
    #: The adapter.
    build: Callable[[ProviderSettings], Provider]
    #: The amount as the provider's wire carries it (raises AmountError / ValueError when
    #: ``amount`` ``currency`` cannot be sent exactly); routing excludes such a provider.
    amount_to_wire: Callable[[int, str], object]
    #: Verify a webhook on its raw bytes and parse it (``providers.webhook_event`` errors).
    verify_webhook: Callable[[ProviderSettings, bytes, Mapping[str, str], float | None],
                             list[WebhookEvent]]
    #: The in-process simulator class, as ``module:Class``, and its default port in
    #: ``gateway sandbox``.
    simulator: str
    default_sandbox_port: int
    #: Credentials of the in-process simulator, used under ``sandbox: true`` for any key the
    #: entry does not set (the adapter's and the webhook verifier's).
    sandbox_credentials: Mapping[str, str]
    #: ``gateway doctor``: the provider's harmless authenticated call, then its checks.
    doctor_checks: Callable[[ProviderSettings], Awaitable[list[Check]]]
    #: ``gateway doctor``: a notification signed the way the provider signs, or the failed
    #: check when the secret that would verify it is missing or unusable.
    test_notification: Callable[[ProviderSettings], SignedNotification | Check]
    capabilities: Capabilities = field(default_factory=Capabilities)
    #: The canonical decline codes (``providers.decline_codes``) its declines can carry.
    decline_codes: frozenset[str] = frozenset()
    #: Why the provider cannot charge a currency at all (e.g. not in its published table),
    #: or None; routing excludes it for that currency.
    currency_refusal: Callable[[str], str | None] | None = None
    #: Appended to the simulator's URL to form the adapter's ``base_url``.
    sandbox_path: str = ""
    #: The credential that signs the webhooks the in-process simulator sends, when the
    #: entry configures its own (``None``: the simulator's own default is used).
    simulator_signing_key: str | None = None
    #: ``GET /webhooks/{name}?<query>``: the provider's endpoint verification
    #: (``query parameter``, answer function), or None when it has none.
    webhook_challenge: tuple[str, Callable[[ProviderSettings, str], str]] | None = None
    #: Settlement (#14 items 3, 5): fetch one UTC day's settlement data through the
    #: provider's own API, as the raw bytes :attr:`parse_settlement` reads (None: the
    #: provider has no such API; import a file instead).
    fetch_settlement: Callable[[ProviderSettings, dt.date], Awaitable[bytes]] | None = None
    #: Settlement: the provider's report (fetched, or a file) -> provider-neutral lines
    #: (raises ``providers.settlement.MalformedSettlement``).
    parse_settlement: Callable[[bytes], list[SettlementLine]] | None = None
    #: Settlement: the provider's report carries a fee per transaction, so the gateway can
    #: check it against the provider entry's ``fee_bps`` (``fee_drift``). False (Braintree's
    #: settlement data has no per-transaction fee): ``fee_bps`` is a configuration error,
    #: as every capture would show a fee of 0 against it.
    settlement_fees: bool = True

    def credentials_of(self, settings: ProviderSettings) -> dict[str, str]:
        """The entry's credentials, over the simulator's under ``sandbox: true``."""
        base = dict(self.sandbox_credentials) if settings.sandbox else {}
        return {**base, **settings.credentials}


__all__ = ["Capabilities", "KeyPath", "OptionError", "ProviderDeclaration", "ProviderSettings"]
