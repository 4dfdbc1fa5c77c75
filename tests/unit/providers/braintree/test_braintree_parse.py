"""Canned, scrubbed Braintree responses (tests/fixtures/braintree/*.xml) parsed by the
unmodified SDK, then by the adapter's parsers, into the expected results."""

from __future__ import annotations

from typing import Any

import braintree
import pytest
from braintree.util.xml_util import XmlUtil

from gateway.state_machine import PaymentStatus, RefundStatus
from providers.base import Ambiguous, Failure, Outcome, ProviderResult, RefundResult
from providers.braintree.parse import (
    parse_payment_result,
    parse_refund_result,
    parse_transaction,
)
from tests.paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "braintree"


@pytest.fixture(scope="module")
def gw() -> braintree.BraintreeGateway:
    env = braintree.Environment("fixture", "127.0.0.1", "9", "http://127.0.0.1", False, None)
    return braintree.BraintreeGateway(braintree.Configuration(
        environment=env, merchant_id="m", public_key="p", private_key="k"))


def sdk_result(gw: braintree.BraintreeGateway, name: str) -> Any:
    """What TransactionGateway returns for this response body."""
    response = XmlUtil.dict_from_xml((FIXTURES / name).read_bytes())
    if "transaction" in response:
        return braintree.SuccessfulResult(
            {"transaction": braintree.Transaction(gw, response["transaction"])})
    return braintree.ErrorResult(gw, response["api_error_response"])


def test_sale_authorized(gw: braintree.BraintreeGateway) -> None:
    got = parse_payment_result(sdk_result(gw, "sale_authorized.xml"), authorize=True,
                               currency="EUR")
    assert got == ProviderResult(Outcome.SUCCEEDED, PaymentStatus.AUTHORIZED, "7k2m9qpd",
                                 "authorized", amount_authorized=1050, amount_captured=0)


def test_sale_processor_declined(gw: braintree.BraintreeGateway) -> None:
    got = parse_payment_result(sdk_result(gw, "sale_processor_declined.xml"), authorize=True,
                               currency="EUR")
    assert got == ProviderResult(
        Outcome.DECLINED, PaymentStatus.DECLINED, "7k2m9qpd", "processor_declined",
        failure=Failure("card_declined", "Insufficient Funds", "insufficient_funds", "2001"))


def test_sale_gateway_rejected_three_d_secure(gw: braintree.BraintreeGateway) -> None:
    got = parse_payment_result(sdk_result(gw, "sale_gateway_rejected.xml"), authorize=True)
    assert got.outcome is Outcome.DECLINED
    assert got.status is PaymentStatus.DECLINED
    assert got.failure == Failure("gateway_rejected", "Gateway Rejected: three_d_secure",
                                  "three_d_secure", "three_d_secure")


def test_sale_validation_error_is_invalid_request(gw: braintree.BraintreeGateway) -> None:
    got = parse_payment_result(sdk_result(gw, "sale_nonce_unknown.xml"), authorize=True)
    assert got == ProviderResult(
        Outcome.DECLINED, PaymentStatus.DECLINED,
        failure=Failure("invalid_request", "Unknown or expired payment_method_nonce.", None,
                        "91565"))


def test_api_request_key_mismatch_is_a_fault_not_a_decline(
    gw: braintree.BraintreeGateway
) -> None:
    with pytest.raises(Ambiguous) as info:
        parse_payment_result(sdk_result(gw, "sale_idempotency_mismatch.xml"), authorize=True)
    assert info.value.error_code == "idempotency_key_mismatch"


def test_capture_submitted(gw: braintree.BraintreeGateway) -> None:
    got = parse_payment_result(sdk_result(gw, "capture_submitted.xml"), authorize=False)
    assert got == ProviderResult(Outcome.SUCCEEDED, PaymentStatus.CAPTURED, "7k2m9qpd",
                                 "submitted_for_settlement", amount_captured=600)


@pytest.mark.parametrize(("name", "code", "provider_code"), [
    ("capture_too_large.xml", "amount_too_large", "91522"),
    ("void_cannot_be_voided.xml", "invalid_state", "91504"),
])
def test_follow_up_validation_errors_are_refusals(
    gw: braintree.BraintreeGateway, name: str, code: str, provider_code: str
) -> None:
    got = parse_payment_result(sdk_result(gw, name), authorize=False)
    assert got.outcome is Outcome.DECLINED
    assert got.status is PaymentStatus.AUTHORIZED  # unchanged
    assert got.failure is not None
    assert (got.failure.code, got.failure.provider_code) == (code, provider_code)


