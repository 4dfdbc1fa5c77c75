"""A provider that answers for another currency or amount than was sent is never a
success (issue #10): the adapter voids what it can, the payment ends ``failed``
(``provider_amount_mismatch``, money provably released) or ``unknown``, and
``gateway_provider_mismatches_total`` counts it. Plus the config check that prevents the
Braintree case in the first place."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from gateway.app import create_app
from gateway.appkeys import SANDBOX_PORTS
from gateway.config import ConfigError, load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import SimControl, headers, payment_body, write_config


def _mismatches(provider: str) -> float:
    return REGISTRY.get_sample_value("gateway_provider_mismatches_total",
                                     {"provider": provider}) or 0.0


@pytest.mark.parametrize(("capture", "final", "sim_status"), [
    ("manual", "failed", "voided"),  # the authorization is voided: provably released
    ("automatic", "unknown", "settled"),  # the simulator settles at once: not voidable
])
async def test_a_sale_charged_in_another_currency_is_never_a_success(
    tmp_path: Path, store_url: str, aiohttp_client, capture: str, final: str, sim_status: str
) -> None:
    """JPY routed to a merchant account that really charges USD (a wrong mapping): the
    simulator charges USD 500.00 for JPY 500. The gateway voids what it can and fails the
    payment (or leaves it unknown when the void cannot prove the money released) instead
    of calling it authorized or captured."""
    config = write_config(tmp_path, store_url, providers={
        "bt_jpy": {"type": "braintree", "sandbox": True, "currencies": ["JPY"],
                   "merchant_account_ids": {"JPY": "acme_usd"}}})
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    before = _mismatches("bt_jpy")
    r = await client.post("/v1/payments", headers=headers(idem=f"jpy-as-usd-{capture}"),
                          data=json.dumps(payment_body(amount=500, currency="JPY",
                                                       capture=capture)))
    pay = await r.json()
    assert r.status == 201, pay
    assert pay["status"] == final, pay
    assert pay["amount_captured"] == 0 and pay["amount_authorized"] == 0
    assert pay["attempts"][0]["error_code"] == "provider_amount_mismatch"
    if final == "failed":
        assert pay["failure"]["code"] == "provider_amount_mismatch"
    assert _mismatches("bt_jpy") == before + 1
    async with aiohttp.ClientSession() as session:
        sim = SimControl(f"http://127.0.0.1:{app[SANDBOX_PORTS]['control']}", session)
        [charge] = await sim.charges("braintree", pay["id"])
    assert (charge["currency"], charge["status"]) == ("USD", sim_status)
    assert pay["provider_reference"] == charge["id"]


def _braintree(tmp_path: Path, **extra: object) -> Path:
    return write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}", providers={
        "bt_live": {"type": "braintree", "merchant_id": "m", "public_key": "p",
                    "private_key": "k", "base_url": "https://api.braintreegateway.com",
                    "currencies": ["USD", "JPY"], **extra}})


def test_braintree_currency_without_merchant_account_is_a_config_error(
    tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"bt_live\.currencies: JPY has no merchant account"):
        load_config(_braintree(tmp_path))
    with pytest.raises(ConfigError, match="JPY has no merchant account"):
        load_config(_braintree(tmp_path, default_currency="USD"))
    with pytest.raises(ConfigError, match="default_currency"):
        load_config(_braintree(tmp_path, default_currency="EUR",
                               merchant_account_ids={"USD": "a", "JPY": "b"}))
    ok = load_config(_braintree(tmp_path, default_currency="USD",
                                merchant_account_ids={"JPY": "acme_jpy"}))
    assert ok.providers["bt_live"].options["default_currency"] == "USD"


def test_check_config_names_file_provider_and_currency(tmp_path: Path, capsys) -> None:
    from gateway.cli import main

    assert main(["check-config", "--config", str(_braintree(tmp_path))]) != 0
    err = capsys.readouterr().err
    assert "gateway.yaml" in err and "bt_live" in err and "JPY" in err
