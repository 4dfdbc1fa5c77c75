"""Stripe, as the gateway sees it: keys, checks, adapter, webhooks, simulator, doctor."""

from __future__ import annotations

from collections.abc import Mapping

from providers.declaration import Capabilities, OptionError, ProviderDeclaration
from providers.decline_codes import STRIPE_DECLINE_CODES
from providers.doctor_checks import Check, SignedNotification, fail
from providers.settings import ProviderSettings
from providers.stripe import doctor, settlement, webhook
from providers.stripe.adapter import StripeProvider
from providers.stripe.amounts import to_wire
from providers.webhook_event import WebhookEvent

SANDBOX_API_KEY = "sk_test_sandbox"


def check_options(cfg: ProviderSettings) -> list[OptionError]:
    tol = cfg.options.get("webhook_tolerance_s")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, int | float)
                            or not 0 < tol <= 3600):
        return [(("webhook_tolerance_s",), "must be a number of seconds in (0, 3600]")]
    return []


def build(cfg: ProviderSettings) -> StripeProvider:
    assert cfg.base_url is not None
    return StripeProvider(cfg.name, api_key=cfg.credentials["api_key"], base_url=cfg.base_url,
                          currencies=cfg.currencies, timeout_s=cfg.timeout_s,
                          connect_timeout_s=cfg.connect_timeout_s)


def verify_webhook(cfg: ProviderSettings, raw: bytes, headers: Mapping[str, str],
                   now: float | None) -> list[WebhookEvent]:
    tolerance = float(cfg.options.get("webhook_tolerance_s", webhook.DEFAULT_TOLERANCE_S))
    return webhook.verify_and_parse(raw, headers, cfg.credentials.get("webhook_secret"),
                                    tolerance_s=tolerance, now=now)


def test_notification(cfg: ProviderSettings) -> SignedNotification | Check:
    secret = cfg.credentials.get("webhook_secret")
    if not secret:
        return fail(cfg.name, "webhook", "webhook_secret is not configured: every Stripe "
                    "webhook would be rejected (401)")
    return doctor.stripe_notification(secret)


DECLARATION = ProviderDeclaration(
    type="stripe",
    secret_keys=("api_key", "webhook_secret"),
    required_secrets=("api_key",),
    option_keys={"webhook_tolerance_s": None},
    check_options=check_options,
    build=build,
    decline_codes=STRIPE_DECLINE_CODES,
    amount_to_wire=to_wire,
    verify_webhook=verify_webhook,
    simulator="providers.stripe.simulator:StripeSimulator",
    default_sandbox_port=12111,
    sandbox_credentials={"api_key": SANDBOX_API_KEY, "webhook_secret": "whsec_sandbox_stripe"},
    doctor_checks=doctor.stripe_checks,
    test_notification=test_notification,
    simulator_signing_key="webhook_secret",
    fetch_settlement=settlement.fetch_settlement,
    parse_settlement=settlement.parse_stripe,
    # PaymentIntent requires_action + next_action.redirect_to_url; after the redirect the
    # PaymentIntent is retrieved (or confirmed, if it waits in requires_confirmation)
    capabilities=Capabilities(three_ds_challenge=True),
)
