# ruff: noqa: RUF009 - public()/internal() return dataclasses.field(), as field() does
"""The payment as types: :class:`Payment` with its :class:`Attempt`, :class:`Refund`,
:class:`Dispute` and in-flight :class:`PaymentOperation`, and the merchant-visible
projection defined on them.

A payment is stored as one JSON document (:func:`gateway.model.new_payment` builds it;
the write path changes it as a dict). These classes read such a document:

* :meth:`Payment.from_doc` validates it and fails loudly (:class:`MalformedDocument`) on
  a wrong type, an unknown status or a missing required key -- a float amount is an
  error, never rounded.
* :meth:`Payment.to_doc` gives the document back exactly (``to_doc(from_doc(d)) == d``).
  Documents written by earlier versions load: a key they lack takes its field's default
  and is remembered as absent (``absent``), so ``to_doc`` leaves it out again while the
  value is still that default. **Unknown keys are preserved**, never rejected: they are
  kept in ``unknown`` and written back by ``to_doc`` (a key a newer replica added
  survives an older one's read-modify-write during a rolling deploy) and never leave
  the gateway.
* :meth:`Payment.public` is the payment object of the API, the merchant notifications
  and the CLI. Only fields declared with :func:`public` (with their JSON-schema
  fragment) appear in it; :mod:`gateway.public_schema` and ``/openapi.json`` are
  generated from the same declarations (:func:`schema_fields`), so the shape is defined
  once. A public field the stored document lacks stays out of the projection (as the
  old field lists did), unless declared ``always``.

Nested objects (``failure``, ``routing``, ``next_action``, ``metadata``...) stay plain
dicts, checked to be objects and shared with the document, not copied. ``from_doc``,
``to_doc`` and ``public`` are generated per class from the field declarations when the
module loads (as :mod:`dataclasses` generates ``__init__``): one straight-line function
each, so reading a payment through the types costs about what the old dict projection
did (``bench/public_view.py``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from providers.base import Operation
from providers.base import Outcome as ProviderOutcome
from providers.statuses import DisputeStatus, PaymentStatus, RefundStatus


class MalformedDocument(ValueError):
    """A stored document these types cannot read: where, and what was wrong."""


class AttemptOutcome(StrEnum):
    """How one authorization attempt ended (in_flight: not yet)."""

    IN_FLIGHT = "in_flight"
    SUCCEEDED = ProviderOutcome.SUCCEEDED.value
    DECLINED = ProviderOutcome.DECLINED.value
    REJECTED_SAFE = ProviderOutcome.REJECTED_SAFE.value
    AMBIGUOUS = ProviderOutcome.AMBIGUOUS.value


class CaptureMode(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


# ------------------------------------------------------------------ field kinds


class _Kind:
    """How one field is checked/converted from the document (``load``: code lines acting
    on the local ``v``), written back (``dump``) and shown (``show``)."""

    expects = ""

    def load(self, where: str) -> list[str]:
        raise NotImplementedError

    def dump(self, expr: str) -> str:
        return expr

    def show(self, expr: str) -> str:
        return self.dump(expr)

    # straight from the document to the projection (``public_of``), no object built
    def load_public(self, where: str) -> list[str]:
        return self.load(where)

    def show_public(self, expr: str) -> str:
        return self.show(expr)


class _Check(_Kind):
    def __init__(self, test: str, expects: str, nullable: bool = False) -> None:
        self.test, self.expects, self.nullable = test, expects, nullable

    def load(self, where: str) -> list[str]:
        test = f"v is not None and ({self.test})" if self.nullable else self.test
        return [f"if {test}: _bad({where!r}, {self.expects!r}, v)"]


# type() first: a plain str passes without the isinstance call (a StrEnum member, as an
# in-memory document may hold, takes the isinstance path)
STR = _Check("type(v) is not str and not isinstance(v, str)", "a string")
NSTR = _Check("type(v) is not str and not isinstance(v, str)", "a string or null",
              nullable=True)
INT = _Check("type(v) is not int", "an integer")  # bool and float are errors
NINT = _Check("type(v) is not int", "an integer or null", nullable=True)
NUM = _Check("type(v) is not float and type(v) is not int", "a number")
NNUM = _Check("type(v) is not float and type(v) is not int", "a number or null",
              nullable=True)
BOOL = _Check("type(v) is not bool", "true or false")
DICT = _Check("type(v) is not dict", "an object")
NDICT = _Check("type(v) is not dict", "an object or null", nullable=True)
LIST = _Check("type(v) is not list", "an array")


class _Timestamp(_Check):
    """Unix seconds in the document, ISO 8601 (milliseconds, Z) in the projection."""

    def show(self, expr: str) -> str:
        return (f"(None if {expr} is None else _iso({expr}))" if self.nullable
                else f"_iso({expr})")


TIMESTAMP = _Timestamp(NUM.test, "a number (unix seconds)")
NTIMESTAMP = _Timestamp(NUM.test, "a number (unix seconds) or null", nullable=True)


class _Enum(_Kind):
    def __init__(self, enum: type[StrEnum]) -> None:
        self.enum = enum
        self.name = f"_E_{enum.__name__}"
        self.expects = "one of " + ", ".join(e.value for e in enum)

    def load(self, where: str) -> list[str]:
        return ["try:", f"    v = {self.name}[v]", "except (KeyError, TypeError):",
                f"    _bad({where!r}, {self.expects!r}, v)"]

    def dump(self, expr: str) -> str:
        return f"{expr}._value_"  # the plain str (.value is a slower descriptor)

    def load_public(self, where: str) -> list[str]:
        return ["try:", f"    v = {self.name}[v]._value_", "except (KeyError, TypeError):",
                f"    _bad({where!r}, {self.expects!r}, v)"]

    def show_public(self, expr: str) -> str:
        return expr


class _One(_Kind):
    """A nested typed object, or null."""

    def __init__(self, cls_name: str) -> None:
        self.cls_name = cls_name
        self.expects = f"a {cls_name} object or null"

    def load(self, where: str) -> list[str]:
        return [f"if v is not None: v = _nested({self.cls_name}, {where!r}, v)"]

    def dump(self, expr: str) -> str:
        return f"(None if {expr} is None else {expr}.to_doc())"

    def show(self, expr: str) -> str:
        return f"(None if {expr} is None else {expr}.public())"


class _Many(_Kind):
    """An array of nested typed objects."""

    def __init__(self, cls_name: str) -> None:
        self.cls_name = cls_name
        self.expects = f"an array of {cls_name} objects"

    def load(self, where: str) -> list[str]:
        return [f"v = _many({self.cls_name}, {where!r}, v)"]

    def dump(self, expr: str) -> str:
        return f"[x.to_doc() for x in {expr}]"

    def show(self, expr: str) -> str:
        return f"[x.public() for x in {expr}]"

    def load_public(self, where: str) -> list[str]:
        return [f"v = _many_public({self.cls_name}, {where!r}, v)"]

    def show_public(self, expr: str) -> str:
        return expr


# ------------------------------------------------------------------ declarations

_REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True, slots=True)
class _Spec:
    key: str | None  # None: the attribute name
    kind: _Kind
    schema: dict[str, Any] | None  # its JSON-schema fragment when public
    always: bool  # public: shown even while the document lacks it


def public(kind: _Kind, schema: dict[str, Any] | None = None, default: Any = _REQUIRED, *,
           factory: Callable[[], Any] | None = None, always: bool = False) -> Any:
    """A merchant-visible field and its JSON-schema fragment (for an array of nested
    objects, generated from their own public fields when not given)."""
    meta = {"spec": _Spec(None, kind, schema if schema is not None else {}, always)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def internal(key: str, kind: _Kind, default: Any = _REQUIRED, *,
             factory: Callable[[], Any] | None = None) -> Any:
    """A field that never leaves the gateway, stored under ``key`` (``_``-prefixed by
    convention for the gateway's own bookkeeping)."""
    meta = {"spec": _Spec(key, kind, None, False)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``).

    The same string as ``datetime.fromtimestamp(ts, UTC).isoformat(timespec=
    "milliseconds")`` (which rounds to microseconds half-even, then truncates to
    milliseconds: the same steps here, pinned by a property test), in half the time:
    every payment object shows two of these."""
    frac, whole = _modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole += 1.0
        us -= 1_000_000
    elif us < 0:
        whole -= 1.0
        us += 1_000_000
    t = _gmtime(whole)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 - the fastest here
        t[0], t[1], t[2], t[3], t[4], t[5], us // 1000)


_modf = math.modf
_gmtime = time.gmtime


#: "not in the document" (a document value is never this object)
_MISSING_KEY = object()


def _bad(where: str, expects: str, got: Any) -> None:
    raise MalformedDocument(f"{where}: expected {expects}, got {got!r:.80}")


_D = TypeVar("_D", bound="_Stored")


def _nested(cls: type[_D], where: str, v: Any) -> _D:
    try:
        return cls.from_doc(v)
    except MalformedDocument as exc:
        raise MalformedDocument(f"{where}.{exc}") from None


def _many(cls: type[_D], where: str, v: Any) -> list[_D]:
    if type(v) is not list:
        _bad(where, f"an array of {cls.__name__} objects", v)
    try:
        return [cls.from_doc(x) for x in v]
    except MalformedDocument:
        for i, x in enumerate(v):  # again, to say which one
            _nested(cls, f"{where}[{i}]", x)
        raise  # pragma: no cover - the loop raised


def _many_public(cls: type[_Stored], where: str, v: Any) -> list[dict[str, Any]]:
    if type(v) is not list:
        _bad(where, f"an array of {cls.__name__} objects", v)
    try:
        return [cls.public_of(x) for x in v]
    except MalformedDocument:
        for i, x in enumerate(v):  # again, to say which one
            try:
                cls.public_of(x)
            except MalformedDocument as exc:
                raise MalformedDocument(f"{where}[{i}].{exc}") from None
        raise  # pragma: no cover - the loop raised


@dataclass(slots=True, kw_only=True)
class _Stored:
    """What every stored object has besides its declared fields."""

    #: keys of the document it was read from that this version does not know, as they were
    unknown: dict[str, Any] = field(default_factory=dict, repr=False)
    #: declared keys the document lacked (an earlier version's): their defaults stand in,
    #: and ``to_doc`` leaves them out again while they hold that default
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Self:
        raise NotImplementedError  # generated by _generate

    def to_doc(self) -> dict[str, Any]:
        raise NotImplementedError  # generated by _generate

    def public(self) -> dict[str, Any]:
        """The merchant-visible projection (the fields declared with :func:`public`)."""
        raise NotImplementedError  # generated by _generate

    @staticmethod
    def public_of(doc: Mapping[str, Any]) -> dict[str, Any]:
        """``from_doc(doc).public()`` straight from the stored document: the public
        fields checked as ``from_doc`` checks them, the internal ones not read (the
        request path's projection: no object is built for fields it would not show)."""
        raise NotImplementedError  # generated by _generate


def _specs(cls: type) -> list[tuple[str, str, _Spec, dataclasses.Field[Any]]]:
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("spec")
        if spec is not None:
            out.append((f.name, spec.key or f.name, spec, f))
    return out


def _generate(cls: type[_D]) -> type[_D]:
    """Write ``from_doc``, ``to_doc`` and ``public`` of ``cls`` as straight-line code."""
    specs = _specs(cls)
    ns: dict[str, Any] = {"_bad": _bad, "_nested": _nested, "_many": _many,
                          "_many_public": _many_public, "_iso": iso, "_M": _MISSING_KEY,
                          "_new": object.__new__, "_C": cls, "_EMPTY": frozenset(),
                          "_Malformed": MalformedDocument,
                          "_KNOWN": frozenset(key for _, key, _, _ in specs)}
    ns.update({c.__name__: c for c in _NESTED})
    load = ["def from_doc(doc):",
            "    if type(doc) is not dict:",
            f"        _bad({cls.__name__!r}, 'an object', doc)",
            "    get = doc.get", "    ab = []", "    o = _new(_C)"]
    dump = ["def to_doc(self):", "    ab = self.absent", "    d = {}"]
    show = ["def public(self):", "    ab = self.absent", "    d = {}"]
    direct = ["def public_of(doc):",
              "    if type(doc) is not dict:",
              f"        _bad({cls.__name__!r}, 'an object', doc)",
              "    get = doc.get", "    d = {}"]
    for i, (name, key, spec, f) in enumerate(specs):
        kind = spec.kind
        if isinstance(kind, _Enum):
            ns[kind.name] = {e.value: e for e in kind.enum}
        where = f"{cls.__name__}.{key}"
        load.append(f"    v = get({key!r}, _M)")
        missing: list[str] = []  # public_of, the key missing: [] omits it
        if f.default is _REQUIRED and f.default_factory is _REQUIRED:
            load += ["    if v is _M:",
                     f"        raise _Malformed({where!r} + ': missing')"]
            missing = [f"        raise _Malformed({where!r} + ': missing')"]
            default_test = None
        else:
            if f.default_factory is not _REQUIRED:
                ns[f"_F{i}"] = f.default_factory
                fill, ns[f"_D{i}"] = f"_F{i}()", f.default_factory()  # type: ignore[operator]
            else:
                ns[f"_D{i}"] = f.default
                fill = f"_D{i}"
            load += ["    if v is _M:", f"        v = {fill}", f"        ab.append({key!r})"]
            if spec.always:
                missing = [f"        v = {fill}",
                           f"        d[{key!r}] = {kind.show_public('v')}"]
            default_test = (f"self.{name} is not None" if f.default is None
                            else f"self.{name} != _D{i}")
        load += ["    else:"] + ["        " + line for line in kind.load(where)]
        load.append(f"    o.{name} = v")
        out = f"    d[{key!r}] = {kind.dump('self.' + name)}"
        dump += [out] if default_test is None else [
            f"    if {default_test} or {key!r} not in ab:", "    " + out]
        if spec.schema is not None:
            out = f"    d[{key!r}] = {kind.show('self.' + name)}"
            show += [out] if default_test is None or spec.always else [
                f"    if {default_test} or {key!r} not in ab:", "    " + out]
            direct += [f"    v = get({key!r}, _M)", "    if v is _M:",
                       *(missing or ["        pass"]),
                       "    else:", *["        " + line for line in kind.load_public(where)],
                       f"        d[{key!r}] = {kind.show_public('v')}"]
    load += ["    if ab:", "        o.absent = frozenset(ab)", "    else:",
             "        o.absent = _EMPTY",
             f"    if len(doc) + len(ab) != {len(specs)}:",
             "        o.unknown = {k: x for k, x in doc.items() if k not in _KNOWN}",
             "    else:", "        o.unknown = {}", "    return o"]
    dump += ["    if self.unknown:", "        d.update(self.unknown)", "    return d"]
    show += ["    return d"]
    direct += ["    return d"]
    exec("\n".join(load + dump + show + direct), ns)  # our own declarations only
    cls.from_doc = staticmethod(ns["from_doc"])  # type: ignore[method-assign]
    cls.to_doc = ns["to_doc"]  # type: ignore[method-assign]
    cls._public_stored = ns["public"]  # type: ignore[attr-defined]
    cls._public_of_stored = staticmethod(ns["public_of"])  # type: ignore[attr-defined]
    if "public" not in cls.__dict__:
        cls.public = ns["public"]  # type: ignore[method-assign]
        cls.public_of = staticmethod(ns["public_of"])  # type: ignore[method-assign]
    return cls


def schema_fields(cls: type[_Stored]) -> dict[str, dict[str, Any]]:
    """The public fields of ``cls`` with their JSON-schema fragments, in projection
    order, derived fields (computed, not stored) at their declared places."""
    out: dict[str, dict[str, Any]] = {}
    derived: dict[str, tuple[str, dict[str, Any]]] = getattr(cls, "DERIVED_PUBLIC", {})
    for _, key, spec, _f in _specs(cls):
        if spec.schema is None:
            continue
        schema = spec.schema
        if isinstance(spec.kind, _Many) and not schema:
            schema = {"type": "array", "items": {
                "type": "object", "properties": schema_fields(_NESTED_BY_NAME[spec.kind.cls_name])}}
        out[key] = schema
        for name, (after, fragment) in derived.items():
            if after == key:
                out[name] = fragment
    return out


# ------------------------------------------------------------------ schema fragments

_S: dict[str, Any] = {"type": "string"}
_I: dict[str, Any] = {"type": "integer"}
_NS: dict[str, Any] = {"type": "string", "nullable": True}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_FAILURE: dict[str, Any] = {"type": "object", "nullable": True, "properties": {
    "code": _S, "message": _S, "decline_code": _S, "provider_code": _S}}


def _enum(values: Any) -> dict[str, Any]:
    return {"type": "string", "enum": [str(getattr(v, "value", v)) for v in values]}


# ------------------------------------------------------------------ the types


@dataclass(slots=True, kw_only=True)
class Attempt(_Stored):
    """One authorization attempt at one provider."""

    provider: str = public(STR, _S)
    outcome: AttemptOutcome = public(_Enum(AttemptOutcome), _enum(AttemptOutcome))
    #: only once the attempt failed with one
    error_code: str | None = public(NSTR, _S, None)
    started_at: str = public(STR, _TIME)  # stored as ISO 8601 already
    duration_ms: int = public(INT, _I, 0)
    key: str | None = internal("_key", NSTR, None)  # the provider idempotency key
    sent_at: float | None = internal("_sent_at", NNUM, None)
    #: the attempting request's lease (reconciliation leaves the payment alone until then)
    live_until: float | None = internal("_live_until", NNUM, None)


@dataclass(slots=True, kw_only=True)
class Refund(_Stored):
    id: str = public(STR, _S)
    amount: int = public(INT, _I)
    status: RefundStatus = public(_Enum(RefundStatus), _enum(RefundStatus))
    provider_reference: str | None = public(NSTR, _NS, None)
    reason: str | None = public(NSTR, _NS, None)
    created_at: str = public(STR, _TIME)  # stored as ISO 8601 already
    failure: dict[str, Any] | None = public(NDICT, _FAILURE, None)
    key: str | None = internal("_key", NSTR, None)
    #: its provider call may still be running (until live_until)
    in_flight: bool = internal("_in_flight", BOOL, False)
    live_until: float | None = internal("_live_until", NNUM, None)


@dataclass(slots=True, kw_only=True)
class Dispute(_Stored):
    """SPEC section 16. ``reason`` is the provider's own reason code; ``evidence_due_by``
    the deadline to answer, when the provider says one."""

    id: str = public(STR, _S)
    amount: int | None = public(NINT, {"type": "integer", "nullable": True}, None)
    currency: str = public(STR, _S)
    reason: str | None = public(NSTR, _NS, None)
    status: DisputeStatus = public(_Enum(DisputeStatus), _enum(DisputeStatus))
    evidence_due_by: float | None = public(NTIMESTAMP, {**_TIME, "nullable": True}, None,
                                           always=True)
    provider_reference: str = public(STR, _S)
    created_at: float | None = internal("created_at", NNUM, None)
    updated_at: float | None = internal("updated_at", NNUM, None)
    #: when the provider says the last applied change happened (ordering)
    event_at: float | None = internal("_event_at", NNUM, None)


@dataclass(slots=True, kw_only=True)
class PaymentOperation(_Stored):
    """The follow-up in flight (``_operation``): a capture/void/confirm recorded before its
    provider call (write-ahead), with its provider key and lease."""

    op: Operation = internal("op", _Enum(Operation))
    key: str | None = internal("key", NSTR, None)
    amount: int | None = internal("amount", NINT, None)
    started_at: float | None = internal("started_at", NNUM, None)
    lease_until: float | None = internal("lease_until", NNUM, None)
    #: confirm: what the customer's return carried
    returned: dict[str, Any] | None = internal("returned", NDICT, None)
    #: confirm: waiting for the customer (3-D Secure window), nothing sent yet
    await_customer: bool = internal("await_customer", BOOL, False)


@dataclass(slots=True, kw_only=True)
class Payment(_Stored):
    """A payment (SPEC section 3). Money in the currency's minor unit, as integers."""

    #: computed public fields: name -> (the public field it follows, schema fragment)
    DERIVED_PUBLIC: ClassVar[dict[str, tuple[str, dict[str, Any]]]] = {
        # a capture requested but not confirmed yet (status capture_pending, SPEC 3.3)
        "amount_capture_pending": ("amount_captured", _I),
    }

    id: str = public(STR, _S)
    object: str = public(STR, _enum(["payment"]), "payment")
    status: PaymentStatus = public(_Enum(PaymentStatus), _enum(PaymentStatus))
    amount: int = public(INT, _I)
    currency: str = public(STR, _S)
    capture: CaptureMode = public(_Enum(CaptureMode), _enum(CaptureMode))
    amount_authorized: int = public(INT, _I, 0)
    amount_captured: int = public(INT, _I, 0)
    amount_refunded: int = public(INT, _I, 0)
    provider: str | None = public(NSTR, _NS, None)
    provider_reference: str | None = public(NSTR, _NS, None)
    reference: str | None = public(NSTR, _NS, None)
    routing: dict[str, Any] | None = public(NDICT, {
        "type": "object", "nullable": True,
        "properties": {"rule": _S, "config_version": _S}}, None)
    attempts: list[Attempt] = public(_Many("Attempt"), always=True, factory=list)
    refunds: list[Refund] = public(_Many("Refund"), always=True, factory=list)
    disputes: list[Dispute] = public(_Many("Dispute"), always=True, factory=list)
    failure: dict[str, Any] | None = public(NDICT, _FAILURE, None)
    # requires_action (3-D Secure): where the customer's browser goes and comes back
    # (providers/next_action.py; never the provider's own action object)
    next_action: dict[str, Any] | None = public(NDICT, {
        "type": "object", "nullable": True, "required": ["type"], "properties": {
            "type": {"type": "string", "description": "redirect_to_url (the one a browser "
                     "follows); an action no URL can express keeps only its type"},
            "redirect_to_url": {"type": "object", "required": ["url", "return_url"],
                                "properties": {"url": _S, "return_url": _NS,
                                               "method": {"type": "string", "enum": ["POST"]},
                                               "data": {"type": "object",
                                                        "additionalProperties": _S}}}}},
        None)
    metadata: dict[str, Any] = public(DICT, {"type": "object",
                                             "additionalProperties": {"type": "string"}},
                                      factory=dict)
    payment_method: dict[str, Any] = public(DICT, {
        "type": "object", "properties": {"type": _S, "brand": _S}}, factory=dict)
    created_at: float = public(TIMESTAMP, _TIME, always=True)
    updated_at: float = public(TIMESTAMP, _TIME, always=True)

    merchant_id: str = internal("merchant_id", STR)
    customer: dict[str, Any] = internal("customer", DICT, factory=dict)
    #: the store's compare-and-swap version (set by the store)
    version: int | None = internal("version", NINT, None)
    #: the write path's reconcile flag (:func:`gateway.model.needs_reconcile` at the
    #: write); the store's reconcile index reads it
    reconcile_flag: bool | None = internal("needs_reconcile", _Check(
        "type(v) is not bool", "true, false or null", nullable=True), None)
    fingerprint: str | None = internal("_fingerprint", NSTR, None)
    token: str | None = internal("_token", NSTR, None)
    provider_tokens: dict[str, Any] = internal("_provider_tokens", DICT, factory=dict)
    #: refunds reserved and not settled yet (state machine ledger)
    refund_pending: int = internal("_refund_pending", INT, 0)
    capture_pending: int | None = internal("_capture_pending", NINT, None)
    operation: PaymentOperation | None = internal("_operation", _One("PaymentOperation"),
                                                  None)
    ops_done: list[Any] = internal("_ops_done", LIST, factory=list)
    #: notifications written with the payment, not yet moved to the store's outbox
    outbox: list[Any] = internal("_outbox", LIST, factory=list)
    notified_sequence: int | None = internal("_notified_sequence", NINT, None)
    #: when reconciliation (or confirm) flagged it for an operator (ISO 8601)
    flagged: str | None = internal("_flagged", NSTR, None)
    cascaded: dict[str, Any] | None = internal("_cascaded", NDICT, None)
    candidates: list[Any] = internal("_candidates", LIST, factory=list)
    excluded: list[Any] = internal("_excluded", LIST, factory=list)
    cascade_on: list[Any] = internal("_cascade_on", LIST, factory=list)
    action_window_s: float | None = internal("_action_window_s", NNUM, None)
    return_url: str | None = internal("_return_url", NSTR, None)
    return_token: str | None = internal("_return_token", NSTR, None)
    gateway_return: str | None = internal("_gateway_return", NSTR, None)
    action: dict[str, Any] | None = internal("_action", NDICT, None)
    action_return: dict[str, Any] | None = internal("_action_return", NDICT, None)

    @property
    def amount_capture_pending(self) -> int:
        """What was asked to be captured, shown until the provider confirms it."""
        return _capture_pending_shown(self.status, self.capture_pending)

    def public(self) -> dict[str, Any]:
        """The payment object (SPEC section 3), as the API answers it."""
        out: dict[str, Any] = self._public_stored()  # type: ignore[attr-defined]
        if "disputes" in self.absent:  # a document older than disputes: shown last, as before
            out["disputes"] = out.pop("disputes")
        out["amount_capture_pending"] = self.amount_capture_pending
        return out

    @staticmethod
    def public_of(doc: Mapping[str, Any]) -> dict[str, Any]:
        """``Payment.from_doc(doc).public()``, straight from the document (see
        :meth:`_Stored.public_of`): what the API, notifications and CLI answer."""
        out: dict[str, Any] = Payment._public_of_stored(doc)  # type: ignore[attr-defined]
        if "disputes" not in doc:
            out["disputes"] = out.pop("disputes")
        pending = doc.get("_capture_pending")
        if pending is not None and type(pending) is not int:
            _bad("Payment._capture_pending", "an integer or null", pending)
        out["amount_capture_pending"] = _capture_pending_shown(out["status"], pending)
        return out


def _capture_pending_shown(status: str, pending: int | None) -> int:
    return (pending or 0) if status == PaymentStatus.CAPTURE_PENDING else 0


_NESTED: tuple[type[_Stored], ...] = (Attempt, Refund, Dispute, PaymentOperation, Payment)
_NESTED_BY_NAME = {c.__name__: c for c in _NESTED}
for _cls in _NESTED:
    _generate(_cls)


__all__ = [
    "Attempt",
    "AttemptOutcome",
    "CaptureMode",
    "Dispute",
    "MalformedDocument",
    "Payment",
    "PaymentOperation",
    "Refund",
    "internal",
    "iso",
    "public",
    "schema_fields",
]
