"""``gateway doctor`` for Adyen: ``POST /paymentMethods`` for the merchant account, and a
``REPORT_AVAILABLE`` notification signed with Adyen's HMAC scheme (moves no payment)."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import Adyen
from Adyen.exceptions import (
    AdyenAPIAuthenticationError,
    AdyenAPIInvalidPermission,
    AdyenAPIResponseError,
    AdyenError,
)

from providers.adyen.hmac_signature import hmac_key, signature
from providers.doctor_checks import (
    Answered,
    Check,
    SignedNotification,
    clock_check,
    endpoint,
    fail,
    header_value,
    ok,
    unreachable,
    warn,
)
from providers.settings import ProviderSettings

ADYEN_PROBE = "POST /paymentMethods"

def adyen_checks_sync(cfg: ProviderSettings) -> list[Check]:
    """Runs in a worker thread: the Adyen SDK is synchronous."""
    name, base_url = cfg.name, endpoint(cfg)
    api_key = cfg.credentials.get("api_key")
    merchant = cfg.options.get("merchant_account")
    if not api_key or not base_url:
        missing = "api_key" if not api_key else "base_url"
        return [fail(name, "credentials", f"{missing} is not configured"),
                clock_check(name, None)]
    sdk = Adyen.Adyen(xapikey=api_key, platform="test",
                      http_timeout=(cfg.connect_timeout_s, cfg.timeout_s), http_force="requests")
    sdk.checkout.payments_api.baseUrl = base_url
    seen: dict[str, Any] = {}
    api = sdk.client
    api._init_http_client()
    inner = api.http_client.request

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        seen["headers"] = out[3]  # (raw response, raw request, status, headers)
        return out

    api.http_client.request = recording
    account = str(merchant) if merchant else "SandboxECOM"  # the adapter's default
    sent = time.time()
    out: list[Check] = []
    answered: Answered | None = None
    try:
        result = sdk.checkout.payments_api.payment_methods({"merchantAccount": account})
    except AdyenAPIResponseError as exc:
        answered = Answered(sent, time.time(), header_value(seen.get("headers") or exc.headers,
                                                       "Date"))
        code = str(exc.error_code or "")
        what = f"{ADYEN_PROBE} {exc.status_code}" + (f" errorCode {code}" if code else "")
        if isinstance(exc, AdyenAPIInvalidPermission) and code == "901":
            out.append(ok(name, "credentials", f"accepted (the API key is valid; {what})"))
            out.append(fail(name, "merchant_account", f"{account!r} refused ({what} Invalid "
                            "Merchant Account): not an account of this API key"))
        elif isinstance(exc, AdyenAPIAuthenticationError | AdyenAPIInvalidPermission):
            out.append(fail(name, "credentials", f"rejected ({what})"))
        else:
            out.append(fail(name, "credentials", f"not confirmed ({what})"))
    except AdyenError as exc:
        out.append(fail(name, "credentials", f"not sent: {type(exc).__name__}"))
    except Exception as exc:  # requests / urllib3 errors propagate unwrapped
        out.append(fail(name, "credentials", unreachable(exc, base_url)))
    else:
        answered = Answered(sent, time.time(), header_value(seen.get("headers"), "Date"))
        out.append(ok(name, "credentials", f"accepted ({ADYEN_PROBE} {result.status_code})"))
        methods = (result.message or {}).get("paymentMethods") if isinstance(
            result.message, dict) else None
        types = {m.get("type") for m in methods or [] if isinstance(m, dict)}
        if not merchant and not cfg.sandbox:
            out.append(fail(name, "merchant_account", "not configured: the gateway would send "
                            f"{account!r}"))
        elif "scheme" not in types:
            out.append(warn(name, "merchant_account", f"{account!r} accepted but offers no "
                            "card payments (no 'scheme' in /paymentMethods)"))
        else:
            out.append(ok(name, "merchant_account", f"{account!r} accepted, cards offered"))
    out.append(clock_check(name, answered))
    return out


def adyen_notification(hex_key: str, merchant_account: str) -> SignedNotification:
    """A ``REPORT_AVAILABLE`` standard notification (moves no payment), its item signed
    with Adyen's HMAC scheme. Raises ValueError when ``hex_key`` is not hex."""
    key = hmac_key(hex_key)
    item: dict[str, Any] = {
        "eventCode": "REPORT_AVAILABLE", "success": "true",
        "pspReference": f"DOCTOR{secrets.token_hex(5).upper()}",
        "merchantAccountCode": merchant_account, "merchantReference": "gateway-doctor",
        "amount": {"value": 0, "currency": "EUR"},
        "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": "https://gateway.invalid/gateway-doctor-report.csv",
    }
    item["additionalData"] = {"hmacSignature": signature(item, key).decode()}
    body = json.dumps({"live": "false",
                       "notificationItems": [{"NotificationRequestItem": item}]}).encode()
    return SignedNotification(body, {"Content-Type": "application/json"})
