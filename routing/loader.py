"""Load and validate routing.yaml (SPEC section 7).

Every problem found is reported (not just the first), each with file, line and rule
name, as :class:`RoutingIssue` entries of one :class:`RoutingConfigError`. Line
numbers come from the YAML node tree (``yaml.compose``), so they point at the
offending key or list item, and at the rule's first line for rule-level problems.

Accepted schema::

    version: 1
    rules:
      - name: eur-to-adyen            # [A-Za-z0-9][A-Za-z0-9_.:-]*, unique
        description: free text        # optional
        when:                         # optional; missing or {} = catch-all
          currency: [EUR]             # ISO 4217 codes (a single string is accepted too)
          amount: {min: 0, max: 500000}   # inclusive, non-negative ints
          country: [DE, FR]           # ISO 3166 alpha-2
          brand: [visa]               # case-insensitive
          merchant: [acme]
          metadata: {channel: web}    # string -> string, all must be equal
        providers: [adyen, stripe]    # priority list ...
        split: {stripe: 70, bt: 30}   # ... or weighted split (positive ints, sum 100)
        fallback: [adyen]             #     with an optional fallback list (split only)
        cascade_on: [issuer_not_available]  # optional (SPEC 7.1): canonical decline codes
                                      # a decline with one of these moves to the next
                                      # candidate as a new attempt; any other stays final

The last rule must be a catch-all, and no rule may follow a catch-all.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from providers.decline_codes import canonical_decline_codes
from routing.rules import Conditions, RoutingTable, Rule

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_TOP_KEYS = ("version", "rules")
_RULE_KEYS = ("name", "description", "when", "providers", "split", "fallback", "cascade_on")
_WHEN_KEYS = ("currency", "amount", "country", "brand", "merchant", "metadata")
_AMOUNT_KEYS = ("min", "max")


class _Invalid:
    def __repr__(self) -> str:
        return "an unreadable value"


_INVALID = _Invalid()


@dataclass(frozen=True)
class RoutingIssue:
    file: str
    line: int | None  # 1-based
    rule: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        who = f"rule {self.rule!r}: " if self.rule else ""
        return f"{where}: {who}{self.message}"


class RoutingConfigError(ValueError):
    """routing.yaml is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[RoutingIssue]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def version_of(raw: bytes) -> str:
    """The config version stamped on payments: 12 hex digits of sha256(raw bytes)."""
    return hashlib.sha256(raw).hexdigest()[:12]


