"""Build the configured provider adapters from their folders' declarations
(``providers/registry.py``); the gateway never branches on a provider type."""

from __future__ import annotations

import dataclasses

from gateway.config import GatewayConfig, ProviderConfig
from providers.base import Provider
from providers.declaration import ProviderDeclaration
from providers.registry import declaration


def declaration_of(cfg: ProviderConfig) -> ProviderDeclaration:
    try:
        return declaration(cfg.type)
    except KeyError:
        raise ValueError(f"provider {cfg.name}: type {cfg.type!r} is not supported") from None


def effective(cfg: ProviderConfig) -> ProviderConfig:
    """``cfg`` with the in-process simulator's credentials under the configured ones
    (``sandbox: true``); what the adapter, the webhook verifier and doctor use."""
    merged = declaration_of(cfg).credentials_of(cfg)
    return cfg if merged == cfg.credentials else dataclasses.replace(cfg, credentials=merged)


def provider_settings(cfg: ProviderConfig, sandbox_ports: dict[str, int], host: str
                      ) -> ProviderConfig:
    """``cfg`` as its adapter (and settlement fetch) use it: effective credentials, and the
    in-process simulator's URL under ``sandbox: true``."""
    decl = declaration_of(cfg)
    base_url = cfg.base_url
    if cfg.sandbox:
        port = sandbox_ports.get(cfg.type)
        if port is None:
            raise ValueError(f"provider {cfg.name}: no in-process {cfg.type} simulator running")
        base_url = f"http://{host}:{port}{decl.sandbox_path}"
    assert base_url is not None
    return dataclasses.replace(effective(cfg), base_url=base_url)


def build_provider(cfg: ProviderConfig, sandbox_ports: dict[str, int], host: str) -> Provider:
    decl = declaration_of(cfg)
    settings = provider_settings(cfg, sandbox_ports, host)
    for key in decl.required_secrets:
        if key not in settings.credentials:
            raise ValueError(f"provider {cfg.name}: {key} is required")
    return decl.build(settings)


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
