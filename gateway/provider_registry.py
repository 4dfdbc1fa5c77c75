"""Build the configured provider adapters (and in-process simulators for sandbox ones)."""

from __future__ import annotations

from gateway.config import GatewayConfig, ProviderConfig
from providers.base import Provider

SANDBOX_STRIPE_KEY = "sk_test_sandbox"
SANDBOX_CREDENTIALS = {
    "braintree": {"merchant_id": "sandbox_merchant", "public_key": "sandbox_public_key",
                  "private_key": "sandbox_private_key"},
    "adyen": {"api_key": "sandbox_adyen_key"},
}
ADYEN_SANDBOX_PATH = "/checkout/v71"


def build_provider(cfg: ProviderConfig, sandbox_ports: dict[str, int], host: str) -> Provider:
    base_url = cfg.base_url
    if cfg.sandbox:
        port = sandbox_ports.get(cfg.type)
        if port is None:
            raise ValueError(f"provider {cfg.name}: no in-process {cfg.type} simulator running")
        base_url = f"http://{host}:{port}"
        if cfg.type == "adyen":
            base_url += ADYEN_SANDBOX_PATH
    assert base_url is not None
    creds = {**(SANDBOX_CREDENTIALS.get(cfg.type, {}) if cfg.sandbox else {}), **cfg.credentials}
    if cfg.type == "stripe":
        from providers.stripe.adapter import StripeProvider

        return StripeProvider(
            cfg.name,
            api_key=cfg.credentials.get("api_key", SANDBOX_STRIPE_KEY),
            base_url=base_url,
            currencies=cfg.currencies,
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
        )
    if cfg.type == "braintree":
        from providers.braintree.adapter import DEFAULT_LOOKUP_PROOF_AFTER_S, BraintreeProvider

        return BraintreeProvider(
            cfg.name,
            merchant_id=_need(creds, "merchant_id", cfg),
            public_key=_need(creds, "public_key", cfg),
            private_key=_need(creds, "private_key", cfg),
            base_url=base_url,
            currencies=cfg.currencies,
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            # Braintree takes the currency from the merchant account: one per currency.
            merchant_account_ids=cfg.options.get("merchant_account_ids")
            or ({c: f"sandbox_{c.lower()}" for c in cfg.currencies} if cfg.sandbox else None),
            lookup_proof_after_s=float(cfg.options.get("lookup_proof_after_s",
                                                       DEFAULT_LOOKUP_PROOF_AFTER_S)),
            default_currency=cfg.options.get("default_currency"),
        )
    if cfg.type == "adyen":
        from providers.adyen.adapter import AdyenProvider

        return AdyenProvider(
            cfg.name,
            api_key=_need(creds, "api_key", cfg),
            merchant_account=str(cfg.options.get("merchant_account", "SandboxECOM")),
            base_url=base_url,
            currencies=cfg.currencies,
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
        )
    raise ValueError(f"provider {cfg.name}: type {cfg.type!r} is not supported")


def _need(creds: dict[str, str], key: str, cfg: ProviderConfig) -> str:
    if key not in creds:
        raise ValueError(f"provider {cfg.name}: {key} is required")
    return creds[key]


def sandbox_types(config: GatewayConfig) -> set[str]:
    return {p.type for p in config.providers.values() if p.sandbox}


def _count_unmapped() -> None:
    """Point the shared unmapped-status report at the metric."""
    from gateway import metrics
    from providers import status_table

    status_table.on_unmapped = (
        lambda ptype, kind, raw: metrics.UNMAPPED_STATUSES.labels(ptype).inc())


def build_providers(config: GatewayConfig, sandbox_ports: dict[str, int]) -> dict[str, Provider]:
    _count_unmapped()
    return {
        name: build_provider(cfg, sandbox_ports, config.sandbox_host)
        for name, cfg in config.providers.items()
    }