def test_void_voided(gw: braintree.BraintreeGateway) -> None:
    got = parse_payment_result(sdk_result(gw, "void_voided.xml"), authorize=False)
    assert (got.outcome, got.status, got.raw_status) == (
        Outcome.SUCCEEDED, PaymentStatus.VOIDED, "voided")


def test_refund_credit(gw: braintree.BraintreeGateway) -> None:
    got = parse_refund_result(sdk_result(gw, "refund_credit.xml"))
    assert got == RefundResult(Outcome.SUCCEEDED, RefundStatus.SUCCEEDED, "c8r4tz1x",
                               "submitted_for_settlement")


@pytest.mark.parametrize(("name", "code"), [
    ("refund_unless_settled.xml", "invalid_state"),
    ("refund_too_large.xml", "amount_too_large"),
])
def test_refund_validation_errors(gw: braintree.BraintreeGateway, name: str, code: str) -> None:
    got = parse_refund_result(sdk_result(gw, name))
    assert (got.outcome, got.status) == (Outcome.DECLINED, RefundStatus.FAILED)
    assert got.failure is not None and got.failure.code == code


def test_find_settlement_declined_is_failed(gw: braintree.BraintreeGateway) -> None:
    txn = sdk_result(gw, "find_settlement_declined.xml").transaction
    got = parse_transaction(txn)
    assert (got.outcome, got.status, got.raw_status) == (
        Outcome.SUCCEEDED, PaymentStatus.FAILED, "settlement_declined")


def test_find_jpy_amount_with_decimals(gw: braintree.BraintreeGateway) -> None:
    got = parse_transaction(sdk_result(gw, "find_authorized_jpy.xml").transaction)
    assert got.amount_authorized == 500


# ------------------------------------------------------------------ exception table


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    """Raise ``outer`` inside an ``except inner`` block, as the SDK does."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit __context__ is the point
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(("exc", "kind", "code"), [
    (braintree.exceptions.AuthenticationError(), "safe", "provider_auth_error"),
    (braintree.exceptions.AuthorizationError("no"), "safe", "provider_auth_error"),
    (braintree.exceptions.TooManyRequestsError(), "safe", "rate_limited"),
    (braintree.exceptions.NotFoundError(), "safe", "not_found"),
    (braintree.exceptions.UpgradeRequiredError(), "safe", "provider_config_error"),
    (braintree.exceptions.ConfigurationError("x"), "safe", "provider_config_error"),
    (braintree.exceptions.ServerError(), "ambiguous", "http_500"),
    (braintree.exceptions.ServiceUnavailableError(), "ambiguous", "http_503"),
    (braintree.exceptions.GatewayTimeoutError(), "ambiguous", "http_504"),
    (braintree.exceptions.RequestTimeoutError("search timeout"), "ambiguous",
     "request_timeout"),
    (braintree.exceptions.UnexpectedError("Unexpected HTTP_RESPONSE 502"), "ambiguous",
     "http_502"),
    (braintree.exceptions.UnexpectedError("Unexpected HTTP_RESPONSE 400"), "ambiguous",
     "http_400"),
    (AttributeError("amount"), "ambiguous", "unclassified_error"),
    (ValueError("bad xml"), "ambiguous", "unclassified_error"),
])
def test_exception_table(exc: BaseException, kind: str, code: str) -> None:
    from providers.base import RejectedSafe
    from providers.braintree.errors import translate

    fault = translate(exc)
    assert isinstance(fault, RejectedSafe if kind == "safe" else Ambiguous)
    assert fault.error_code == code


def test_wrapped_transport_errors_keep_their_cause() -> None:
    import http.client

    import requests
    import urllib3
    from braintree.exceptions.http.connection_error import ConnectionError as BtConnError
    from braintree.exceptions.http.timeout_error import ConnectTimeoutError, ReadTimeoutError

    from providers.base import RejectedSafe
    from providers.braintree.errors import translate

    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(None, "refused")))  # type: ignore[arg-type]
    refused.args[0].reason.__cause__ = ConnectionRefusedError(111, "Connection refused")
    fault = translate(_raised_from(BtConnError(refused), refused))
    assert isinstance(fault, RejectedSafe) and fault.error_code == "connection_refused"

    lost = requests.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("closed")))
    fault = translate(_raised_from(BtConnError(lost), lost))
    assert isinstance(fault, Ambiguous) and fault.error_code == "connection_lost"

    assert isinstance(translate(ReadTimeoutError(requests.ReadTimeout())), Ambiguous)
    assert isinstance(translate(ConnectTimeoutError(requests.ConnectTimeout())), RejectedSafe)
    unknown = translate(BtConnError(OSError("something odd")))
    assert isinstance(unknown, Ambiguous)
