"""Central redaction in JSON logs: secrets and card-like numbers never reach the output."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway import logs


def _capture(message: str, **extra: object) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info(message, extra=extra)
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_registered_secret_is_redacted_in_message_and_extra() -> None:
    logs.register_secret("sk_live_supersecret_987")
    line = _capture("calling with sk_live_supersecret_987", header="Bearer sk_live_supersecret_987")
    assert "supersecret" not in json.dumps(line)
    assert line["msg"] == "calling with [REDACTED]"


def test_luhn_valid_numbers_are_redacted_others_kept() -> None:
    line = _capture("card 4242 4242 4242 4242 and order 1234567890123456 and 4111111111111111")
    assert "4242 4242" not in line["msg"]
    assert "4111111111111111" not in line["msg"]
    assert "1234567890123456" in line["msg"]  # not Luhn-valid: an order number


def test_luhn() -> None:
    assert logs.luhn_valid("4242424242424242")
    assert not logs.luhn_valid("4242424242424241")
    assert logs.contains_card_number("x 5555-5555-5555-4444 y")
    assert not logs.contains_card_number("123456789012")  # 12 digits


def test_context_ids_on_every_line() -> None:
    logs.request_id_var.set("req_abc")
    logs.payment_id_var.set("pay_xyz")
    try:
        line = _capture("hello")
    finally:
        logs.request_id_var.set(None)
        logs.payment_id_var.set(None)
    assert line["request_id"] == "req_abc" and line["payment_id"] == "pay_xyz"


def test_a_timestamp_that_reads_like_a_card_number_stays_a_number() -> None:
    """1796238425.123 is 13 digits around a dot, Luhn-valid one time in ten: redacting the
    rendered line made it ``"ts":[REDACTED]``, which is not JSON."""
    ts = next(t / 1000 for t in range(1796238425000, 1796238425100)
              if logs.luhn_valid(str(t)))
    record = logging.LogRecord("test.redaction", logging.INFO, __file__, 1, "hello", None, None)
    record.created = ts
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["ts"] == round(ts, 3) and line["msg"] == "hello"


def test_card_numbers_in_nested_and_numeric_extras_are_redacted() -> None:
    line = _capture("x", card=4242424242424242, nested={"pan": ["4111 1111 1111 1111"]},
                    amount=1250)
    assert line["card"] == "[REDACTED]" and line["nested"] == {"pan": ["[REDACTED]"]}
    assert line["amount"] == 1250


@pytest.mark.parametrize(("text", "card"), [
    ("4242.4242.4242.4242", True), ("3782 822463 10005", True),  # Amex 4-6-5
    ("ref 1234 4242 4242 4242 4242", True),  # the card starts at a later group
    ("x 5555-5555-5555-4444 y", True), ("4242424242424242", True),
    ("chaos-1006503816-106", False),  # Luhn-valid digits, not grouped like a card
    ("1234567890123456", False),  # not Luhn-valid
])
def test_card_detection_follows_how_cards_are_written(text: str, card: bool) -> None:
    assert logs.contains_card_number(text) is card