def load_routing(path: str | os.PathLike[str], providers: Collection[str]) -> RoutingTable:
    """Read and validate a routing file. ``providers`` is the configured provider names
    (a ``Mapping[str, ProviderConfig]`` such as ``GatewayConfig.providers`` works)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RoutingConfigError(
            [RoutingIssue(source, None, None, f"cannot read: {exc.strerror}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RoutingConfigError(
            [RoutingIssue(source, None, None, "not valid UTF-8")]
        ) from None
    return _parse(text, raw, source, providers)


def parse_routing(text: str, source: str, providers: Collection[str]) -> RoutingTable:
    """Validate routing YAML given as text; ``source`` names it in errors. The version
    is computed over ``text`` encoded as UTF-8 (the same bytes as the file)."""
    return _parse(text, text.encode("utf-8"), source, providers)


def _parse(text: str, raw: bytes, source: str, providers: Collection[str]) -> RoutingTable:
    v = _Validator(source, set(providers))
    rules = v.document(text)
    if v.issues:
        # file order (stable: problems on one line keep their discovery order)
        raise RoutingConfigError(sorted(v.issues, key=lambda i: i.line or 0))
    return RoutingTable(version=version_of(raw), rules=tuple(rules), source=source)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a scalar"


class _Validator:
    def __init__(self, source: str, providers: set[str]) -> None:
        self.source = source
        self.providers = providers
        self.issues: list[RoutingIssue] = []
        self._scalars = SafeConstructor()

    # -- helpers -------------------------------------------------------------------

    def err(self, line: int | None, rule: str | None, message: str) -> None:
        self.issues.append(RoutingIssue(self.source, line, rule, message))

    def scalar(self, node: Node) -> Any:
        """The Python value of a scalar node (int, bool, str, None, ...)."""
        if not isinstance(node, ScalarNode):
            return node  # callers type-check the result; a Node is never a valid value
        try:
            return self._scalars.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError):
            return _INVALID  # e.g. an unknown !tag; never a valid value either

    def mapping(self, node: MappingNode, rule: str | None, what: str,
                allowed: tuple[str, ...] | None) -> dict[str, tuple[int, Node]]:
        """``key -> (key line, value node)``; reports duplicate, non-string and
        (if ``allowed`` is given) unknown keys."""
        out: dict[str, tuple[int, Node]] = {}
        prefix = f"{what}: " if what else ""
        for knode, vnode in node.value:
            key = self.scalar(knode)
            kline = _line(knode)
            if knode.tag == "tag:yaml.org,2002:merge":
                self.err(kline, rule, f"{prefix}YAML merge keys (<<) are not supported")
                continue
            if not isinstance(key, str):
                self.err(kline, rule, f"{prefix}keys must be strings")
                continue
            if key in out:
                self.err(kline, rule, f"{prefix}duplicate key {key!r} "
                                      f"(first on line {out[key][0]})")
                continue
            if allowed is not None and key not in allowed:
                self.err(kline, rule, f"{prefix}unknown key {key!r} "
                                      f"(allowed: {', '.join(allowed)})")
                continue
            out[key] = (kline, vnode)
        return out

    def string_list(self, node: Node, rule: str | None, what: str,
                    pattern: re.Pattern[str] | None, hint: str,
                    allow_scalar: bool = False) -> tuple[str, ...] | None:
        """A non-empty list of strings (each matching ``pattern``); ``None`` on error."""
        if allow_scalar and isinstance(node, ScalarNode):
            items: list[Node] = [node]
        elif isinstance(node, SequenceNode):
            items = list(node.value)
        else:
            self.err(_line(node), rule, f"{what}: expected a list of {hint}, "
                                        f"got {_kind(node)}")
            return None
        if not items:
            self.err(_line(node), rule, f"{what}: must not be empty")
            return None
        values: list[str] = []
        ok = True
        for item in items:
            value = self.scalar(item)
            if (not isinstance(value, str) or not value
                    or (pattern is not None and not pattern.match(value))):
                shown = repr(value) if isinstance(item, ScalarNode) else _kind(item)
                self.err(_line(item), rule, f"{what}: {shown} is not {hint}")
                ok = False
            else:
                values.append(value)
        return tuple(values) if ok else None

    def provider_list(self, node: Node, rule: str, what: str) -> tuple[str, ...]:
        names = self.string_list(node, rule, what, None, "a provider name")
        if names is None:
            return ()
        assert isinstance(node, SequenceNode)
        # (a repeated name is harmless: selection keeps its first position)
        for item, name in zip(node.value, names, strict=True):
            self.check_provider(name, _line(item), rule, what)
        return names

    def check_provider(self, name: str, line: int, rule: str, what: str) -> None:
        if name not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            self.err(line, rule, f"{what}: unknown provider {name!r} "
                                 f"(configured in gateway.yaml: {known})")

    # -- document --------------------------------------------------------------------

    def document(self, text: str) -> list[Rule]:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            context = getattr(exc, "context", None)
            cmark = getattr(exc, "context_mark", None)
            if context and cmark is not None and cmark is not mark:
                problem = f"{problem} ({context} started on line {cmark.line + 1})"
            self.err(mark.line + 1 if mark is not None else None, None,
                     f"invalid YAML: {problem}")
            return []
        if root is None:
            self.err(1, None, "empty file: expected a mapping with 'version: 1' and 'rules'")
            return []
        if not isinstance(root, MappingNode):
            self.err(_line(root), None, "top level must be a mapping with 'version: 1' and "
                                        f"'rules', got {_kind(root)}")
            return []
        top = self.mapping(root, None, "top level", _TOP_KEYS)
        if "version" not in top:
            self.err(_line(root), None, "missing 'version: 1'")
        else:
            vline, vnode = top["version"]
            version = self.scalar(vnode)
            if type(version) is not int or version != 1:
                self.err(vline, None, f"version: unsupported version {version!r} (expected 1)")
        if "rules" not in top:
            self.err(_line(root), None, "missing 'rules' (a list of rules)")
            return []
        rline, rnode = top["rules"]
        if not isinstance(rnode, SequenceNode):
            self.err(rline, None, f"rules: expected a list of rules, got {_kind(rnode)}")
            return []
        if not rnode.value:
            self.err(rline, None, "rules: at least one rule is required (ending with a "
                                  "catch-all)")
            return []
        return self.rules(rnode)

    def rules(self, seq: SequenceNode) -> list[Rule]:
        rules: list[Rule] = []
        names: dict[str, int] = {}
        catch_all: Rule | None = None
        last: Rule | None = None
        for index, node in enumerate(seq.value):
            last = self.rule(node, index)
            if last is None:
                continue
            if last.name in names:
                self.err(last.line, last.name,
                         f"duplicate rule name (first on line {names[last.name]})")
            else:
                names[last.name] = last.line
            if catch_all is not None:
                self.err(last.line, last.name,
                         f"unreachable: follows catch-all rule {catch_all.name!r} "
                         f"(line {catch_all.line}), which matches every request")
            elif last.when.is_catch_all:
                catch_all = last
            rules.append(last)
        # (if the last rule is too broken to parse, that is reported already)
        if catch_all is None and last is not None:
            self.err(last.line, last.name,
                     "no catch-all: the last rule must have no 'when' (or an empty one) "
                     "so that every request is routed")
        return rules

    def rule(self, node: Node, index: int) -> Rule | None:
        """A validated rule, or ``None`` if its shape is too broken to use. Problems are
        recorded either way; a returned rule may still have recorded issues."""
        line = _line(node)
        label = f"rules[{index}]"
        if not isinstance(node, MappingNode):
            self.err(line, None, f"{label}: expected a mapping, got {_kind(node)}")
            return None
        name = f"#{index + 1}"  # stands in for a missing or invalid name in messages
        for knode, vnode in node.value:
            if isinstance(knode, ScalarNode) and knode.value == "name":
                value = self.scalar(vnode)
                if isinstance(value, str) and _RULE_NAME.match(value):
                    name = value
                break
        keys = self.mapping(node, name, label if name.startswith("#") else "", _RULE_KEYS)
        if "name" not in keys:
            self.err(line, None, f"{label}: 'name' is required")
        elif name.startswith("#"):
            self.err(keys["name"][0], None, f"{label}: name must be a string of letters, "
                                            "digits and _ . : - (at most 64)")
        if "description" in keys and not isinstance(self.scalar(keys["description"][1]), str):
            self.err(keys["description"][0], name, "description: expected a string")

        when = Conditions()
        if "when" in keys:
            wline, wnode = keys["when"]
            parsed = self.when(wnode, wline, name)
            when = parsed if parsed is not None else Conditions(currencies=())
            # an invalid 'when' is never treated as a catch-all

        providers: tuple[str, ...] = ()
        split: tuple[tuple[str, int], ...] = ()
        fallback: tuple[str, ...] = ()
        if "providers" in keys and "split" in keys:
            self.err(keys["split"][0], name, "use either 'providers' or 'split', not both")
        elif "providers" not in keys and "split" not in keys:
            self.err(line, name, "needs 'providers' (a priority list) or 'split' (weights)")
        if "providers" in keys:
            providers = self.provider_list(keys["providers"][1], name, "providers")
        if "split" in keys:
            split = self.split(keys["split"][1], keys["split"][0], name)
        if "fallback" in keys:
            if "split" not in keys:
                self.err(keys["fallback"][0], name,
                         "fallback is only valid with 'split' (list the providers in order "
                         "under 'providers' instead)")
            fnode = keys["fallback"][1]
            if isinstance(fnode, SequenceNode) and not fnode.value:
                fallback = ()
            else:
                fallback = self.provider_list(fnode, name, "fallback")
        cascade_on: tuple[str, ...] = ()
        if "cascade_on" in keys:
            cascade_on = self.decline_codes(keys["cascade_on"][1], name)
        return Rule(name=name, when=when, providers=providers, split=split,
                    fallback=fallback, cascade_on=cascade_on, line=line)

    def decline_codes(self, node: Node, rule: str) -> tuple[str, ...]:
        if self.string_list(node, rule, "cascade_on", None, "a decline code") is None \
                and not isinstance(node, SequenceNode):
            return ()
        assert isinstance(node, SequenceNode)
        known = canonical_decline_codes()
        out: list[str] = []
        for item in node.value:
            code = self.scalar(item)
            if not isinstance(code, str) or not code:
                continue  # reported by string_list
            if code not in known:
                close = difflib.get_close_matches(code, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.err(_line(item), rule, f"cascade_on: {code!r} is not a canonical decline "
                                            f"code{hint}")
            elif code not in out:
                out.append(code)
        return tuple(out)

    def split(self, node: Node, key_line: int, rule: str) -> tuple[tuple[str, int], ...]:
        if not isinstance(node, MappingNode):
            self.err(_line(node), rule, "split: expected a mapping of provider: weight, "
                                        f"got {_kind(node)}")
            return ()
        entries = self.mapping(node, rule, "split", None)
        if not entries:
            self.err(key_line, rule, "split: must not be empty")
            return ()
        out: list[tuple[str, int]] = []
        total = 0
        weights_ok = True
        for pname, (pline, wnode) in entries.items():
            self.check_provider(pname, pline, rule, "split")
            weight = self.scalar(wnode)
            if type(weight) is not int or weight <= 0:
                shown = repr(weight) if isinstance(wnode, ScalarNode) else _kind(wnode)
                self.err(_line(wnode), rule, f"split: weight of {pname!r} must be a positive "
                                             f"integer, got {shown}")
                weights_ok = False
                continue
            total += weight
            out.append((pname, weight))
        if weights_ok and total != 100:
            self.err(key_line, rule, f"split weights sum to {total}, must be 100")
        return tuple(out)

    def when(self, node: Node, key_line: int, rule: str) -> Conditions | None:
        if isinstance(node, ScalarNode) and self.scalar(node) is None:
            return Conditions()  # `when:` with nothing = catch-all
        if not isinstance(node, MappingNode):
            self.err(_line(node), rule, f"when: expected a mapping, got {_kind(node)}")
            return None
        keys = self.mapping(node, rule, "when", _WHEN_KEYS)
        ok = len(keys) == len(node.value)  # unknown / duplicate keys make it invalid
        fields: dict[str, Any] = {}
        for key, pattern, hint, attr in (
            ("currency", _CURRENCY, "a 3-letter upper-case currency code", "currencies"),
            ("country", _COUNTRY, "a 2-letter upper-case country code", "countries"),
            ("brand", None, "a brand name", "brands"),
            ("merchant", None, "a merchant id", "merchants"),
        ):
            if key not in keys:
                continue
            values = self.string_list(keys[key][1], rule, f"when.{key}", pattern, hint,
                                      allow_scalar=True)
            if values is None:
                ok = False
            else:
                fields[attr] = tuple(v.lower() for v in values) if key == "brand" else values
        if "amount" in keys:
            bounds = self.amount(keys["amount"][1], keys["amount"][0], rule)
            if bounds is None:
                ok = False
            else:
                fields["amount_min"], fields["amount_max"] = bounds
        if "metadata" in keys:
            meta = self.metadata(keys["metadata"][1], keys["metadata"][0], rule)
            if meta is None:
                ok = False
            else:
                fields["metadata"] = meta
        return Conditions(**fields) if ok else None

    def amount(self, node: Node, key_line: int, rule: str) -> tuple[int | None, int | None] | None:
        if not isinstance(node, MappingNode):
            self.err(_line(node), rule, "when.amount: expected a mapping {min: N, max: N}, "
                                        f"got {_kind(node)}")
            return None
        keys = self.mapping(node, rule, "when.amount", _AMOUNT_KEYS)
        ok = len(keys) == len(node.value)
        if not node.value:
            self.err(key_line, rule, "when.amount: give min and/or max")
            return None
        bounds: dict[str, int] = {}
        for k, (kline, vnode) in keys.items():
            value = self.scalar(vnode)
            if type(value) is not int or value < 0:
                shown = repr(value) if isinstance(vnode, ScalarNode) else _kind(vnode)
                self.err(kline, rule, f"when.amount.{k}: must be a non-negative integer "
                                      f"(minor units), got {shown}")
                ok = False
            else:
                bounds[k] = value
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            self.err(key_line, rule, f"when.amount: min {bounds['min']} is greater than "
                                     f"max {bounds['max']}")
            ok = False
        return (bounds.get("min"), bounds.get("max")) if ok else None

    def metadata(self, node: Node, key_line: int, rule: str) -> dict[str, str] | None:
        if not isinstance(node, MappingNode):
            self.err(_line(node), rule, "when.metadata: expected a mapping of key: value, "
                                        f"got {_kind(node)}")
            return None
        if not node.value:
            self.err(key_line, rule, "when.metadata: must not be empty")
            return None
        keys = self.mapping(node, rule, "when.metadata", None)
        ok = len(keys) == len(node.value)
        out: dict[str, str] = {}
        for k, (kline, vnode) in keys.items():
            value = self.scalar(vnode)
            if not isinstance(value, str):
                shown = repr(value) if isinstance(vnode, ScalarNode) else _kind(vnode)
                self.err(kline, rule, f"when.metadata.{k}: value must be a string, got "
                                      f"{shown} (quote it)")
                ok = False
            else:
                out[k] = value
        return out if ok else None
