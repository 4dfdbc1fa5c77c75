"""Hot reload of routing.yaml in a running gateway: admin API, file change, SIGHUP;
an invalid edit is rejected and the old rules keep serving."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import load_config
from gateway.metrics import REGISTRY
from tests.gateway_harness import headers, payment_body, wait_for, write_config

ADMIN = {"Authorization": "Bearer test-admin-token"}
PROVIDERS = {
    "stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR", "USD"]},
    "bt_main": {"type": "braintree", "sandbox": True, "currencies": ["EUR", "USD"]},
}
V1 = "version: 1\nrules:\n  - name: default\n    providers: [stripe_main, bt_main]\n"
V2 = ("version: 1\nrules:\n  - name: eur-to-braintree\n    when: {currency: [EUR]}\n"
      "    providers: [bt_main]\n  - name: default\n    providers: [stripe_main]\n")
BAD = ("version: 1\nrules:\n  - name: split\n    split: {stripe_main: 60, bt_main: 30}\n"
       "  - name: default\n    providers: [stripe_main]\n")


async def _client(tmp_path: Path, store_url: str, aiohttp_client, poll_s: float) -> TestClient:
    (tmp_path / "routing.yaml").write_text(V1)
    cfg = write_config(tmp_path, store_url, providers=PROVIDERS, routing_file="routing.yaml",
                       routing_poll_s=poll_s)
    return await aiohttp_client(create_app(load_config(cfg)))


@pytest.fixture
async def client(tmp_path: Path, store_url: str, aiohttp_client) -> AsyncIterator[TestClient]:
    yield await _client(tmp_path, store_url, aiohttp_client, poll_s=3600)


async def _pay(client: TestClient, idem: str) -> dict:
    r = await client.post("/v1/payments", data=json.dumps(payment_body(currency="EUR")),
                          headers=headers(idem=idem))
    assert r.status == 201
    return await r.json()


async def _version(client: TestClient) -> str:
    r = await client.get("/admin/routing", headers=ADMIN)
    assert r.status == 200
    return (await r.json())["version"]


def _reloads(result: str) -> float:
    return REGISTRY.get_sample_value("gateway_config_reloads_total", {"result": result}) or 0.0


async def test_valid_edit_applies_invalid_edit_is_rejected(client: TestClient,
                                                           tmp_path: Path) -> None:
    first = await _pay(client, "r-1")
    v1 = first["routing"]["config_version"]
    assert first["routing"]["rule"] == "default" and first["provider"] == "stripe_main"
    assert REGISTRY.get_sample_value("gateway_routing_config_info", {"version": v1}) == 1

    applied = _reloads("applied")
    (tmp_path / "routing.yaml").write_text(V2)
    r = await client.post("/admin/routing/reload", headers=ADMIN)
    body = await r.json()
    assert r.status == 200 and body["result"] == "applied" and body["version"] != v1
    v2 = body["version"]
    assert _reloads("applied") == applied + 1
    assert REGISTRY.get_sample_value("gateway_routing_config_info", {"version": v2}) == 1
    assert REGISTRY.get_sample_value("gateway_routing_config_info", {"version": v1}) is None
    second = await _pay(client, "r-2")
    assert second["routing"] == {"rule": "eur-to-braintree", "config_version": v2}
    assert second["provider"] == "bt_main"

    rejected = _reloads("rejected")
    (tmp_path / "routing.yaml").write_text(BAD)
    r = await client.post("/admin/routing/reload", headers=ADMIN)
    body = await r.json()
    assert r.status == 422 and body["result"] == "rejected" and body["version"] == v2
    assert any("routing.yaml:4" in e and "100" in e for e in body["errors"]), body["errors"]
    assert _reloads("rejected") == rejected + 1
    third = await _pay(client, "r-3")  # the old (v2) rules keep serving
    assert third["routing"] == {"rule": "eur-to-braintree", "config_version": v2}


async def test_admin_endpoint_auth(client: TestClient) -> None:
    r = await client.post("/admin/routing/reload")
    assert r.status == 401
    r = await client.post("/admin/routing/reload", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    r = await client.post("/admin/routing/reload", headers=headers())  # a merchant key
    assert r.status == 403


async def test_sighup_reloads(client: TestClient, tmp_path: Path) -> None:
    v1 = await _version(client)
    (tmp_path / "routing.yaml").write_text(V2)
    os.kill(os.getpid(), signal.SIGHUP)

    async def changed() -> bool:
        return await _version(client) != v1

    await wait_for(changed, timeout=5)


async def test_file_change_is_picked_up(tmp_path: Path, store_url: str, aiohttp_client) -> None:
    client = await _client(tmp_path, store_url, aiohttp_client, poll_s=0.1)
    v1 = await _version(client)
    (tmp_path / "routing.yaml").write_text(V2)

    async def changed() -> bool:
        return await _version(client) != v1

    await wait_for(changed, timeout=5)
    pay = await _pay(client, "fc-1")
    assert pay["provider"] == "bt_main"


def test_invalid_routing_file_fails_startup(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(BAD)
    cfg = write_config(tmp_path, "sqlite:///x.db", providers=PROVIDERS,
                       routing_file="routing.yaml")
    from routing.loader import RoutingConfigError

    with pytest.raises(RoutingConfigError):
        create_app(load_config(cfg))


def test_route_explains_the_same_static_rule_the_gateway_stamps(tmp_path: Path) -> None:
    """Without routing_file, `gateway route` and the running gateway use one table."""
    from gateway.routing_runtime import RoutingRuntime
    from routing.explain import static_table

    cfg = load_config(write_config(tmp_path, "sqlite:///x.db", providers=PROVIDERS,
                                   candidates=["bt_main", "stripe_main"]))
    decision = RoutingRuntime(cfg).decide(payment_body(), "pay_static", "acme")
    explained = static_table(cfg)
    assert (decision.rule, decision.version) == (explained.rules[0].name, explained.version)
    assert decision.version.startswith("static-")
    assert decision.candidates == ("bt_main", "stripe_main")
