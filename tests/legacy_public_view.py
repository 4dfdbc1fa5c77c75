"""The payment object's projection as it was before the typed models
(gateway/model.py ``public_view`` / ``dispute_view`` and gateway/public_schema.py's field
lists), verbatim: the oracle tests/unit/gateway/test_payment_types.py holds the typed
projection to, and the baseline bench/public_view.py times it against."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

ATTEMPT = ["provider", "outcome", "error_code", "started_at", "duration_ms"]
REFUND = ["id", "amount", "status", "provider_reference", "reason", "created_at", "failure"]
DISPUTE = ["id", "amount", "currency", "reason", "status", "evidence_due_by",
          "provider_reference"]
PAYMENT = ["id", "object", "status", "amount", "currency", "capture", "amount_authorized",
          "amount_captured", "amount_capture_pending", "amount_refunded", "provider",
          "provider_reference", "reference", "routing", "attempts", "refunds", "disputes",
          "failure", "next_action", "metadata", "payment_method", "created_at",
          "updated_at"]


def old_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _listed(item: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {k: item[k] for k in fields if k in item}


def old_dispute_view(dispute: dict[str, Any]) -> dict[str, Any]:
    out = _listed(dispute, DISPUTE)
    due = dispute.get("evidence_due_by")
    out["evidence_due_by"] = old_iso(float(due)) if due is not None else None
    return out


def old_public_view(doc: dict[str, Any]) -> dict[str, Any]:
    out = _listed(doc, PAYMENT)
    out["created_at"] = old_iso(doc["created_at"])
    out["updated_at"] = old_iso(doc["updated_at"])
    out["attempts"] = [_listed(a, ATTEMPT) for a in doc["attempts"]]
    out["refunds"] = [_listed(r, REFUND) for r in doc["refunds"]]
    out["disputes"] = [old_dispute_view(d) for d in doc.get("disputes") or []]
    out["amount_capture_pending"] = (
        int(doc.get("_capture_pending") or 0)
        if doc["status"] == "capture_pending" else 0)
    return out
