"""Build the configured provider adapters (and in-process simulators for sandbox ones)."""

from __future__ import annotations

from gateway.config import GatewayConfig, ProviderConfig
from providers.base import Provider

SANDBOX_STRIPE_KEY = "sk_test_sandbox"


def build_provider(cfg: ProviderConfig, sandbox_ports: dict[str, int], host: str) -> Provider:
    base_url = cfg.base_url
    if cfg.sandbox:
        port = sandbox_ports.get(cfg.type)
        if port is None:
            raise ValueError(f"provider {cfg.name}: no in-process {cfg.type} simulator running")
        base_url = f"http://{host}:{port}"
    assert base_url is not None
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
    raise ValueError(f"provider {cfg.name}: type {cfg.type!r} is not supported yet")


def sandbox_types(config: GatewayConfig) -> set[str]:
    return {p.type for p in config.providers.values() if p.sandbox}


def build_providers(config: GatewayConfig, sandbox_ports: dict[str, int]) -> dict[str, Provider]:
    return {
        name: build_provider(cfg, sandbox_ports, config.sandbox_host)
        for name, cfg in config.providers.items()
    }
