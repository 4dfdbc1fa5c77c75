"""Every provider the gateway can route to: one line per ``providers/<name>/`` folder.

A folder joins by exporting ``DECLARATION`` (a :class:`providers.declaration.
ProviderDeclaration`) from its ``declaration.py`` and by one line in :data:`PACKAGES`.
"""

from __future__ import annotations

import importlib

from providers.declaration import ProviderDeclaration

PACKAGES: tuple[str, ...] = (
    "providers.stripe",
    "providers.braintree",
    "providers.adyen",
)


def _load() -> dict[str, ProviderDeclaration]:
    out: dict[str, ProviderDeclaration] = {}
    for package in PACKAGES:
        decl = importlib.import_module(f"{package}.declaration").DECLARATION
        if not isinstance(decl, ProviderDeclaration):
            raise TypeError(f"{package}.declaration.DECLARATION is not a ProviderDeclaration")
        if decl.type in out:
            raise ValueError(f"provider type {decl.type!r} is declared twice")
        out[decl.type] = decl
    return out


#: Provider type (gateway.yaml ``type:``, the types it accepts) -> its declaration, in
#: :data:`PACKAGES` order.
DECLARATIONS: dict[str, ProviderDeclaration] = _load()


def declaration(provider_type: str) -> ProviderDeclaration:
    """The declaration of ``provider_type``; KeyError when no folder declares it."""
    return DECLARATIONS[provider_type]


__all__ = ["DECLARATIONS", "PACKAGES", "declaration"]
