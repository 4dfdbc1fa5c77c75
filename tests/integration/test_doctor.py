"""`gateway doctor` (SPEC 13; issue #11 item 6), run as a real process against real
simulators: a `gateway sandbox` process (any credentials accepted, faults and clock skew
through its control API) and, for credential checks, simulators in this test's event loop
that accept only one set of keys. Every case asserts the exact status of its lines and
the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml

from gateway import doctor
from gateway.config import BreakerSettings, ConfigError, ProviderConfig, load_config
from providers.adyen.simulator import AdyenSimulator
from providers.braintree.simulator import BraintreeSimulator
from providers.simulator.host import SimulatorHost
from providers.stripe.simulator import StripeSimulator
from tests.gateway_harness import (
    ACME_KEY,
    SimControl,
    headers,
    payment_body,
    wait_for,
    write_config,
)
from tests.paths import REPO
from tests.processes import child_env, free_port, sandbox_process, start_gateway, stop

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "doctor-admin-token-0123456789"
STRIPE_KEY = "sk_test_doctor_0123456789"
STRIPE_WHSEC = "whsec_doctor_0123456789"
BT_PUBLIC, BT_PRIVATE = "doctor_public_key", "doctor_private_key_0123456789"
ADYEN_KEY = "adyen_doctor_key_0123456789"
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
SECRETS = (ADMIN_TOKEN, STRIPE_KEY, STRIPE_WHSEC, BT_PRIVATE, ADYEN_KEY, ADYEN_HMAC)
DOCTOR_TIMEOUT_S = 60.0

HEALTHY_LINES = {
    ("stripe_main", "credentials"), ("stripe_main", "clock"), ("stripe_main", "webhook"),
    ("braintree_us", "credentials"), ("braintree_us", "account:EUR"),
    ("braintree_us", "account:USD"), ("braintree_us", "clock"), ("braintree_us", "webhook"),
    ("adyen_eu", "credentials"), ("adyen_eu", "merchant_account"), ("adyen_eu", "clock"),
    ("adyen_eu", "webhook"), ("store", "writable"), ("store", "durable"),
    ("gateway", "admin_token"),
}


@dataclass
class Report:
    rc: int
    stdout: str
    stderr: str
    lines: dict[tuple[str, str], tuple[str, str]]  # (subject, check) -> (status, detail)

    def status(self, subject: str, check: str) -> str:
        assert (subject, check) in self.lines, self.stdout + self.stderr
        return self.lines[(subject, check)][0]

    def detail(self, subject: str, check: str) -> str:
        return self.lines[(subject, check)][1]

    def statuses(self) -> dict[tuple[str, str], str]:
        return {k: v[0] for k, v in self.lines.items()}


def parse(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for line in stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0] in ("ok", "warn", "fail"):
            assert (parts[1], parts[2]) not in out, f"duplicate line: {line}"
            out[(parts[1], parts[2])] = (parts[0], parts[3])
    return out


async def run_doctor(config: Path, *extra: str) -> Report:
    """`python -m gateway doctor --config F` as a child process (the event loop keeps
    serving any in-process simulators meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "doctor", "--config", str(config), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env=child_env())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DOCTOR_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode is not None
    return Report(proc.returncode, stdout, stderr, parse(stdout))


