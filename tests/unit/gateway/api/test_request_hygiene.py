"""Hostile input gets a clear 4xx, never a 500, and loses nothing (SPEC 12.1; issue #11):
duplicate keys, deep nesting, huge integers, lone surrogates, invalid UTF-8, compressed
bodies, non-ASCII Authorization, card numbers written with separators (in the body, the
reference and the Idempotency-Key), malformed webhook bodies, stale Braintree webhooks."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import STORE
from gateway.config import load_config
from gateway.metrics import REGISTRY
from gateway.model import derived_id
from providers.braintree.webhooks import sign_payload
from providers.braintree.xml import encode
from tests.gateway_harness import ACME_KEY, headers, payment_body, write_config

PROVIDERS = {
    "stripe_main": {"type": "stripe", "sandbox": True, "currencies": ["EUR"]},
    "bt_main": {"type": "braintree", "sandbox": True, "currencies": ["EUR"]},
    "adyen_main": {"type": "adyen", "sandbox": True, "currencies": ["EUR"],
                   "merchant_account": "HygieneECOM"},
}


@pytest.fixture
async def client(store_url: str, tmp_path: Path, aiohttp_client) -> AsyncIterator[TestClient]:
    app = create_app(load_config(write_config(tmp_path, store_url, providers=PROVIDERS)))
    yield await aiohttp_client(app)


async def _post(client: TestClient, raw: bytes, idem: str, **extra: str):
    r = await client.post("/v1/payments", data=raw, headers={**headers(idem=idem), **extra})
    return r.status, await r.json()


async def _stored(client: TestClient, idem: str) -> bool:
    store = client.server.app[STORE]
    return await store.get_payment(derived_id("pay_", "acme", idem)) is not None


BODY = json.dumps(payment_body()).encode()


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"amount":100,"amount":100000,"currency":"EUR","payment_method":{"type":"card",'
     b'"token":"tok_visa"}}', "duplicate_key"),
    (b'{"metadata":' + b'{"a":' * 600 + b'1' + b'}' * 600 + b'}', "too_deep"),
    (b'{"amount":' + b'9' * 4400 + b'}', "number_too_long"),
    (b'{"amount":1000,"currency":"EUR","reference":"\\ud800","payment_method":'
     b'{"type":"card","token":"tok_visa"}}', "invalid_string"),
    (b'{"amount":1000,"reference":"\xff\xfe"}', "invalid_utf8"),
    (b'{"amount":NaN}', "invalid_number"),
])
async def test_ambiguous_or_hostile_json_is_a_400_and_nothing_is_stored(
    client: TestClient, raw: bytes, code: str
) -> None:
    idem = f"hostile-{code}"
    status, err = await _post(client, raw, idem)
    assert status == 400, err
    assert err["error"]["code"] == code and err["error"]["type"] == "invalid_request"
    assert not await _stored(client, idem)


@pytest.mark.parametrize("raw", [gzip.compress(BODY), b"\x1f\x8b garbage that is not gzip"])
async def test_a_compressed_body_is_refused(client: TestClient, raw: bytes) -> None:
    status, err = await _post(client, raw, "gzip", **{"Content-Encoding": "gzip"})
    assert status == 400 and err["error"]["code"] == "unsupported_content_encoding", err
    assert err["error"]["param"] == "Content-Encoding"
    assert not await _stored(client, "gzip")


async def _raw_request(client: TestClient, head: bytes) -> int:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/v1/payments/pay_x", "/admin/routing"])
@pytest.mark.parametrize(("value", "expected"), [
    (b"Bearer gw_sk_\xc3\xa9t\xc3\xa9", 401), (b"Bearer \xff\xfe", 401),
    (b"Bearer a\x7fb", 400),
    (b"Bearer a\x01b", 400),  # a control byte: aiohttp refuses the request as bad HTTP
])
async def test_a_non_ascii_authorization_is_a_401(client: TestClient, path: str,
                                                  value: bytes, expected: int) -> None:
    status = await _raw_request(client, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                b"Authorization: " + value + b"\r\nConnection: close\r\n\r\n")
    assert status == expected


CARD_VARIANTS = ["4242.4242.4242.4242", "4242/4242/4242/4242", "4242\t4242\t4242\t4242",
                 "4242  4242  4242  4242", "4242-4242 4242.4242"]


@pytest.mark.parametrize("card", CARD_VARIANTS)
@pytest.mark.parametrize("where", ["reference", "metadata", "token"])
async def test_card_numbers_with_separators_are_refused_and_stored_nowhere(
    client: TestClient, card: str, where: str
) -> None:
    body = payment_body()
    if where == "reference":
        body["reference"] = f"order {card}"
    elif where == "metadata":
        body["metadata"] = {"note": card}
    else:
        body["payment_method"] = {"type": "card", "token": card}
    idem = f"card-{where}-{CARD_VARIANTS.index(card)}"
    status, err = await _post(client, json.dumps(body).encode(), idem)
    assert status == 400 and err["error"]["code"] == "raw_card_data_rejected", err
    assert card not in json.dumps(err)
    assert not await _stored(client, idem)


@pytest.mark.parametrize("card", CARD_VARIANTS)
async def test_a_card_number_as_idempotency_key_is_refused_and_not_kept(
    client: TestClient, card: str
) -> None:
    idem = card.replace("\t", " ")  # a header value cannot hold a tab
    status, err = await _post(client, BODY, idem)
    assert status == 400 and err["error"]["code"] == "raw_card_data_rejected", err
    assert err["error"]["param"] == "Idempotency-Key"
    store = client.server.app[STORE]
    claim = await store.claim_idempotency("acme", idem, "probe", 1, 1)
    assert claim.outcome == "new"  # nothing was kept under that key
    assert not await _stored(client, idem)


@pytest.mark.parametrize("idem", ["chaos-1006503816-106", "inv 20261202-00004"])
async def test_order_ids_whose_digits_pass_luhn_are_not_card_numbers(
    client: TestClient, idem: str
) -> None:
    """13+ digits that pass the Luhn check but are not grouped as a card is written
    (e.g. a 10-digit order number and a 3-digit suffix) are a merchant's own id."""
    from gateway.logs import luhn_valid

    assert luhn_valid("".join(ch for ch in idem if ch.isdigit()))
    body = json.loads(BODY)
    status, pay = await _post(client, json.dumps({**body, "reference": idem}).encode(), idem)
    assert status == 201, pay


