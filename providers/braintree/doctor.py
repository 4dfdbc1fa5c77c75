"""``gateway doctor`` for Braintree: the merchant accounts (one per currency, each in its
currency and active) and the SDK's own sample ``check`` notification."""

from __future__ import annotations

import time
from itertools import islice
from typing import Any
from urllib.parse import urlencode

import braintree
import braintree.util.http
from braintree.exceptions import AuthenticationError, AuthorizationError, NotFoundError
from braintree.exceptions.braintree_error import BraintreeError
from braintree.exceptions.http.connection_error import ConnectionError as BtConnectionError
from braintree.exceptions.http.timeout_error import TimeoutError as BtTimeoutError
from braintree.webhook_notification import WebhookNotification

from providers.braintree.adapter import make_environment
from providers.doctor_checks import (
    Answered,
    Check,
    SignedNotification,
    clock_check,
    endpoint,
    fail,
    ok,
    unreachable,
)
from providers.settings import ProviderSettings

BRAINTREE_PROBE = "GET merchant_accounts"
#: Braintree merchant accounts read from the list at most.
MAX_LISTED_ACCOUNTS = 1000

def _date_recording_http() -> type:
    """A ``braintree`` HTTP strategy that keeps the last response's Date header (the SDK
    returns only status and body)."""
    class DateRecordingHttp(braintree.util.http.Http):
        last_date: str | None = None

        def _get_session(self) -> Any:
            session = super()._get_session()  # one requests.Session per thread
            if not getattr(session, "doctor_records_date", False):
                send = session.send

                def recording_send(request: Any, **kwargs: Any) -> Any:
                    response = send(request, **kwargs)
                    self.last_date = response.headers.get("Date")
                    return response

                session.send = recording_send
                session.doctor_records_date = True
            return session

    return DateRecordingHttp


def braintree_checks_sync(cfg: ProviderSettings) -> list[Check]:
    """Runs in a worker thread: the braintree SDK is synchronous."""
    name, base_url = cfg.name, endpoint(cfg)
    creds = cfg.credentials
    missing = [k for k in ("merchant_id", "public_key", "private_key") if not creds.get(k)]
    if missing or not base_url:
        what = ", ".join(missing) if missing else "base_url"
        return [fail(name, "credentials", f"{what} not configured"), clock_check(name, None)]
    try:
        environment = make_environment(base_url)
    except ValueError:
        return [fail(name, "credentials", f"base_url {base_url} is not http(s)://host[:port]"),
                clock_check(name, None)]
    config = braintree.Configuration(
        environment=environment, merchant_id=creds["merchant_id"],
        public_key=creds["public_key"], private_key=creds["private_key"],
        timeout=(cfg.connect_timeout_s, cfg.timeout_s), wrap_http_exceptions=True,
        http_strategy=_date_recording_http())
    gateway = braintree.BraintreeGateway(config)
    strategy = config.http_strategy()
    sent = time.time()
    try:
        listed = list(islice(gateway.merchant_account.all().merchant_accounts,
                             MAX_LISTED_ACCOUNTS))
    except (BtConnectionError, BtTimeoutError) as exc:
        return [fail(name, "credentials", unreachable(exc, base_url)), clock_check(name, None)]
    except BraintreeError as exc:
        answered = Answered(sent, time.time(), getattr(strategy, "last_date", None))
        what = f"{BRAINTREE_PROBE}: {type(exc).__name__}"
        verdict = "rejected" if isinstance(exc, AuthenticationError | AuthorizationError) \
            else "not confirmed"
        return [fail(name, "credentials", f"{verdict} ({what})"), clock_check(name, answered)]
    answered = Answered(sent, time.time(), getattr(strategy, "last_date", None))
    out = [ok(name, "credentials", f"accepted ({BRAINTREE_PROBE}: {len(listed)} listed)")]
    accounts = {str(k).upper(): str(v)
                for k, v in (cfg.options.get("merchant_account_ids") or {}).items()}
    raw_default = cfg.options.get("default_currency")
    default_currency = str(raw_default).upper() if raw_default else None
    default = next((a for a in listed if getattr(a, "default", False) is True), None)
    for currency in sorted(cfg.currencies):
        check = f"account:{currency}"
        account_id = accounts.get(currency)
        if account_id is not None:
            try:
                found = gateway.merchant_account.find(account_id)
            except NotFoundError:
                out.append(fail(name, check, f"merchant account {account_id!r} not found at "
                                "Braintree: sales in this currency would be refused"))
                continue
            except (BtConnectionError, BtTimeoutError) as exc:
                out.append(fail(name, check, unreachable(exc, base_url)))
                continue
            except BraintreeError as exc:
                out.append(fail(name, check, f"lookup of {account_id!r} failed: "
                                f"{type(exc).__name__}"))
                continue
            out.append(_account_verdict(name, check, currency, found, account_id))
        elif currency == default_currency:
            if default is None:
                out.append(fail(name, check, "default_currency, but Braintree lists no default "
                                "merchant account"))
            else:
                out.append(_account_verdict(name, check, currency, default,
                                            f"default account {getattr(default, 'id', '?')!r}"))
        else:
            out.append(fail(name, check, "no merchant_account_ids entry and not the "
                            "default_currency: Braintree would charge it in the default "
                            "account's currency"))
    out.append(clock_check(name, answered))
    return out


def _account_verdict(name: str, check: str, currency: str, account: Any, label: str) -> Check:
    got = str(getattr(account, "currency_iso_code", "") or "").upper()
    status = str(getattr(account, "status", "") or "")
    account_id = getattr(account, "id", None)
    shown = label if label.startswith("default") else repr(account_id or label)
    if got != currency:
        return fail(name, check, f"{shown} is a {got or 'currency-less'} account: {currency} "
                    f"sales would be charged in {got or 'another currency'}")
    if status and status != "active":
        return fail(name, check, f"{shown} is {status}, not active")
    return ok(name, check, f"{shown} ({got}, {status or 'status unknown'})")


def braintree_notification(public_key: str, private_key: str) -> SignedNotification:
    """The SDK's own sample ``check`` notification (``bt_signature``/``bt_payload``)."""
    config = braintree.Configuration(braintree.Environment.Sandbox, "gateway-doctor",
                                     public_key, private_key)
    sample = braintree.BraintreeGateway(config).webhook_testing.sample_notification(
        WebhookNotification.Kind.Check, "gateway-doctor")
    payload = sample["bt_payload"]
    payload = payload.decode("ascii") if isinstance(payload, bytes) else str(payload)
    body = urlencode({"bt_signature": sample["bt_signature"], "bt_payload": payload}).encode()
    return SignedNotification(body, {"Content-Type": "application/x-www-form-urlencoded"})
