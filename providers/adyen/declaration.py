"""Adyen, as the gateway sees it: keys, checks, adapter, webhooks, simulator, doctor."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

from providers import sdk_pool
from providers.adyen import doctor, settlement, webhook
from providers.adyen.adapter import AdyenProvider
from providers.adyen.amounts import ADYEN_DECIMALS, to_wire
from providers.adyen.parse import REFUSAL_DECLINE_CODES
from providers.declaration import Capabilities, OptionError, ProviderDeclaration
from providers.doctor_checks import Check, SignedNotification, fail
from providers.settings import ProviderSettings
from providers.webhook_event import WebhookEvent

_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
#: The merchant account of the in-process simulator (and the default of a sandbox entry).
SANDBOX_MERCHANT_ACCOUNT = "SandboxECOM"


def currency_refusal(currency: str) -> str | None:
    """Adyen charges only the currencies of its published table."""
    if currency.upper() not in ADYEN_DECIMALS:
        return f"Adyen does not support {currency.upper()}"
    return None


def check_options(cfg: ProviderSettings) -> list[OptionError]:
    out: list[OptionError] = []
    hmac_key = cfg.credentials.get("hmac_key")
    if hmac_key is not None and not _HEX.match(hmac_key):
        # Adyen's HMAC key is hex; any other value fails every notification's signature
        out.append((("hmac_key",), "must be the hex HMAC key from Adyen's Customer Area "
                    "(an even number of 0-9/A-F characters)"))
    account = cfg.options.get("merchant_account")
    if account is not None and (not isinstance(account, str) or not account):
        out.append((("merchant_account",), "must be a non-empty string"))
    elif account is None and not cfg.sandbox:
        out.append((("merchant_account",), "required unless sandbox: true"))
    out += sdk_pool.threads_errors(cfg.options)
    return out


def build(cfg: ProviderSettings) -> AdyenProvider:
    assert cfg.base_url is not None
    return AdyenProvider(
        cfg.name, api_key=cfg.credentials["api_key"],
        merchant_account=str(cfg.options.get("merchant_account", SANDBOX_MERCHANT_ACCOUNT)),
        base_url=cfg.base_url, currencies=cfg.currencies, timeout_s=cfg.timeout_s,
        connect_timeout_s=cfg.connect_timeout_s, max_workers=sdk_pool.threads(cfg.options))


def verify_webhook(cfg: ProviderSettings, raw: bytes, headers: Mapping[str, str],
                   now: float | None) -> list[WebhookEvent]:
    return webhook.verify_and_parse(raw, headers, cfg.credentials.get("hmac_key"), now=now)


def test_notification(cfg: ProviderSettings) -> SignedNotification | Check:
    key = cfg.credentials.get("hmac_key")
    if not key:
        return fail(cfg.name, "webhook", "hmac_key is not configured: every Adyen "
                    "notification would be rejected (401)")
    try:
        return doctor.adyen_notification(key, str(cfg.options.get("merchant_account")
                                                  or SANDBOX_MERCHANT_ACCOUNT))
    except ValueError:
        return fail(cfg.name, "webhook", "hmac_key is not a hex string: every Adyen "
                    "notification would be rejected (401)")


async def doctor_checks(cfg: ProviderSettings) -> list[Check]:
    return await asyncio.to_thread(doctor.adyen_checks_sync, cfg)  # the SDK is synchronous


DECLARATION = ProviderDeclaration(
    type="adyen",
    secret_keys=("api_key", "hmac_key"),
    required_secrets=("api_key",),
    option_keys={"merchant_account": None, sdk_pool.THREADS_OPTION: None},
    check_options=check_options,
    build=build,
    decline_codes=frozenset(REFUSAL_DECLINE_CODES.values()) | {"generic_decline"},
    amount_to_wire=to_wire,
    verify_webhook=verify_webhook,
    simulator="providers.adyen.simulator:AdyenSimulator",
    default_sandbox_port=12113,
    sandbox_credentials={
        "api_key": "sandbox_adyen_key",
        "hmac_key": "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"},
    sandbox_path="/checkout/v71",
    doctor_checks=doctor_checks,
    test_notification=test_notification,
    # RedirectShopper + action (type redirect); the shopper's return carries
    # redirectResult, submitted to /payments/details
    capabilities=Capabilities(modifications_confirmed_by_webhook=True, three_ds_challenge=True),
    simulator_signing_key="hmac_key",
    currency_refusal=currency_refusal,
    fetch_settlement=settlement.fetch_settlement,
    parse_settlement=settlement.parse_adyen,
)
