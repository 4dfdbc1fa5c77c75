"""Adyen status tables, the exception table, and parsing of canned (scrubbed) payloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import Adyen
import pytest
import requests
from Adyen.exceptions import AdyenAPIResponseError, AdyenInvalidRequestError

from gateway.state_machine import TRANSITIONS, PaymentStatus, RefundStatus
from providers import status_table
from providers.adyen import status as st
from providers.adyen.errors import Refusal, translate
from providers.adyen.parse import (
    decline_code_for,
    parse_payment,
    parse_payment_modification,
    parse_refund,
)
from providers.adyen.simulator import DEFAULT_HMAC_KEY
from providers.base import Ambiguous, Failure, Outcome, ProviderResult, RefundResult, RejectedSafe
from tests.paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "adyen"
P, R = PaymentStatus, RefundStatus

#: Every resultCode Adyen documents for /payments (reference 3.3).
DOCUMENTED_RESULT_CODES = {
    "Authorised", "Refused", "Error", "Cancelled", "Pending", "Received", "RedirectShopper",
    "IdentifyShopper", "ChallengeShopper", "PresentToShopper", "PartiallyAuthorised",
    "AuthenticationFinished", "AuthenticationNotRequired",
}
DOCUMENTED_EVENT_CODES = {
    "AUTHORISATION", "CAPTURE", "CAPTURE_FAILED", "CANCELLATION", "REFUND", "REFUND_FAILED",
    "REFUNDED_REVERSED", "CANCEL_OR_REFUND", "TECHNICAL_CANCEL", "AUTHORISATION_ADJUSTMENT",
    "CHARGEBACK", "OFFER_CLOSED", "ORDER_OPENED", "ORDER_CLOSED", "EXPIRE", "PENDING",
}


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture
def unmapped() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    previous = status_table.on_unmapped
    status_table.on_unmapped = lambda ptype, kind, raw: seen.append((kind, raw))
    yield seen
    status_table.on_unmapped = previous


# ------------------------------------------------------------------ resultCode


def test_every_documented_result_code_has_a_row() -> None:
    assert set(st.RESULT_CODES) == DOCUMENTED_RESULT_CODES


@pytest.mark.parametrize("code", sorted(DOCUMENTED_RESULT_CODES))
@pytest.mark.parametrize("manual", [True, False])
def test_result_code_maps_to_a_status_reachable_from_pending(
    code: str, manual: bool, unmapped: list[tuple[str, str]]
) -> None:
    status, mapped = st.map_result_code(code, capture_manual=manual)
    assert mapped
    assert status in TRANSITIONS[P.PENDING]
    assert unmapped == []


@pytest.mark.parametrize(("code", "manual", "expected"), [
    ("Authorised", True, P.AUTHORIZED), ("Authorised", False, P.CAPTURED),
    ("PartiallyAuthorised", True, P.AUTHORIZED), ("PartiallyAuthorised", False, P.CAPTURED),
    ("Refused", True, P.DECLINED), ("Cancelled", True, P.DECLINED), ("Error", True, P.FAILED),
    ("Received", True, P.PROCESSING), ("Pending", False, P.PROCESSING),
    ("RedirectShopper", True, P.REQUIRES_ACTION), ("ChallengeShopper", True, P.REQUIRES_ACTION),
    ("IdentifyShopper", True, P.REQUIRES_ACTION), ("PresentToShopper", True, P.REQUIRES_ACTION),
    ("AuthenticationFinished", True, P.UNKNOWN), ("AuthenticationNotRequired", True, P.UNKNOWN),
])
def test_result_code_rows(code: str, manual: bool, expected: PaymentStatus) -> None:
    assert st.map_result_code(code, capture_manual=manual) == (expected, True)


@pytest.mark.parametrize("raw", ["Settled", "authorised", "", None])
def test_unmapped_result_code_is_unknown_and_reported(
    raw: str | None, unmapped: list[tuple[str, str]]
) -> None:
    assert st.map_result_code(raw, capture_manual=False) == (P.UNKNOWN, False)
    assert unmapped == [("result_code", str(raw))]


def test_modification_status_rows(unmapped: list[tuple[str, str]]) -> None:
    assert st.map_payment_modification(st.Modification.CAPTURE, "received") == (
        P.CAPTURE_PENDING, True)
    assert st.map_payment_modification(st.Modification.CANCEL, "received") == (
        P.VOID_PENDING, True)
    assert st.map_refund_modification("received") == (R.PENDING, True)
    assert unmapped == []
    assert st.map_payment_modification(st.Modification.CAPTURE, "done") == (P.UNKNOWN, False)
    assert st.map_refund_modification("accepted") == (R.UNKNOWN, False)
    assert [k for k, _ in unmapped] == ["modification_status", "modification_status"]


# ------------------------------------------------------------------ eventCode


def item(code: str, success: Any = "true", **extra: Any) -> dict[str, Any]:
    return {"eventCode": code, "success": success, **extra}


def test_every_event_row_is_legal() -> None:
    for (code, _success), effect in st.EVENT_CODES.items():
        assert code not in st.IGNORED_EVENT_CODES
        if effect.target is st.Target.PAYMENT:
            assert effect.payment_status is not None
            # some status may move into it (forward edge or modification-refused edge)
            assert any(effect.payment_status in targets for targets in TRANSITIONS.values())
        elif effect.target is st.Target.REFUND:
            assert effect.refund_status in (R.SUCCEEDED, R.FAILED)


@pytest.mark.parametrize("code", sorted(DOCUMENTED_EVENT_CODES))
@pytest.mark.parametrize("success", ["true", "false"])
def test_documented_event_codes_are_mapped(
    code: str, success: str, unmapped: list[tuple[str, str]]
) -> None:
    extra = {"additionalData": {"modification.action": "refund"}}
    effect = st.webhook_effect(item(code, success, **extra))
    assert effect.target is not st.Target.UNKNOWN
    assert unmapped == []


@pytest.mark.parametrize(("code", "success", "target", "status"), [
    ("AUTHORISATION", "true", st.Target.PAYMENT, P.AUTHORIZED),
    ("AUTHORISATION", "false", st.Target.PAYMENT, P.DECLINED),
    ("CAPTURE", "true", st.Target.PAYMENT, P.CAPTURED),
    ("CAPTURE", "false", st.Target.PAYMENT, P.AUTHORIZED),
    ("CAPTURE_FAILED", "true", st.Target.PAYMENT, P.AUTHORIZED),
    ("CANCELLATION", "true", st.Target.PAYMENT, P.VOIDED),
    ("CANCELLATION", "false", st.Target.PAYMENT, P.AUTHORIZED),
    ("TECHNICAL_CANCEL", "true", st.Target.PAYMENT, P.VOIDED),
    ("REFUND", "true", st.Target.REFUND, R.SUCCEEDED),
    ("REFUND", "false", st.Target.REFUND, R.FAILED),
    ("REFUND_FAILED", "true", st.Target.REFUND, R.FAILED),
    ("REFUNDED_REVERSED", "true", st.Target.REFUND, R.FAILED),
    ("OFFER_CLOSED", "true", st.Target.PAYMENT, P.EXPIRED),
    ("CHARGEBACK", "true", st.Target.DISPUTE, None),  # its rows: test_adyen_disputes.py
])
def test_event_rows(code: str, success: str, target: st.Target,
                    status: PaymentStatus | RefundStatus | None) -> None:
    effect = st.webhook_effect(item(code, success))
    assert effect.target is target
    assert (effect.payment_status or effect.refund_status) == status


def test_cancel_or_refund_depends_on_modification_action(
    unmapped: list[tuple[str, str]]
) -> None:
    cancel = st.webhook_effect(item("CANCEL_OR_REFUND", additionalData={
        "modification.action": "cancel"}))
    assert (cancel.target, cancel.payment_status) == (st.Target.PAYMENT, P.VOIDED)
    refund = st.webhook_effect(item("CANCEL_OR_REFUND", additionalData={
        "modification.action": "refund"}))
    assert (refund.target, refund.refund_status) == (st.Target.REFUND, R.SUCCEEDED)
    assert st.webhook_effect(item("CANCEL_OR_REFUND")).target is st.Target.UNKNOWN
    assert unmapped == [("event_code", "CANCEL_OR_REFUND:true")]


@pytest.mark.parametrize("raw", [item("NEW_FANCY_EVENT"), item("CAPTURE", "True "),
                                 item("CAPTURE", True), {"success": "true"}])
def test_unmapped_or_malformed_event_is_unknown(
    raw: dict[str, Any], unmapped: list[tuple[str, str]]
) -> None:
    assert st.webhook_effect(raw).target is st.Target.UNKNOWN
    assert len(unmapped) == 1


# ------------------------------------------------------------------ exception table


def sdk_error(cls: type[AdyenAPIResponseError], status: int, code: str = "000",
              message: str = "boom") -> AdyenAPIResponseError:
    body = {"status": status, "errorCode": code, "message": message, "errorType": "x"}
    return cls(body, status_code=status, error_code=code)


@pytest.mark.parametrize(("exc", "kind", "code"), [
    (sdk_error(Adyen.AdyenAPIAuthenticationError, 401), RejectedSafe, "provider_auth_error"),
    (sdk_error(Adyen.AdyenAPIInvalidPermission, 403, "901"), RejectedSafe,
     "provider_auth_error"),
    (sdk_error(AdyenAPIResponseError, 429), RejectedSafe, "rate_limited"),
    (sdk_error(Adyen.AdyenAPICommunicationError, 404), RejectedSafe, "provider_config_error"),
    (sdk_error(Adyen.AdyenAPICommunicationError, 500), Ambiguous, "http_500"),
    (sdk_error(AdyenAPIResponseError, 503), Ambiguous, "http_503"),
    (sdk_error(AdyenAPIResponseError, 409), Ambiguous, "http_409"),
    (sdk_error(Adyen.AdyenAPIUnprocessableEntity, 422, "704"), Ambiguous,
     "idempotency_conflict"),
    (AdyenInvalidRequestError("no credentials"), Ambiguous, "unclassified_error"),
    (requests.exceptions.ReadTimeout("read timed out"), Ambiguous, "read_timeout"),
    (RuntimeError("weird"), Ambiguous, "unclassified_error"),
])
def test_exception_table(exc: BaseException, kind: type, code: str) -> None:
    out = translate(exc)
    assert isinstance(out, kind)
    assert isinstance(out, RejectedSafe | Ambiguous) and out.error_code == code
    assert out.error_code != "not_found"  # never "proven not created"


@pytest.mark.parametrize(("cls", "status"), [(Adyen.AdyenAPIValidationError, 400),
                                              (Adyen.AdyenAPIUnprocessableEntity, 422)])
def test_validation_errors_are_refusals(cls: type[AdyenAPIResponseError], status: int) -> None:
    body = fixture("error_422_capture")
    exc = cls(body, status_code=status, error_code=body["errorCode"])
    auth = translate(exc)
    assert auth == Refusal(Failure("invalid_request", body["message"], None, "167"), status)
    mod = translate(exc, modification=True)
    assert isinstance(mod, Refusal) and mod.failure.code == "invalid_state"


# ------------------------------------------------------------------ canned payloads


def test_parse_authorised_manual_and_auto() -> None:
    body = fixture("payment_authorised")
    assert parse_payment(body, amount=1250, capture_manual=True) == ProviderResult(
        Outcome.SUCCEEDED, P.AUTHORIZED, "FAKE0000PSP00001", "Authorised", 1250, None)
    assert parse_payment(body, amount=1250, capture_manual=False) == ProviderResult(
        Outcome.SUCCEEDED, P.CAPTURED, "FAKE0000PSP00001", "Authorised", 1250, 1250)


def test_parse_partially_authorised_uses_answer_amount() -> None:
    body = {**fixture("payment_authorised"), "resultCode": "PartiallyAuthorised",
            "amount": {"currency": "EUR", "value": 700}}
    result = parse_payment(body, amount=1250, capture_manual=True)
    assert (result.status, result.amount_authorized) == (P.AUTHORIZED, 700)


def test_parse_refused() -> None:
    result = parse_payment(fixture("payment_refused"), amount=1250, capture_manual=True)
    assert result == ProviderResult(
        Outcome.DECLINED, P.DECLINED, "FAKE0000PSP00002", "Refused",
        failure=Failure("card_declined", "Not enough balance", "insufficient_funds", "12"))


def test_parse_error_result_is_failed_not_fault() -> None:
    result = parse_payment(fixture("payment_error"), amount=1250, capture_manual=True)
    assert (result.outcome, result.status) == (Outcome.DECLINED, P.FAILED)
    assert result.failure == Failure("processing_error", "Acquirer Error", None, "4")


def test_parse_redirect_shopper_carries_action() -> None:
    body = fixture("payment_redirect_shopper")
    result = parse_payment(body, amount=1250, capture_manual=True,
                           return_url="https://shop.example/back")
    assert (result.outcome, result.status) == (Outcome.SUCCEEDED, P.REQUIRES_ACTION)
    # the gateway's one shape; Adyen's own fields (paymentMethodType ...) stay out
    assert result.next_action == {"type": "redirect_to_url", "redirect_to_url": {
        "url": body["action"]["url"], "return_url": "https://shop.example/back"}}
    assert result.amount_authorized is None


def test_parse_received_is_processing() -> None:
    result = parse_payment(fixture("payment_received"), amount=1250, capture_manual=False)
    assert (result.outcome, result.status, result.amount_captured) == (
        Outcome.SUCCEEDED, P.PROCESSING, None)


def test_parse_modifications() -> None:
    cap = parse_payment_modification(st.Modification.CAPTURE, fixture("capture_received"),
                                     payment_psp="X")
    assert cap == ProviderResult(Outcome.SUCCEEDED, P.CAPTURE_PENDING, "FAKE0000PSP00001",
                                 "received")
    cancel = parse_payment_modification(st.Modification.CANCEL, fixture("cancel_received"),
                                        payment_psp="X")
    assert cancel.status is P.VOID_PENDING
    assert parse_refund(fixture("refund_received")) == RefundResult(
        Outcome.SUCCEEDED, R.PENDING, "FAKE0000MOD00003", "received")


def test_canned_notification_verifies_and_maps() -> None:
    body = fixture("notification_capture")
    assert Adyen.util.is_valid_hmac_notification(body, DEFAULT_HMAC_KEY) is True
    first = body["notificationItems"][0]["NotificationRequestItem"]
    assert st.webhook_effect(first).payment_status is P.CAPTURED
    first["amount"]["value"] = 999
    assert Adyen.util.is_valid_hmac_notification(body, DEFAULT_HMAC_KEY) is False


def test_decline_codes() -> None:
    assert decline_code_for("12") == "insufficient_funds"
    assert decline_code_for(2) == "generic_decline"
    assert decline_code_for("999") == "generic_decline"
