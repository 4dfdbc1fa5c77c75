"""What a provider's ``gateway doctor`` probe reports: checks, and the shared clock check.

Each provider folder's ``doctor.py`` makes its harmless authenticated call and reports
:class:`Check` lines with :func:`ok` / :func:`warn` / :func:`fail`; :func:`clock_check`
turns the answer's ``Date`` header into the skew check every provider shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from providers.faults import classify_transport_error
from providers.settings import ProviderSettings

Status = Literal["ok", "warn", "fail"]

#: Clock skew against a provider's ``Date`` header: above this, warn ...
CLOCK_WARN_S = 5.0
#: ... and above this, fail.
CLOCK_FAIL_S = 60.0


@dataclass(frozen=True)
class Check:
    subject: str  # provider name, "store" or "gateway"
    name: str  # e.g. "credentials", "account:USD", "clock", "webhook", "writable"
    status: Status
    detail: str


def ok(subject: str, name: str, detail: str) -> Check:
    return Check(subject, name, "ok", detail)


def warn(subject: str, name: str, detail: str) -> Check:
    return Check(subject, name, "warn", detail)


def fail(subject: str, name: str, detail: str) -> Check:
    return Check(subject, name, "fail", detail)


@dataclass(frozen=True)
class Answered:
    """When the harmless call went out and came back, and the provider's Date header."""

    sent_at: float
    received_at: float
    date: str | None


def header_value(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, Mapping):
            lname = name.lower()
            value = next((v for k, v in headers.items() if str(k).lower() == lname), None)
    except AttributeError:
        return None
    return str(value) if value is not None else None


def unreachable(exc: BaseException, base_url: str) -> str:
    return f"unreachable at {base_url}: {classify_transport_error(exc).error_code}"


def clock_check(subject: str, answered: Answered | None) -> Check:
    """Skew between the provider's ``Date`` header and this host's clock."""
    if answered is None:
        return warn(subject, "clock", "not measured: no answer from the provider")
    if not answered.date:
        return warn(subject, "clock", "not measured: the answer had no Date header")
    try:
        provider_ts = parsedate_to_datetime(answered.date).timestamp()
    except (TypeError, ValueError, IndexError):
        return warn(subject, "clock", "not measured: unreadable Date header")
    local = (answered.sent_at + answered.received_at) / 2
    skew = provider_ts + 0.5 - local  # Date is truncated to the second
    error = 0.5 + (answered.received_at - answered.sent_at) / 2
    size = abs(skew)
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"provider clock {size:.1f} s {direction} this host (Date header, +/-{error:.1f} s)"
    if size > CLOCK_FAIL_S:
        return fail(subject, "clock", f"{detail}: over {CLOCK_FAIL_S:g} s, webhook timestamps "
                    "and reconciliation ages are wrong; fix NTP")
    if size > CLOCK_WARN_S:
        return warn(subject, "clock", f"{detail}: over {CLOCK_WARN_S:g} s; check NTP")
    return ok(subject, "clock", detail)


def endpoint(cfg: ProviderSettings) -> str | None:
    return cfg.base_url.rstrip("/") if cfg.base_url else None


@dataclass(frozen=True)
class SignedNotification:
    body: bytes
    headers: dict[str, str]
