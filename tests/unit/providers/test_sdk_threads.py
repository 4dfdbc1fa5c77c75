"""``sdk_threads``: the Braintree / Adyen SDK thread pool size, a provider option in
gateway.yaml (issue #15 item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from providers import sdk_pool
from providers.adyen.declaration import DECLARATION as ADYEN
from providers.braintree.declaration import DECLARATION as BRAINTREE

CONFIG = """\
store: sqlite://g.db
merchants:
  - id: acme
    api_key_sha256: [{sha}]
providers:
  adyen_eu:
    type: adyen
    api_key: test-key
    merchant_account: AcmeECOM
    base_url: http://127.0.0.1:1/checkout/v71
    currencies: [EUR]
    {adyen}
  bt:
    type: braintree
    merchant_id: m
    public_key: pub
    private_key: priv
    base_url: http://127.0.0.1:2
    currencies: [USD]
    merchant_account_ids: {{USD: acme_usd}}
    {braintree}
"""


def _config(tmp_path: Path, adyen: str = "", braintree: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(sha="a" * 64, adyen=adyen, braintree=braintree))
    return path


def _pool_size(provider: object) -> int:
    pool = provider._pool  # type: ignore[attr-defined]
    assert isinstance(pool, sdk_pool.SdkPool)
    size: int = pool._max_workers
    return size


def test_the_pools_take_sdk_threads_and_default_without_it(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, adyen="sdk_threads: 3", braintree="sdk_threads: 40"))
    assert _pool_size(ADYEN.build(cfg.providers["adyen_eu"])) == 3
    assert _pool_size(BRAINTREE.build(cfg.providers["bt"])) == 40
    plain = load_config(_config(tmp_path / ".." / tmp_path.name))
    assert _pool_size(ADYEN.build(plain.providers["adyen_eu"])) == sdk_pool.DEFAULT_THREADS
    assert _pool_size(BRAINTREE.build(plain.providers["bt"])) == sdk_pool.DEFAULT_THREADS


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "true", "many", str(sdk_pool.MAX_THREADS + 1)])
def test_a_bad_sdk_threads_is_a_config_error_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, adyen=f"sdk_threads: {value}",
                            braintree=f"sdk_threads: {value}"))
    errors = info.value.errors
    for name in ("adyen_eu", "bt"):
        assert any(f"providers.{name}.sdk_threads: must be an integer from 1 to" in e
                   for e in errors), errors
