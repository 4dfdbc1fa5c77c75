"""A bounded property-based fuzz of the merchant API, generated from ``/openapi.json``
(issue #11): request bodies drawn from the spec's own schemas (valid shapes) and from
arbitrary JSON and bytes (invalid ones), sent to every POST endpoint. Whatever arrives:
no 5xx, and every answer matches the spec (a Payment, or the Error envelope)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.api.openapi import OPENAPI
from gateway.app import create_app
from gateway.config import load_config
from tests.gateway_harness import headers, payment_body, write_config

PER_ENDPOINT = 260  # 4 endpoints: > 1,000 generated requests per store


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable`` becomes a null type, refs resolved."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _json_schema(OPENAPI["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("nullable", "description")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


SCHEMAS = {name: _json_schema(s) for name, s in OPENAPI["components"]["schemas"].items()}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["amount", "currency", "capture", "payment_method", "reference",
                          "metadata", "customer", "reason"])


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a (small) JSON Schema: the shapes /openapi.json describes."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of(*(from_schema({**schema, "type": k}) for k in kind))
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(10**6)), max_value=10**13)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=3)
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fixed = st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required})
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not props:
            return st.dictionaries(st.text(max_size=10), from_schema(extra), max_size=3)
        return fixed
    return JSON


def _bodies(schema_name: str) -> list[st.SearchStrategy[bytes]]:
    """Strategies drawn from in equal shares (hypothesis's one_of favours its first)."""
    valid = from_schema(SCHEMAS[schema_name]).map(lambda b: json.dumps(b).encode())
    near = st.dictionaries(FIELDS, JSON, max_size=5).map(lambda b: json.dumps(b).encode())
    anything = JSON.map(lambda b: json.dumps(b).encode())
    raw = st.binary(max_size=64)
    if schema_name == "CreatePayment":  # mostly-accepted payments: the success path too
        real = st.builds(
            lambda amount, cur, cap, tok, ref: json.dumps(payment_body(
                amount=amount, currency=cur, capture=cap, reference=ref,
                payment_method={"type": "card", "token": tok})).encode(),
            st.integers(min_value=-5, max_value=10**7), st.sampled_from(["EUR", "USD", "JPY"]),
            st.sampled_from(["automatic", "manual"]),
            st.sampled_from(["tok_visa", "tok_decline", "tok_3ds", "tok_pending", "nope"]),
            st.text(max_size=30))
        return [valid, real, real, near, anything, raw]
    return [valid, valid, near, anything, raw]


def _collect(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    out: list[Any] = []

    @settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def gather(value: Any) -> None:
        out.append(value)

    gather()
    return out


@pytest.fixture
def bodies() -> Iterator[dict[str, list[bytes]]]:
    out: dict[str, list[bytes]] = {}
    for name in ("CreatePayment", "Capture", "Refund", "Void"):
        strategies = _bodies(name)
        share = PER_ENDPOINT // len(strategies) + 1
        out[name] = [body for strategy in strategies for body in _collect(strategy, share)]
    yield out


def _check(status: int, text: str, where: str) -> str | None:
    if status >= 500:
        return f"{where}: HTTP {status}: {text[:300]}"
    try:
        body = json.loads(text)
    except ValueError:
        return f"{where}: HTTP {status} is not JSON: {text[:200]}"
    schema = SCHEMAS["Error"] if status >= 400 else SCHEMAS["Payment"]
    try:
        jsonschema.validate(body, schema)
    except jsonschema.ValidationError as exc:
        return f"{where}: HTTP {status} does not match the spec: {exc.message}"
    return None


async def test_generated_requests_never_get_a_5xx_and_always_match_the_spec(
    tmp_path: Path, store_url: str, aiohttp_client, bodies: dict[str, list[bytes]]
) -> None:
    app = create_app(load_config(write_config(tmp_path, store_url)))
    client = await aiohttp_client(app)
    r = await client.post("/v1/payments", headers=headers(idem="fuzz-base"),
                          data=json.dumps(payment_body(capture="manual", amount=100000)))
    assert r.status == 201
    pid = (await r.json())["id"]
    paths = {"CreatePayment": "/v1/payments", "Capture": f"/v1/payments/{pid}/capture",
             "Refund": f"/v1/payments/{pid}/refunds", "Void": f"/v1/payments/{pid}/void"}
    problems: list[str] = []
    sent = 0
    statuses: dict[int, int] = {}
    for name, path in paths.items():
        for i, raw in enumerate(bodies[name]):
            r = await client.post(path, data=raw, headers=headers(idem=f"fuzz-{name}-{i}"))
            sent += 1
            statuses[r.status] = statuses.get(r.status, 0) + 1
            problem = _check(r.status, await r.text(), f"POST {path} {raw[:80]!r}")
            if problem:
                problems.append(problem)
    print(f"fuzz: {sent} generated requests, statuses {dict(sorted(statuses.items()))}")
    assert sent >= 1000
    assert not problems, "\n".join(problems[:20])
