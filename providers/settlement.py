"""Provider-neutral settlement lines (#14 items 3 and 5, SPEC section 16).

Each provider folder turns its provider's own settlement data into :class:`SettlementLine`
records with ``providers/<name>/settlement.py`` ``parse_<name>(raw: bytes)``, and its
declaration (:class:`providers.declaration.SettlementHooks`) says how the gateway fetches
a day's report through the provider's own API and parses it. The gateway (ledger, import,
``gateway settlements reconcile``) consumes only this module.

Conventions every parser keeps:

* amounts are integers in the ISO 4217 minor unit of ``currency`` (converted from the
  provider's wire units with the same tables the adapters use); an amount that is not a
  whole number of ISO minor units is :class:`MalformedSettlement`, never rounded;
* ``gross`` is signed as the provider reports the movement of its balance: captures and
  dispute reversals positive, refunds and disputes negative, a payout negative (the
  amount leaving the provider balance for the merchant's bank), so that for every payout
  ``P`` the ``net`` of the lines with ``payout_id == P`` (the payout line included) sums to
  0 when the provider's payout matches its lines;
* ``fee`` is what the provider says it kept (>= 0 normally) and ``net`` is the provider's
  own net figure, never recomputed (a report whose ``net`` is not ``gross - fee`` is
  passed on as it is: reconciliation decides);
* ``line_id`` is the provider's own identifier of the line, stable: parsing the same
  report twice yields the same ids, and two lines of one report never share one (a
  report that repeats an id is :class:`MalformedSettlement`);
* anything a parser does not understand (unknown line type, missing column, bad date,
  bad number) raises :class:`MalformedSettlement`; nothing is guessed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

SettlementKind = Literal["capture", "refund", "fee", "dispute", "dispute_reversal", "payout",
                         "adjustment"]
#: Every :data:`SettlementKind`, in declaration order.
SETTLEMENT_KINDS: tuple[str, ...] = get_args(SettlementKind)

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class MalformedSettlement(ValueError):
    """A settlement report that cannot be read exactly (bad bytes, structure, value)."""


class SettlementUnavailable(Exception):
    """A ``fetch_settlement`` the provider did not answer with a report (transport error,
    refused credentials, an HTTP error status): nothing was read."""


def parse_date(text: str) -> dt.date:
    """``YYYY-MM-DD`` -> date; MalformedSettlement otherwise."""
    if not isinstance(text, str) or not _DATE.match(text):
        raise MalformedSettlement(f"not a YYYY-MM-DD date: {text!r}")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise MalformedSettlement(f"not a calendar date: {text!r}") from None


@dataclass(frozen=True)
class SettlementLine:
    provider_type: str
    #: the provider's id of the line (balance transaction id, Adyen psp + journal type +
    #: batch, ...): stable across imports of the same report
    line_id: str
    kind: SettlementKind
    #: the provider's payment id (PaymentIntent id / Braintree transaction id / Adyen
    #: payment pspReference)
    payment_reference: str | None
    #: the gateway payment id, when the provider carries it
    merchant_reference: str | None
    refund_reference: str | None
    #: ISO 4217, upper case
    currency: str
    #: ISO minor units, signed as the provider reports it
    gross: int
    #: ISO minor units, >= 0 normally
    fee: int
    #: the provider's net (not recomputed)
    net: int
    #: the payout / batch / disbursement the line was paid out in
    payout_id: str | None
    #: YYYY-MM-DD
    settled_on: str

    def __post_init__(self) -> None:
        if not isinstance(self.line_id, str) or not self.line_id:
            raise MalformedSettlement("a settlement line needs a non-empty line_id")
        if self.kind not in SETTLEMENT_KINDS:
            raise MalformedSettlement(f"unknown settlement kind {self.kind!r}")
        if not isinstance(self.currency, str) or not _CURRENCY.match(self.currency):
            raise MalformedSettlement(f"currency must be an upper-case ISO 4217 code, got "
                                      f"{self.currency!r}")
        for name in ("gross", "fee", "net"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedSettlement(f"{name} must be an integer of ISO minor units, "
                                          f"got {value!r}")
        parse_date(self.settled_on)


def check_unique(lines: Iterable[SettlementLine]) -> list[SettlementLine]:
    """The lines as a list; MalformedSettlement when two share a ``line_id``."""
    out: list[SettlementLine] = []
    seen: set[str] = set()
    for line in lines:
        if line.line_id in seen:
            raise MalformedSettlement(f"line id {line.line_id!r} appears twice in one report")
        seen.add(line.line_id)
        out.append(line)
    return out


__all__ = ["SETTLEMENT_KINDS", "MalformedSettlement", "SettlementKind", "SettlementLine",
           "SettlementUnavailable", "check_unique", "parse_date"]