def providers_at(urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Three real-shaped providers whose base URLs point at the simulators."""
    return {
        "stripe_main": {"type": "stripe", "api_key": STRIPE_KEY, "webhook_secret": STRIPE_WHSEC,
                        "base_url": urls["stripe"], "currencies": ["USD", "EUR"],
                        "timeout_s": 5},
        "braintree_us": {"type": "braintree", "merchant_id": "acme", "public_key": BT_PUBLIC,
                         "private_key": BT_PRIVATE, "base_url": urls["braintree"],
                         "currencies": ["USD", "EUR"],
                         "merchant_account_ids": {"USD": "acme_usd", "EUR": "acme_eur"},
                         "timeout_s": 5},
        "adyen_eu": {"type": "adyen", "api_key": ADYEN_KEY, "merchant_account": "AcmeECOM",
                     "hmac_key": ADYEN_HMAC, "base_url": urls["adyen"] + "/v71",
                     "currencies": ["EUR"], "timeout_s": 5},
    }


def config_file(tmp: Path, providers: dict[str, dict[str, Any]], store: str | None = None,
                **overrides: Any) -> Path:
    overrides.setdefault("admin_token", ADMIN_TOKEN)
    return write_config(tmp, store or f"sqlite:///{tmp / 'gateway.db'}", providers, **overrides)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with sandbox_process(tmp_path_factory.mktemp("doctor-sandbox") / "sandbox.log") as ready:
        yield ready


@pytest.fixture
async def sim(sandbox: dict[str, Any]) -> AsyncIterator[SimControl]:
    """The module's sandbox, reset (state, faults, clock skew) before and after the test."""
    async with aiohttp.ClientSession() as session:
        control = SimControl(sandbox["control_url"], session)

        async def reset() -> None:
            async with session.post(f"{control.base}/_sim/reset") as r:
                assert r.status == 200, await r.text()

        await reset()
        yield control
        await reset()


def urls(sandbox: dict[str, Any]) -> dict[str, str]:
    return dict(sandbox["base_urls"])


# ---------------------------------------------------------------------------- healthy


async def test_healthy_config_is_all_ok_exit_0_and_echoes_no_secret(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    report = await run_doctor(config_file(tmp_path, providers_at(urls(sandbox))))
    assert report.rc == 0, report.stdout + report.stderr
    assert set(report.lines) == HEALTHY_LINES, report.stdout
    assert set(report.statuses().values()) == {"ok"}, report.stdout
    assert report.detail("stripe_main", "credentials") == "accepted (GET /v1/balance 200)"
    assert "ignored" in report.detail("stripe_main", "webhook")
    assert report.stdout.rstrip().endswith("15 checks: 15 ok, 0 warn, 0 fail")
    for secret in SECRETS:
        assert secret not in report.stdout and secret not in report.stderr
    # the harmless calls reached the providers (and nothing else was sent)
    assert (await sim.requests("stripe"))["by_operation"] == {"retrieve_balance": 1}
    assert (await sim.requests("braintree"))["by_operation"] == {
        "merchant_account_list": 1, "merchant_account_find": 2}
    assert (await sim.requests("adyen"))["by_operation"] == {"payment_methods": 1}


# ---------------------------------------------------------------------------- credentials


async def test_wrong_stripe_key_fails_credentials_exit_1(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    providers = providers_at(urls(sandbox))
    wrong = "sk_live_wrong_doctor_key_987654"  # the sandbox takes any sk_test_ key only
    providers["stripe_main"]["api_key"] = wrong
    report = await run_doctor(config_file(tmp_path, providers))
    assert report.rc == 1
    assert report.status("stripe_main", "credentials") == "fail"
    assert report.detail("stripe_main", "credentials") == (
        "rejected (GET /v1/balance 401 AuthenticationError)")
    assert report.status("stripe_main", "clock") == "ok"  # a 401 carries a Date too
    others = {k: v for k, v in report.statuses().items() if k != ("stripe_main", "credentials")}
    assert set(others.values()) == {"ok"}, report.stdout
    assert wrong not in report.stdout + report.stderr


@contextlib.asynccontextmanager
async def strict_simulators() -> AsyncIterator[dict[str, str]]:
    """Simulators in this event loop that accept one set of credentials only."""
    host = SimulatorHost([
        StripeSimulator(api_key=STRIPE_KEY),
        BraintreeSimulator(merchant_id="acme", public_key=BT_PUBLIC, private_key=BT_PRIVATE),
        AdyenSimulator(api_key=ADYEN_KEY, merchant_account="AcmeECOM"),
    ], control_port=None)
    await host.start()
    try:
        yield {n: host.base_url(n) for n in ("stripe", "braintree", "adyen")}
    finally:
        await host.stop()


async def test_rejected_braintree_and_adyen_credentials_fail(tmp_path: Path) -> None:
    async with strict_simulators() as at:
        providers = providers_at(at)
        providers["braintree_us"]["private_key"] = "not_the_private_key_0000"
        providers["adyen_eu"]["api_key"] = "not_the_adyen_key_0000"
        report = await run_doctor(config_file(tmp_path / "keys", providers))
        assert report.rc == 1
        assert report.statuses() == {
            ("stripe_main", "credentials"): "ok", ("stripe_main", "clock"): "ok",
            ("stripe_main", "webhook"): "ok",
            ("braintree_us", "credentials"): "fail", ("braintree_us", "clock"): "ok",
            ("braintree_us", "webhook"): "ok",
            ("adyen_eu", "credentials"): "fail", ("adyen_eu", "clock"): "ok",
            ("adyen_eu", "webhook"): "ok",
            ("store", "writable"): "ok", ("store", "durable"): "ok",
            ("gateway", "admin_token"): "ok",
        }, report.stdout
        assert report.detail("braintree_us", "credentials") == (
            "rejected (GET merchant_accounts: AuthenticationError)")
        assert report.detail("adyen_eu", "credentials").startswith(
            "rejected (POST /paymentMethods 401")

        providers = providers_at(at)
        providers["braintree_us"]["merchant_id"] = "globex"  # keys valid, merchant not theirs
        providers["adyen_eu"]["merchant_account"] = "GlobexECOM"
        report = await run_doctor(config_file(tmp_path / "accounts", providers))
        assert report.rc == 1
        assert report.status("braintree_us", "credentials") == "fail"
        assert report.detail("braintree_us", "credentials") == (
            "rejected (GET merchant_accounts: AuthorizationError)")
        assert report.status("adyen_eu", "credentials") == "ok"
        assert report.status("adyen_eu", "merchant_account") == "fail"
        assert "'GlobexECOM' refused (POST /paymentMethods 403 errorCode 901" in report.detail(
            "adyen_eu", "merchant_account")


async def test_refused_providers_fail_with_the_reason(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    for name in ("stripe", "braintree", "adyen"):
        await sim.faults(name, mode="refuse")
    report = await run_doctor(config_file(tmp_path, providers_at(urls(sandbox))))
    assert report.rc == 1
    for name, kind in (("stripe_main", "stripe"), ("braintree_us", "braintree"),
                       ("adyen_eu", "adyen")):
        assert report.status(name, "credentials") == "fail"
        assert report.detail(name, "credentials") == (
            f"unreachable at {sandbox['base_urls'][kind]}"
            f"{'/v71' if kind == 'adyen' else ''}: connection_refused")
        assert report.status(name, "clock") == "warn"
        assert report.status(name, "webhook") == "ok"  # the gateway's side still verifies
    assert ("braintree_us", "account:USD") not in report.lines  # needs the credentials


# ---------------------------------------------------------------------------- accounts


async def test_braintree_merchant_account_per_currency(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    providers = providers_at(urls(sandbox))
    providers["braintree_us"].update(
        currencies=["USD", "EUR", "GBP", "JPY"], default_currency="USD",
        merchant_account_ids={"EUR": "acme_euros",  # no such account at the provider
                              "GBP": "acme_usd",  # exists, but is a USD account
                              "JPY": "acme_jpy"})
    report = await run_doctor(config_file(tmp_path, providers))
    assert report.rc == 1
    assert report.status("braintree_us", "credentials") == "ok"
    assert report.status("braintree_us", "account:USD") == "ok"
    assert report.detail("braintree_us", "account:USD") == (
        "default account 'acme' (USD, active)")
    assert report.status("braintree_us", "account:EUR") == "fail"
    assert report.detail("braintree_us", "account:EUR").startswith(
        "merchant account 'acme_euros' not found at Braintree")
    assert report.status("braintree_us", "account:GBP") == "fail"
    assert report.detail("braintree_us", "account:GBP").startswith(
        "'acme_usd' is a USD account: GBP sales would be charged in USD")
    assert report.status("braintree_us", "account:JPY") == "ok"
    fails = {k for k, v in report.statuses().items() if v == "fail"}
    assert fails == {("braintree_us", "account:EUR"), ("braintree_us", "account:GBP")}


# ---------------------------------------------------------------------------- webhooks


async def test_missing_webhook_secrets_fail(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    providers = providers_at(urls(sandbox))
    del providers["stripe_main"]["webhook_secret"]
    del providers["adyen_eu"]["hmac_key"]
    report = await run_doctor(config_file(tmp_path, providers))
    assert report.rc == 1
    assert report.status("stripe_main", "webhook") == "fail"
    assert report.detail("stripe_main", "webhook").startswith(
        "webhook_secret is not configured")
    assert report.status("adyen_eu", "webhook") == "fail"
    assert report.detail("adyen_eu", "webhook").startswith("hmac_key is not configured")
    assert report.status("braintree_us", "webhook") == "ok"
    fails = {k for k, v in report.statuses().items() if v == "fail"}
    assert fails == {("stripe_main", "webhook"), ("adyen_eu", "webhook")}


async def test_non_hex_adyen_hmac_key_is_not_accepted(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    providers = providers_at(urls(sandbox))
    providers["adyen_eu"]["hmac_key"] = "not-a-hex-key-zz"
    path = config_file(tmp_path, providers)
    try:
        load_config(path)
    except ConfigError:
        rejected_by_config = True  # the strict config check (issue #11 item 5) refuses it
    else:
        rejected_by_config = False
    report = await run_doctor(path)
    if rejected_by_config:
        assert report.rc == 2 and not report.lines
        assert "hmac_key" in report.stderr and "not-a-hex-key-zz" not in report.stderr
    else:
        assert report.rc == 1
        assert report.status("adyen_eu", "webhook") == "fail"
        assert report.detail("adyen_eu", "webhook").startswith("hmac_key is not a hex string")
        fails = {k for k, v in report.statuses().items() if v == "fail"}
        assert fails == {("adyen_eu", "webhook")}


def _adyen_cfg(hmac_key: str) -> ProviderConfig:
    return ProviderConfig(
        name="adyen_eu", type="adyen", base_url="http://127.0.0.1:1/v71",
        currencies=frozenset({"EUR"}), timeout_s=1, connect_timeout_s=1, sandbox=False,
        breaker=BreakerSettings(), credentials={"api_key": "k", "hmac_key": hmac_key},
        options={"merchant_account": "AcmeECOM"})


def test_webhook_check_refuses_a_non_hex_hmac_key_itself() -> None:
    """Whatever the config loader accepts, doctor's own check fails an unusable key."""
    result = doctor.build_notification(_adyen_cfg("not-a-hex-key-zz"))
    assert isinstance(result, doctor.Check) and result.status == "fail"
    assert result.detail.startswith("hmac_key is not a hex string")
    assert not isinstance(doctor.build_notification(_adyen_cfg(ADYEN_HMAC)), doctor.Check)


async def test_url_mode_sends_to_the_running_gateway_and_changes_no_payment(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    path = config_file(tmp_path, providers_at(urls(sandbox)))
    log = tmp_path / "gateway.log"
    async with aiohttp.ClientSession() as session:
        proc, base = await start_gateway(path, log, session)
        try:
            body = json.dumps(payment_body(currency="USD", capture="manual"))
            async with session.post(f"{base}/v1/payments", data=body,
                                    headers=headers(ACME_KEY, idem="doctor-1")) as r:
                assert r.status == 201, await r.text()
                payment = await r.json()

            async def snapshot() -> tuple[Any, ...]:
                async with session.get(f"{base}/v1/payments/{payment['id']}",
                                       headers=headers(ACME_KEY)) as r:
                    doc = await r.json()
                async with session.get(f"{base}/v1/payments/{payment['id']}/events",
                                       headers=headers(ACME_KEY)) as r:
                    events = await r.json()
                return doc["status"], doc["updated_at"], json.dumps(events, sort_keys=True)

            before = await snapshot()
            report = await run_doctor(path, "--url", base)
            assert report.rc == 0, report.stdout + report.stderr
            for name in ("stripe_main", "braintree_us", "adyen_eu"):
                assert report.status(name, "webhook") == "ok"
                assert report.detail(name, "webhook").startswith(
                    f"signed test notification accepted ({base}: 200, ")
            assert await snapshot() == before

            async def counted() -> bool:
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                return all(f'gateway_webhooks_total{{provider="{n}",result="ignored"}} 1.0'
                           in text for n in ("stripe_main", "braintree_us", "adyen_eu"))

            await wait_for(counted, timeout=10)

            # a gateway that verifies with another secret than this config
            other = providers_at(urls(sandbox))
            other["stripe_main"]["webhook_secret"] = "whsec_not_what_the_gateway_has"
            report = await run_doctor(config_file(tmp_path / "other", other), "--url", base)
            assert report.rc == 1
            assert report.status("stripe_main", "webhook") == "fail"
            assert "401 invalid_signature" in report.detail("stripe_main", "webhook")
            assert await snapshot() == before
        finally:
            stop(proc)


# ---------------------------------------------------------------------------- clock


async def test_clock_skew_warns_then_fails(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    await sim.faults("stripe", clock_skew_s=30)
    await sim.faults("braintree", clock_skew_s=-120)
    await sim.faults("adyen", clock_skew_s=2)
    report = await run_doctor(config_file(tmp_path, providers_at(urls(sandbox))))
    assert report.rc == 1
    assert report.status("stripe_main", "clock") == "warn"
    assert 28 < skew_of(report.detail("stripe_main", "clock")) < 32
    assert "ahead of this host" in report.detail("stripe_main", "clock")
    assert 118 < skew_of(report.detail("braintree_us", "clock")) < 122
    assert report.status("braintree_us", "clock") == "fail"
    assert "behind this host" in report.detail("braintree_us", "clock")
    assert report.status("adyen_eu", "clock") == "ok"
    fails = {k for k, v in report.statuses().items() if v != "ok"}
    assert fails == {("stripe_main", "clock"), ("braintree_us", "clock")}


def skew_of(detail: str) -> float:
    match = re.match(r"provider clock (\d+\.\d) s ", detail)
    assert match, detail
    return float(match.group(1))


def test_clock_thresholds() -> None:
    def at(skew: float) -> str:
        from email.utils import formatdate

        now = 1_700_000_000.0
        date = formatdate(now + skew, usegmt=True)
        return doctor.clock_check("p", doctor.Answered(now, now, date)).status

    assert (at(0), at(4), at(6), at(-6), at(59), at(61), at(-61)) == (
        "ok", "ok", "warn", "warn", "warn", "fail", "fail")
    assert doctor.clock_check("p", None).status == "warn"
    assert doctor.clock_check("p", doctor.Answered(0, 0, "garbage")).status == "warn"


# ---------------------------------------------------------------------------- store


@contextlib.contextmanager
def private_redis(directory: Path, *args: str) -> Iterator[str]:
    """A redis-server of this test (stopped by PID), its URL once PING answers."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is required (apt-get install redis-server)"
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(directory), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        break
                except (redis.exceptions.RedisError, OSError):
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "no redis PING"
                time.sleep(0.02)
        finally:
            client.close()
        yield url
    finally:
        stop(proc)


SANDBOX_ONLY = {"local_stripe": {"type": "stripe", "sandbox": True}}


@pytest.mark.parametrize(("args", "status", "rc", "detail"), [
    (("--save", "", "--appendonly", "no"), "fail", 1, "persists nothing"),
    (("--save", "", "--appendonly", "yes"), "ok", 0, "AOF (appendonly yes)"),
    (("--save", "3600 1", "--appendonly", "no"), "warn", 0, "RDB snapshots only"),
], ids=["volatile", "aof", "rdb"])
async def test_redis_durability(tmp_path: Path, args: tuple[str, ...], status: str, rc: int,
                                detail: str) -> None:
    with private_redis(tmp_path / "redis", *args) as url:
        report = await run_doctor(config_file(tmp_path, SANDBOX_ONLY, store=url))
    assert report.rc == rc, report.stdout + report.stderr
    assert report.status("store", "writable") == "ok"
    assert report.status("store", "durable") == status
    assert detail in report.detail("store", "durable")
    assert report.statuses() == {
        ("local_stripe", "sandbox"): "warn", ("local_stripe", "webhook"): "ok",
        ("store", "writable"): "ok", ("store", "durable"): status,
        ("gateway", "admin_token"): "ok"}


async def test_redis_down_fails_the_store(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    report = await run_doctor(config_file(tmp_path, SANDBOX_ONLY, store=url))
    assert report.rc == 1
    assert report.status("store", "writable") == "fail"
    assert report.status("store", "durable") == "fail"


async def test_sqlite_store_checks(tmp_path: Path) -> None:
    db = tmp_path / "data" / "gateway.db"
    report = await run_doctor(config_file(tmp_path / "a", SANDBOX_ONLY, store=f"sqlite:///{db}"))
    assert report.rc == 0
    assert report.status("store", "writable") == "ok"
    assert report.status("store", "durable") == "ok"
    assert report.detail("store", "durable") == (
        f"sqlite {db}: journal_mode=wal, synchronous=FULL")
    # a path that cannot be created (a directory under a file), whoever runs the test
    bad = "sqlite:////dev/null/gateway.db"
    report = await run_doctor(config_file(tmp_path / "b", SANDBOX_ONLY, store=bad))
    assert report.rc == 1
    assert report.status("store", "writable") == "fail"
    assert report.detail("store", "writable").startswith(f"cannot open {bad}: ")
    assert report.status("store", "durable") == "fail"


def test_filesystem_type_finds_the_longest_mount() -> None:
    mounts = ("/dev/vda / ext4 rw 0 0\n"
              "tmpfs /run tmpfs rw 0 0\n"
              "tmpfs /var/lib/gw\\040data tmpfs rw 0 0\n")
    assert doctor.filesystem_type(Path("/var/lib/gw data/x.db"), mounts) == "tmpfs"
    assert doctor.filesystem_type(Path("/var/lib/gw"), mounts) == "ext4"
    assert doctor.filesystem_type(Path("/running"), mounts) == "ext4"
    assert doctor.filesystem_type(Path("/run/gw.db"), mounts) == "tmpfs"


# ---------------------------------------------------------------------------- admin token


async def test_sandbox_default_admin_token_fails_with_real_providers(
        tmp_path: Path, sandbox: dict[str, Any], sim: SimControl) -> None:
    path = config_file(tmp_path, providers_at(urls(sandbox)),
                       admin_token=doctor.SANDBOX_ADMIN_TOKEN)
    report = await run_doctor(path)
    assert report.rc == 1
    assert report.status("gateway", "admin_token") == "fail"
    assert report.detail("gateway", "admin_token").startswith(
        "is the sandbox default of config/gateway.yaml")
    fails = {k for k, v in report.statuses().items() if v == "fail"}
    assert fails == {("gateway", "admin_token")}


@pytest.mark.parametrize(("token", "status", "start"), [
    (doctor.SANDBOX_ADMIN_TOKEN, "warn", "is the sandbox default"),
    (None, "warn", "not configured"),
    ("short-token", "warn", "shorter than 16 characters"),
], ids=["sandbox-default", "missing", "short"])
async def test_admin_token_warnings_on_a_sandbox_only_config(
        tmp_path: Path, token: str | None, status: str, start: str) -> None:
    path = config_file(tmp_path, SANDBOX_ONLY, admin_token=token)
    if token is None:
        raw = yaml.safe_load(path.read_text())
        del raw["admin_token"]
        path.write_text(yaml.safe_dump(raw))
    report = await run_doctor(path)
    assert report.rc == 0, report.stdout + report.stderr
    assert report.status("gateway", "admin_token") == status
    assert report.detail("gateway", "admin_token").startswith(start)
    assert report.status("local_stripe", "sandbox") == "warn"


def test_sandbox_admin_token_is_the_shipped_default() -> None:
    raw = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    assert raw["admin_token"] == f"${{GATEWAY_ADMIN_TOKEN:-{doctor.SANDBOX_ADMIN_TOKEN}}}"


# ---------------------------------------------------------------------------- config


async def test_invalid_config_exits_2_and_checks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("store: [unclosed\n")
    report = await run_doctor(path)
    assert report.rc == 2
    assert not report.lines and "gateway:" in report.stderr
