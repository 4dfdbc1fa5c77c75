"""Helpers to run a gateway (in-process or as a real process) against the simulators."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ACME_KEY = "gw_sk_test_acme"
GLOBEX_KEY = "gw_sk_test_globex"


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def write_config(
    directory: Path,
    store_url: str,
    providers: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> Path:
    """A gateway.yaml for tests: two merchants, one sandbox Stripe unless told otherwise."""
    cfg: dict[str, Any] = {
        "store": store_url,
        "admin_token": "test-admin-token",
        "request_deadline_s": 20,
        "idempotency_ttl_s": 86400,
        "retry": {"attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.2, "jitter_s": 0.05},
        "merchants": [
            {"id": "acme", "api_key_sha256": [_sha(ACME_KEY)]},
            {"id": "globex", "api_key_sha256": [_sha(GLOBEX_KEY)]},
        ],
        "providers": providers
        or {
            "stripe_main": {
                "type": "stripe", "sandbox": True, "api_key": "sk_test_gateway",
                "currencies": ["USD", "EUR", "GBP", "JPY"], "timeout_s": 5,
            }
        },
    }
    if store_url.startswith("redis"):  # the tests' private redis-server keeps nothing
        cfg["store_options"] = {"allow_volatile": True}
    cfg.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def headers(key: str = ACME_KEY, idem: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if idem is not None:
        h["Idempotency-Key"] = idem
    return h


def payment_body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": 1000, "currency": "EUR", "capture": "manual",
        "payment_method": {"type": "card", "token": "tok_visa"},
        "reference": "order-1",
    }
    body.update(kw)
    return body


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    interval: float = 0.05,
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


class SimControl:
    """Client for the simulators' control API (SPEC section 15)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.session = session

    async def faults(self, provider: str, **settings: Any) -> dict[str, Any]:
        async with self.session.post(f"{self.base}/_sim/{provider}/faults",
                                     data=json.dumps(settings)) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def charges(self, provider: str, reference: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base}/_sim/{provider}/charges",
                                    params={"reference": reference}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["charges"]

    async def requests(self, provider: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_sim/{provider}/requests") as r:
            assert r.status == 200, await r.text()
            return await r.json()