@pytest.mark.parametrize("provider", ["stripe_main", "adyen_main", "bt_main"])
@pytest.mark.parametrize("raw", [b"[" * 5000 + b"]" * 5000, b"\xff\xfe\x00", b'{"a":' * 3000])
async def test_malformed_webhook_bodies_are_a_4xx(client: TestClient, provider: str,
                                                  raw: bytes) -> None:
    r = await client.post(f"/webhooks/{provider}", data=raw,
                          headers={"Content-Type": "application/json"})
    assert 400 <= r.status < 500, await r.text()


def _bt_notification(when: dt.datetime, txn_id: str) -> bytes:
    xml = encode("notification", {"timestamp": when, "kind": "transaction_settled",
                                  "subject": {"transaction": {
                                      "id": txn_id, "status": "settled", "type": "sale",
                                      "amount": "10.00", "currency_iso_code": "EUR"}}})
    payload = base64.encodebytes(xml)
    signature = sign_payload("sandbox_public_key", "sandbox_private_key", payload)
    return urlencode({"bt_signature": signature, "bt_payload": payload.decode()}).encode()


@pytest.mark.parametrize("age", [dt.timedelta(days=365), dt.timedelta(hours=26),
                                 -dt.timedelta(hours=1)])
async def test_a_validly_signed_but_stale_braintree_webhook_is_rejected(
    client: TestClient, age: dt.timedelta
) -> None:
    r = await client.post("/v1/payments", data=json.dumps(payment_body(
        capture="manual", payment_method={"type": "card",
                                          "provider_tokens": {"bt_main": "tok_visa"}})),
        headers=headers(idem=f"bt-stale-{age.total_seconds()}"))
    pay = await r.json()
    assert pay["status"] == "authorized" and pay["provider"] == "bt_main", pay
    before = REGISTRY.get_sample_value("gateway_webhooks_total",
                                       {"provider": "bt_main", "result": "stale"}) or 0.0
    when = (dt.datetime.now(dt.UTC) - age).replace(microsecond=0)
    body = _bt_notification(when, pay["provider_reference"])
    r = await client.post("/webhooks/bt_main", data=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "stale_timestamp"
    assert REGISTRY.get_sample_value("gateway_webhooks_total", {
        "provider": "bt_main", "result": "stale"}) == before + 1
    r = await client.get(f"/v1/payments/{pay['id']}",
                         headers={"Authorization": f"Bearer {ACME_KEY}"})
    assert (await r.json())["status"] == "authorized"
