"""Shared by tests/test_{stripe,braintree,adyen}_disputes.py: a webhook receiver, the
control API's ``POST /_sim/{provider}/disputes``, the refusal cases every simulator
must answer alike, and the vendored published examples (dispute-examples.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from providers import status_table
from providers.simulator import SimulatorHost

EXAMPLES = json.loads((Path(__file__).parent / "fixtures" / "provider_specs"
                       / "dispute-examples.json").read_text())




async def dispute(host: SimulatorHost, provider: str, body: Any) -> tuple[int, Any]:
    """``POST /_sim/{provider}/disputes`` -> (HTTP status, JSON answer)."""
    url = f"{host.control_url}/_sim/{provider}/disputes"
    async with aiohttp.ClientSession() as s:
        kw: dict[str, Any] = ({"data": body} if isinstance(body, str | bytes)
                              else {"json": body})
        async with s.post(url, **kw) as resp:
            return resp.status, await resp.json()


def error_code(answer: Any) -> str:
    return str(answer["error"]["code"])


async def check_refusals(host: SimulatorHost, provider: str, *, captured: str,
                         uncaptured: str, captured_amount: int) -> None:
    """Every refused control request, against a payment ``captured`` (captured amount
    ``captured_amount`` ISO minor units, no dispute yet) and one only authorised.
    Leaves ``captured`` with no dispute."""
    cases: list[tuple[Any, int, str]] = [
        ("not json", 400, "invalid_json"),
        ([1, 2], 400, "invalid_json"),
        ({"action": "open"}, 400, "invalid_reference"),
        ({"reference": "", "action": "open"}, 400, "invalid_reference"),
        ({"reference": captured}, 400, "invalid_action"),
        ({"reference": captured, "action": "refund"}, 400, "invalid_action"),
        ({"reference": captured, "action": "open", "amount": 0}, 400, "invalid_amount"),
        ({"reference": captured, "action": "open", "amount": "5"}, 400, "invalid_amount"),
        ({"reference": captured, "action": "open", "amount": True}, 400, "invalid_amount"),
        ({"reference": captured, "action": "win", "amount": 5}, 400, "invalid_amount"),
        ({"reference": captured, "action": "open", "extra": 1}, 400, "unknown_parameter"),
        ({"reference": captured, "action": "open", "amount": captured_amount + 1}, 400,
         "amount_too_large"),
        ({"reference": "no-such-payment", "action": "open"}, 404, "unknown_reference"),
        ({"reference": uncaptured, "action": "open"}, 409, "not_captured"),
        ({"reference": captured, "action": "win"}, 409, "no_open_dispute"),
        ({"reference": captured, "action": "lose"}, 409, "no_open_dispute"),
    ]
    for body, status, code in cases:
        got_status, answer = await dispute(host, provider, body)
        assert (got_status, error_code(answer)) == (status, code), (body, answer)
        assert answer["error"]["message"]


async def check_open_twice_and_closed(host: SimulatorHost, provider: str, reference: str
                                      ) -> None:
    """After a dispute on ``reference`` was closed: opening again and winning again are
    refused."""
    status, answer = await dispute(host, provider, {"reference": reference, "action": "open"})
    assert (status, error_code(answer)) == (409, "already_disputed"), answer
    status, answer = await dispute(host, provider, {"reference": reference, "action": "win"})
    assert (status, error_code(answer)) == (409, "no_open_dispute"), answer


class Unmapped:
    """Captures what :data:`providers.status_table.on_unmapped` reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self._old = status_table.on_unmapped

    def __enter__(self) -> Unmapped:
        status_table.on_unmapped = lambda p, k, r: self.seen.append((p, k, r))
        return self

    def __exit__(self, *exc: object) -> None:
        status_table.on_unmapped = self._old
