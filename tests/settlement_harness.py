"""Shared by tests/unit/providers/*/test_*_settlement.py: the control API's
``GET /_sim/{provider}/settlement`` and ``POST /_sim/{provider}/settlement_faults``, the
refusals every simulator answers alike, the fee schedule as the tests compute it, and
checks on parsed lines."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import aiohttp

from providers.settlement import SettlementLine
from providers.simulator import SimulatorHost


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


async def report(host: SimulatorHost, provider: str, day: dt.date | str | None = None
                 ) -> tuple[int, bytes, str]:
    """``GET /_sim/{provider}/settlement?date=`` -> (status, body, content type)."""
    params = {} if day is None else {"date": str(day)}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{host.control_url}/_sim/{provider}/settlement",
                         params=params) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


async def report_bytes(host: SimulatorHost, provider: str, day: dt.date | None = None
                       ) -> bytes:
    status, body, _ = await report(host, provider, day or today())
    assert status == 200, body
    return body


async def fault(host: SimulatorHost, provider: str, body: Any) -> tuple[int, Any]:
    """``POST /_sim/{provider}/settlement_faults`` -> (status, JSON answer)."""
    url = f"{host.control_url}/_sim/{provider}/settlement_faults"
    kw: dict[str, Any] = {"data": body} if isinstance(body, str | bytes) else {"json": body}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, **kw) as resp:
            return resp.status, await resp.json()


async def check_refusals(host: SimulatorHost, provider: str, *, captured: str,
                         uncaptured: str, fees_reported: bool = True) -> None:
    """Every refused control request, against a payment ``captured`` (captured, never
    refunded) and one only authorised. Leaves no fault set. ``fees_reported=False``: the
    provider reports no fee (Braintree), so ``fee_changed`` is refused for any payment."""
    cases: list[tuple[Any, int, str]] = [
        ("not json", 400, "invalid_json"),
        ([1], 400, "invalid_json"),
        ({"reference": captured}, 400, "invalid_kind"),
        ({"reference": captured, "kind": "lost_payout"}, 400, "invalid_kind"),
        ({"kind": "unsettled_capture"}, 400, "invalid_reference"),
        ({"kind": "unsettled_capture", "reference": ""}, 400, "invalid_reference"),
        ({"kind": "fee_changed", "reference": captured, "x": 1}, 400, "unknown_parameter"),
        ({"kind": "wrong_payout", "reference": "no-such-payment"}, 404, "unknown_reference"),
        ({"kind": "double_refund", "reference": captured}, 409, "not_refunded"),
        ({"kind": "unsettled_capture", "reference": uncaptured}, 409, "not_captured"),
        ({"kind": "fee_changed", "reference": uncaptured}, 409,
         "not_captured" if fees_reported else "fees_not_reported"),
        ({"kind": "wrong_payout", "reference": uncaptured}, 409, "not_captured"),
    ]
    if not fees_reported:
        cases.append(({"kind": "fee_changed", "reference": captured}, 409,
                      "fees_not_reported"))
    for body, status, code in cases:
        got, answer = await fault(host, provider, body)
        assert (got, answer["error"]["code"]) == (status, code), (body, answer)
        assert answer["error"]["message"]
    for query in (None, "2026-13-01", "yesterday", "2026-1-1"):
        got, body, _ = await report(host, provider, query)
        assert got == 400 and b"invalid_date" in body, (query, body)


def schedule_fee_iso(amount: int) -> int:
    """The simulators' documented schedule in ISO minor units: 2.9 %, half up (valid
    where the provider's wire unit is not coarser than ISO's)."""
    return (amount * 290 + 5000) // 10000


def payout_balances(lines: list[SettlementLine]) -> dict[tuple[str, str], int]:
    """Per (payout id, currency): the net of its lines plus its payout line (0 when the
    payout matches its lines)."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for line in lines:
        if line.payout_id is not None:
            out[(line.payout_id, line.currency)] += line.net
    return dict(out)


def by_kind(lines: list[SettlementLine], kind: str, reference: str | None = None
            ) -> list[SettlementLine]:
    return [line for line in lines if line.kind == kind
            and (reference is None or reference in (line.merchant_reference,
                                                    line.payment_reference))]
