"""Through the gateway against each simulator (issue #10): for every currency a provider
supports, the simulator -- which takes its decimals from the provider's own published
data, not from the adapters -- records exactly the amount and currency the merchant asked
for, on the authorization, the capture and the refund."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import load_config
from tests.gateway_harness import SimControl, headers, payment_body, wait_for, write_config
from tests.processes import free_port

CURRENCIES = ["USD", "EUR", "GBP", "JPY", "KWD", "ISK", "CLP", "IDR", "MGA"]
# Adyen lists no MGA in its published table: the gateway refuses it there (400).
SUPPORTED = {"stripe": CURRENCIES, "braintree": CURRENCIES,
             "adyen": [c for c in CURRENCIES if c != "MGA"]}
# Amounts every provider can take exactly in ISO minor units (Stripe: MGA whole ariary,
# three-decimal last digit 0; Adyen: IDR whole rupiah).
AMOUNT = {"USD": 1050, "EUR": 1050, "GBP": 1050, "JPY": 500, "KWD": 1230, "ISK": 550,
          "CLP": 500, "IDR": 150000, "MGA": 250000}
CAPTURE = {"USD": 800, "EUR": 800, "GBP": 800, "JPY": 400, "KWD": 1000, "ISK": 400,
           "CLP": 400, "IDR": 100000, "MGA": 200000}
REFUND = {"USD": 300, "EUR": 300, "GBP": 300, "JPY": 100, "KWD": 500, "ISK": 100,
          "CLP": 100, "IDR": 50000, "MGA": 100000}


@pytest.fixture
async def env(tmp_path: Path, aiohttp_client) -> AsyncIterator[tuple[TestClient, SimControl]]:
    providers = {
        "stripe": {"type": "stripe", "sandbox": True, "currencies": CURRENCIES},
        "braintree": {"type": "braintree", "sandbox": True, "currencies": CURRENCIES},
        "adyen": {"type": "adyen", "sandbox": True, "currencies": SUPPORTED["adyen"],
                  "merchant_account": "CurrencyECOM"},
    }
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}", providers=providers)
    port = free_port()  # the simulators deliver their webhooks (Adyen's confirmations) here
    app = create_app(load_config(config), public_url=f"http://127.0.0.1:{port}")
    client = await aiohttp_client(app, server_kwargs={"port": port})
    async with aiohttp.ClientSession() as session:
        yield client, SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)


async def _post(client: TestClient, path: str, idem: str, body: dict[str, Any]):
    r = await client.post(path, data=json.dumps(body), headers=headers(idem=idem))
    return r.status, await r.json()


@pytest.mark.parametrize("currency", CURRENCIES)
@pytest.mark.parametrize("provider", ["stripe", "braintree"])
async def test_authorize_capture_refund_record_the_merchants_amount(
    env: tuple[TestClient, SimControl], provider: str, currency: str
) -> None:
    client, sim = env
    status, pay = await _post(client, "/v1/payments", f"{provider}-{currency}", payment_body(
        amount=AMOUNT[currency], currency=currency, capture="manual",
        payment_method={"type": "card", "provider_tokens": {provider: "tok_visa"}}))
    assert status == 201 and pay["status"] == "authorized", pay
    [charge] = await sim.charges(provider, pay["id"])
    assert (charge["amount"], charge["currency"]) == (AMOUNT[currency], currency)
    status, pay = await _post(client, f"/v1/payments/{pay['id']}/capture",
                              f"{provider}-{currency}-cap", {"amount": CAPTURE[currency]})
    assert status == 200 and pay["amount_captured"] == CAPTURE[currency], pay
    status, pay = await _post(client, f"/v1/payments/{pay['id']}/refunds",
                              f"{provider}-{currency}-ref", {"amount": REFUND[currency]})
    assert status == 201 and pay["amount_refunded"] == REFUND[currency], pay
    [charge] = await sim.charges(provider, pay["id"])
    assert charge["amount_captured"] == CAPTURE[currency]
    assert charge["amount_refunded"] == REFUND[currency]


@pytest.mark.parametrize("currency", SUPPORTED["adyen"])
async def test_adyen_authorize_capture_refund_record_the_merchants_amount(
    env: tuple[TestClient, SimControl], currency: str
) -> None:
    """Adyen confirms captures and refunds by webhook: each step waits for it."""
    client, sim = env
    status, pay = await _post(client, "/v1/payments", f"adyen-{currency}", payment_body(
        amount=AMOUNT[currency], currency=currency, capture="manual",
        payment_method={"type": "card", "provider_tokens": {"adyen": "tok_visa"}}))
    assert status == 201 and pay["status"] == "authorized", pay
    pid = pay["id"]
    [charge] = await sim.charges("adyen", pid)
    assert (charge["amount"], charge["currency"]) == (AMOUNT[currency], currency)

    async def reaches(check) -> dict[str, Any] | None:
        r = await client.get(f"/v1/payments/{pid}", headers=headers())
        current = await r.json()
        return current if check(current) else None

    status, pay = await _post(client, f"/v1/payments/{pid}/capture", f"adyen-{currency}-cap",
                              {"amount": CAPTURE[currency]})
    assert status == 200, pay
    pay = await wait_for(lambda: reaches(lambda p: p["status"] == "captured"), timeout=10)
    assert pay["amount_captured"] == CAPTURE[currency]
    status, pay = await _post(client, f"/v1/payments/{pid}/refunds", f"adyen-{currency}-ref",
                              {"amount": REFUND[currency]})
    assert status == 201, pay
    pay = await wait_for(lambda: reaches(lambda p: p["amount_refunded"] == REFUND[currency]),
                         timeout=10)
    [charge] = await sim.charges("adyen", pid)
    assert charge["amount_captured"] == CAPTURE[currency]
    assert charge["amount_refunded"] == REFUND[currency]
