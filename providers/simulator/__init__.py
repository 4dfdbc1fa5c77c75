"""Provider simulators: shared framework (tokens, faults, host, control API)."""

from providers.simulator.faults import FaultMode, FaultSettings, FaultValidationError, merge_faults
from providers.simulator.host import SimulatorHost
from providers.simulator.idempotency import Claim, IdempotencyStore, StoredResponse
from providers.simulator.ledger import ChargeView, RequestCounter
from providers.simulator.provider import SimulatedProvider
from providers.simulator.tokens import SANDBOX_TOKENS, CardBehavior, SandboxCard, resolve_token

__all__ = [
    "SANDBOX_TOKENS",
    "CardBehavior",
    "ChargeView",
    "Claim",
    "FaultMode",
    "FaultSettings",
    "FaultValidationError",
    "IdempotencyStore",
    "RequestCounter",
    "SandboxCard",
    "SimulatedProvider",
    "SimulatorHost",
    "StoredResponse",
    "merge_faults",
    "resolve_token",
]
