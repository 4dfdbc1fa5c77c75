"""Structured JSON logs with central redaction.

Every record goes through :class:`JsonFormatter`, which redacts registered secrets
(provider keys, webhook secrets, admin token, merchant API keys seen in requests) and
any 13-19 digit Luhn-valid number, whatever the call site put in the message or in
``extra`` fields. Call sites never have to remember to redact.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

REDACTED = "[REDACTED]"
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None
#: 13-19 digits, possibly written with separators between them (spaces, tabs, dots,
#: dashes, slashes; up to two in a row, e.g. "4242  4242", "4242.4242/4242-4242").
_DIGIT_RUN = re.compile(r"(?<!\d)(?:\d[ \t./-]{0,2}){12,18}\d(?!\d)")
_SEPARATORS = re.compile(r"[ \t./-]")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
payment_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "payment_id", default=None
)

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_SEPARATOR_RUN = re.compile(r"[ \t./-]+")
#: digit groups joined by one or two separators (a card may start at any group)
_GROUP_RUN = re.compile(r"\d+(?:[ \t./-]{1,2}\d+)*")
#: How card numbers are written when they are split: groups of four (the last may be
#: shorter: 4-4-4-4, 4-4-4-4-3, 4-4-4-1), Amex 4-6-5, Diners 4-6-4.
_CARD_GROUPINGS = ((4, 6, 5), (4, 6, 4))


def _card_like(sizes: tuple[int, ...]) -> bool:
    return len(sizes) == 1 or sizes in _CARD_GROUPINGS or (
        all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4)


def contains_card_number(text: str) -> bool:
    """A 13-19 digit Luhn-valid number, contiguous or split into card-like groups by
    spaces, tabs, dots, dashes or slashes (``4242.4242.4242.4242``), also inside a longer
    run of digit groups (``ref 7 4242 4242 4242 4242``). Digit groups that are not
    card-like (``order-1006503816-106``) are not a card: a merchant's order id must not be
    refused because its digits happen to pass the Luhn check."""
    for m in _GROUP_RUN.finditer(text):
        run = m.group(0)
        if len(run) < 13 or len(_SEPARATOR_RUN.sub("", run)) < 13:
            continue  # fewer than 13 digits in the whole run: no card in it
        groups = _SEPARATOR_RUN.split(run)
        for i in range(len(groups)):
            for j in range(i + 1, len(groups) + 1):
                digits = "".join(groups[i:j])
                if len(digits) > 19:
                    break
                if (len(digits) >= 13 and luhn_valid(digits)
                        and _card_like(tuple(len(g) for g in groups[i:j]))):
                    return True
    return False


def register_secret(value: str) -> None:
    """Redact ``value`` from all future log output (ignored if too short to be a secret)."""
    global _secret_re
    if len(value) < 6 or value in _secrets:
        return
    _secrets.add(value)
    _secret_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    if _secret_re is not None:
        text = _secret_re.sub(REDACTED, text)

    def _card(m: re.Match[str]) -> str:
        digits = _SEPARATORS.sub("", m.group(0))
        return REDACTED if 13 <= len(digits) <= 19 and luhn_valid(digits) else m.group(0)

    return _DIGIT_RUN.sub(_card, text)


def _redacted(value: Any) -> Any:
    """``value`` with every string (and any number that reads as a card) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return REDACTED if redact(str(value)) != str(value) else value
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        pid = payment_id_var.get()
        if pid:
            out["payment_id"] = pid
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # Redact the values, not the rendered line: the line's own timestamp
        # ("1796238425.123") is 13 digits around a dot and passes the Luhn check one time
        # in ten, which turned it into an unquoted [REDACTED] and the line into bad JSON.
        ts = out.pop("ts")
        return json.dumps({"ts": ts, **_redacted(out)}, separators=(",", ":"))


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """The handler setup_logging installs (and replaces when called again)."""


def setup_logging(level: str = "INFO", stream: Any = None) -> None:
    handler = _ConsoleHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _ConsoleHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("stripe").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
