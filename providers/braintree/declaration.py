"""Braintree, as the gateway sees it: keys, checks, adapter, webhooks, simulator, doctor."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from providers import sdk_pool
from providers.braintree import doctor, settlement, webhook
from providers.braintree.adapter import DEFAULT_LOOKUP_PROOF_AFTER_S, BraintreeProvider
from providers.braintree.amounts import to_decimal_string
from providers.braintree.parse import DECLINE_CODES
from providers.declaration import Capabilities, OptionError, ProviderDeclaration
from providers.doctor_checks import Check, SignedNotification, fail
from providers.settings import ProviderSettings
from providers.webhook_event import WebhookEvent


def _currency_errors(cfg: ProviderSettings) -> list[OptionError]:
    """A Braintree sale has no currency field: it is charged in the merchant account's
    currency. Every listed currency needs its account, or must be the declared currency of
    the default account (``default_currency``); otherwise JPY 500 is charged as USD 500.00."""
    if cfg.sandbox:
        return []  # the in-process simulator gets one merchant account per listed currency
    out: list[OptionError] = []
    accounts = cfg.options.get("merchant_account_ids") or {}
    if not isinstance(accounts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in accounts.items()):
        return [(("merchant_account_ids",), "a mapping currency -> merchant account id")]
    for k in accounts:
        if k not in cfg.currencies:
            out.append((("merchant_account_ids", k), "is not one of the provider's currencies"))
    default = cfg.options.get("default_currency")
    if default is not None and (not isinstance(default, str) or default not in cfg.currencies):
        out.append((("default_currency",), "must be one of the provider's currencies"))
    for cur in sorted(cfg.currencies):
        if cur not in accounts and cur != default:
            out.append((("currencies",),
                        f"{cur} has no merchant account (merchant_account_ids) and is not the "
                        "default account's currency (default_currency); Braintree would charge "
                        "it in the default account's currency"))
    return out


def check_options(cfg: ProviderSettings) -> list[OptionError]:
    out = _currency_errors(cfg)
    proof = cfg.options.get("lookup_proof_after_s")
    if proof is not None and (isinstance(proof, bool) or not isinstance(proof, int | float)
                              or proof <= cfg.timeout_s):
        out.append((("lookup_proof_after_s",),
                    f"must be a number above timeout_s ({cfg.timeout_s:g})"))
    out += sdk_pool.threads_errors(cfg.options)
    return out


def build(cfg: ProviderSettings) -> BraintreeProvider:
    assert cfg.base_url is not None
    creds = cfg.credentials
    return BraintreeProvider(
        cfg.name, merchant_id=creds["merchant_id"], public_key=creds["public_key"],
        private_key=creds["private_key"], base_url=cfg.base_url, currencies=cfg.currencies,
        timeout_s=cfg.timeout_s, connect_timeout_s=cfg.connect_timeout_s,
        # Braintree takes the currency from the merchant account: one per currency.
        merchant_account_ids=cfg.options.get("merchant_account_ids")
        or ({c: f"sandbox_{c.lower()}" for c in cfg.currencies} if cfg.sandbox else None),
        lookup_proof_after_s=float(cfg.options.get("lookup_proof_after_s",
                                                   DEFAULT_LOOKUP_PROOF_AFTER_S)),
        default_currency=cfg.options.get("default_currency"),
        max_workers=sdk_pool.threads(cfg.options),
    )


def verify_webhook(cfg: ProviderSettings, raw: bytes, headers: Mapping[str, str],
                   now: float | None) -> list[WebhookEvent]:
    return webhook.verify_and_parse(raw, headers, cfg.credentials.get("public_key"),
                                    cfg.credentials.get("private_key"), now=now)


def challenge(cfg: ProviderSettings, value: str) -> str:
    """Answer ``GET /webhooks/{name}?bt_challenge=..``: MalformedWebhook for a bad
    challenge, LookupError when the keys that answer it are not configured."""
    public, private = cfg.credentials.get("public_key"), cfg.credentials.get("private_key")
    if not public or not private:
        raise LookupError("public_key/private_key are not configured")
    return webhook.challenge_response(value, public, private)


def test_notification(cfg: ProviderSettings) -> SignedNotification | Check:
    public, private = cfg.credentials.get("public_key"), cfg.credentials.get("private_key")
    if not public or not private:
        return fail(cfg.name, "webhook", "public_key/private_key are not configured: every "
                    "Braintree webhook would be rejected (401)")
    return doctor.braintree_notification(public, private)


async def doctor_checks(cfg: ProviderSettings) -> list[Check]:
    return await asyncio.to_thread(doctor.braintree_checks_sync, cfg)  # synchronous SDK


DECLARATION = ProviderDeclaration(
    type="braintree",
    secret_keys=("merchant_id", "public_key", "private_key"),
    required_secrets=("merchant_id", "public_key", "private_key"),
    option_keys={"merchant_account_ids": "free", "default_currency": None,
                 "lookup_proof_after_s": None, sdk_pool.THREADS_OPTION: None},
    check_options=check_options,
    build=build,
    decline_codes=frozenset(DECLINE_CODES.values()),
    amount_to_wire=to_decimal_string,
    verify_webhook=verify_webhook,
    simulator="providers.braintree.simulator:BraintreeSimulator",
    default_sandbox_port=12112,
    sandbox_credentials={"merchant_id": "sandbox_merchant", "public_key": "sandbox_public_key",
                         "private_key": "sandbox_private_key"},
    doctor_checks=doctor_checks,
    test_notification=test_notification,
    fetch_settlement=settlement.fetch_settlement,
    parse_settlement=settlement.parse_braintree,
    settlement_fees=False,  # no per-transaction fee in Braintree's settlement data
    webhook_challenge=("bt_challenge", challenge),
    # No server-side 3-D Secure challenge: Braintree authenticates on the CLIENT
    # (braintree-web / mobile SDK ``threeDSecure.verifyCard`` runs the lookup and the
    # issuer's challenge) and the result reaches the server attached to the payment-method
    # nonce (``three_d_secure_info``) or as ``three_d_secure_authentication_id``. The
    # server API's sale can only demand it (``options.three_d_secure.required``) and is
    # gateway-rejected with reason ``three_d_secure`` without it; it has no redirect to
    # hand a browser and nothing to complete afterwards. So the gateway refuses 3-D Secure
    # payments here explicitly: routing excludes Braintree for them
    # (ExclusionKind.THREE_DS_UNSUPPORTED) instead of letting a split decline them.
    capabilities=Capabilities(three_ds_challenge=False),
)
