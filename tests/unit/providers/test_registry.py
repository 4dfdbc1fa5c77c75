"""The provider registry: every provider folder's declaration, and a gateway that only
reads declarations (issue #12 item 1)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from gateway.api.webhooks import verify_and_parse, webhook_credentials
from gateway.config import ConfigError, load_config
from gateway.config_keys import provider_keys
from gateway.provider_registry import build_provider, effective
from providers.declaration import ProviderDeclaration
from providers.registry import DECLARATIONS, PACKAGES, declaration
from providers.sandbox import DEFAULT_PORTS, simulator_class
from providers.settings import ProviderSettings
from providers.simulator.provider import SimulatedProvider
from tests.gateway_harness import write_config
from tests.paths import REPO

ROOT = REPO
COMMON_KEYS = {"type", "sandbox", "currencies", "base_url", "timeout_s", "connect_timeout_s",
               "breaker"}


def test_every_folder_declares_one_type() -> None:
    assert [p.rsplit(".", 1)[-1] for p in PACKAGES] == list(DECLARATIONS)
    assert all(isinstance(d, ProviderDeclaration) for d in DECLARATIONS.values())


@pytest.mark.parametrize("ptype", list(DECLARATIONS))
def test_declaration_is_complete(ptype: str) -> None:
    decl = declaration(ptype)
    sim = simulator_class(ptype)
    assert sim is not None and issubclass(sim, SimulatedProvider)
    assert set(decl.required_secrets) <= set(decl.secret_keys)
    # a sandbox entry needs no credentials: the simulator's cover every required one
    assert set(decl.required_secrets) <= set(decl.sandbox_credentials)
    assert not (set(decl.option_keys) | set(decl.secret_keys)) & COMMON_KEYS
    assert DEFAULT_PORTS[ptype] == decl.default_sandbox_port
    assert provider_keys(ptype) == {**dict.fromkeys(decl.secret_keys), **decl.option_keys}


def test_sandbox_ports_are_distinct() -> None:
    ports = [d.default_sandbox_port for d in DECLARATIONS.values()]
    assert len(set(ports)) == len(ports)


def _type_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Provider type names used as values to branch on: compared against, or dict keys."""
    types = set(DECLARATIONS)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        consts: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            consts = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            consts = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Set | ast.Tuple | ast.List) and isinstance(
                getattr(node, "ctx", ast.Load()), ast.Load):
            consts = list(node.elts)
        found += [(c.lineno, c.value) for c in consts
                  if isinstance(c, ast.Constant) and c.value in types]
    return found


def test_the_gateway_never_branches_on_a_provider_type() -> None:
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for line, value in _type_literals(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert offenders == []


def test_the_scan_finds_a_branch() -> None:
    """The scan above can fail: it sees the kinds of branch the gateway used to have."""
    code = 'if cfg.type == "stripe": pass\nx = {"adyen": 1}\nif t in ("braintree",): pass\n'
    assert [v for _, v in _type_literals(ast.parse(code))] == ["stripe", "adyen", "braintree"]


# ---------------------------------------------------------------- a fourth provider


def _dummy_checks(cfg: ProviderSettings) -> list[tuple[tuple[str | int, ...], str]]:
    if cfg.options.get("flavour") not in (None, "vanilla"):
        return [(("flavour",), "must be vanilla")]
    return []


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch) -> ProviderDeclaration:
    """A fourth type, registered the way a folder is: by its declaration alone (it borrows
    Stripe's adapter and webhook scheme, with keys and checks of its own)."""
    decl = dataclasses.replace(
        declaration("stripe"), type="dummy", secret_keys=("api_key", "webhook_secret", "token"),
        option_keys={"flavour": None}, check_options=_dummy_checks,
        sandbox_credentials={**declaration("stripe").sandbox_credentials, "token": "t0k"})
    monkeypatch.setitem(DECLARATIONS, "dummy", decl)
    return decl


def test_config_takes_the_keys_and_checks_of_a_registered_type(
        dummy: ProviderDeclaration, tmp_path: Path) -> None:
    entry = {"type": "dummy", "sandbox": True, "flavour": "vanilla", "token": "lit-secret"}
    cfg = load_config(write_config(tmp_path / "ok", "sqlite://gw.db", {"d": entry}))
    pc = cfg.providers["d"]
    assert pc.credentials["token"] == "lit-secret" and pc.options == {"flavour": "vanilla"}
    # the simulator's credentials fill what the entry leaves out
    assert webhook_credentials(pc)["webhook_secret"] == "whsec_sandbox_stripe"
    assert effective(pc).credentials["token"] == "lit-secret"

    bad = {**entry, "flavour": "mint", "colour": "red"}
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path / "bad", "sqlite://gw.db", {"d": bad}))
    text = "\n".join(exc.value.errors)
    assert "providers.d.flavour: must be vanilla" in text
    assert "unknown key 'colour'" in text and "flavour" in text.split("colour")[1]


def test_an_unregistered_type_is_refused_with_the_registered_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sqlite://gw.db", {"d": {"type": "nosuch", "sandbox": True}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert f"must be one of {', '.join(DECLARATIONS)}" in str(exc.value)


def test_adapter_and_webhooks_come_from_the_declaration(
        dummy: ProviderDeclaration, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "sqlite://gw.db",
                                   {"d": {"type": "dummy", "sandbox": True}}))
    pc = cfg.providers["d"]
    adapter = build_provider(pc, {"dummy": 4242}, "127.0.0.1")
    assert adapter.name == "d"
    with pytest.raises(ValueError, match="no in-process dummy simulator"):
        build_provider(pc, {}, "127.0.0.1")
    from providers.stripe.doctor import stripe_notification

    note = stripe_notification("whsec_sandbox_stripe")
    events = verify_and_parse(pc, note.body, note.headers)
    assert [e.kind for e in events] == ["balance.available"]
