"""dashboards/: the Grafana dashboard, the Prometheus alerting rules and scrape config.

Static checks (no server): promtool accepts the rules and the config; every PromQL
expression of the dashboard parses (promtool checks them as recording rules); every metric
they name is one the gateway exports (gateway.metrics.REGISTRY). That the expressions also
return data against a real Prometheus scraping a real gateway is
tests/integration/test_prometheus_e2e.py.

promtool comes with the Debian package ``prometheus``; ``.ci/run`` installs it. A missing
promtool fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import metrics
from tests.paths import REPO

ROOT = REPO
DASHBOARDS = ROOT / "dashboards"
GRAFANA = DASHBOARDS / "grafana" / "gateway.json"
ALERTS = DASHBOARDS / "prometheus" / "alerts.yml"
PROMETHEUS_YML = DASHBOARDS / "prometheus" / "prometheus.yml"
RUNBOOK = "README.md#sre-runbook"

# Grafana's macros and our template variables, replaced by what Grafana would send.
# $provider is a multi-value variable with "All" = ".*" (allValue in the dashboard).
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${provider}": ".*",
    "$provider": ".*",
}

# The alerts the issue asks for, with their hold durations (`for:`).
EXPECTED_ALERTS = {
    "GatewayCircuitBreakerOpen": "1m",
    "GatewayProviderSuccessRatioLow": "5m",
    "GatewayUnresolvedPayments": "15m",
    "GatewayWebhookSignatureFailures": None,
    "GatewayConfigReloadFailed": None,
    "GatewayNoTraffic": "15m",
    "GatewayProviderAmountMismatch": None,
    "GatewaySettlementDrift": None,
    "GatewayRequestsShed": "5m",
}

# Metrics a panel must show (the list: success ratio and call rate, latency
# percentiles, breaker state, failovers by reason, retries, unresolved payments, webhook
# results, config reloads).
REQUIRED_DASHBOARD_METRICS = {
    "gateway_provider_calls_total",
    "gateway_provider_call_duration_seconds_bucket",
    "gateway_circuit_state",
    "gateway_failovers_total",
    "gateway_retries_total",
    "gateway_payments_unresolved",
    "gateway_webhooks_total",
    "gateway_config_reloads_total",
}

_METRIC_RE = re.compile(r"\b(gateway_[a-zA-Z0-9_]+|up)\b(?!\s*\()")
_LABEL_VALUES_RE = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)$")


# --------------------------------------------------------------------------- helpers


def exported_sample_names() -> set[str]:
    """Every sample name the gateway's registry can export (counters with _total, ...)."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label names and functions are not matched:
    they sit inside braces / before a parenthesis)."""
    without_labels = re.sub(r"\{[^}]*\}", "{}", expr)
    without_by = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                        without_labels)
    return set(_METRIC_RE.findall(without_by))


def grafana_expr(expr: str) -> str:
    for macro, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def load_dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows; rows themselves excluded."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, macros substituted."""
    dashboard = dashboard or load_dashboard()
    queries: list[tuple[str, str]] = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target.get('refId')}"
            queries.append((where, grafana_expr(target["expr"])))
    for var in dashboard["templating"]["list"]:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES_RE.match(query.strip())
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        metric, label = m.groups()
        # What Grafana asks Prometheus for label_values(metric, label): the label's values
        # on the series of that metric.
        queries.append((f"variable {var['name']!r}", f"group by ({label}) ({metric})"))
    return queries


def load_alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found on PATH: it comes with the Debian package `prometheus`, "
                    "which .ci/run installs (apt-get install -y --no-install-recommends "
                    "prometheus)", pytrace=False)
    return exe


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60,
                          check=False)


# --------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    res = run_promtool("check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in res.stdout, res.stdout


def test_promtool_check_config() -> None:
    res = run_promtool("check", "config", str(PROMETHEUS_YML))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "is valid prometheus config file syntax" in res.stdout, res.stdout
    assert "SUCCESS: 1 rule files found" in res.stdout, res.stdout  # alerts.yml, resolved


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool parses each dashboard query, written as a recording rule."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)
    ]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    res = run_promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(queries)} rules found" in res.stdout, res.stdout


# --------------------------------------------------------------------------- scrape config


def test_scrape_config_targets_the_gateway() -> None:
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "gateway"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:8080"]  # `gateway serve` defaults


# --------------------------------------------------------------------------- alert rules


def test_alerts_are_the_expected_ones_with_summary_runbook_and_severity() -> None:
    rules = load_alert_rules()
    by_name = {r["alert"]: r for r in rules}
    assert len(by_name) == len(rules), "duplicate alert names"
    assert set(by_name) == set(EXPECTED_ALERTS)
    for name, hold in EXPECTED_ALERTS.items():
        rule = by_name[name]
        assert rule.get("for") == hold, f"{name}: for={rule.get('for')!r}, want {hold!r}"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        ann = rule["annotations"]
        assert ann.get("summary", "").strip(), f"{name}: no summary"
        assert ann.get("runbook_url") == RUNBOOK, f"{name}: runbook_url {ann.get('runbook_url')!r}"


def test_alert_expressions_use_only_exported_metrics() -> None:
    known = exported_sample_names() | {"up"}  # up: Prometheus' own scrape health series
    for rule in load_alert_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= known, f"{rule['alert']}: unknown metrics {sorted(used - known)}"


def test_breaker_alert_watches_the_circuit_state_gauge() -> None:
    [rule] = [r for r in load_alert_rules() if r["alert"] == "GatewayCircuitBreakerOpen"]
    assert metric_names(rule["expr"]) == {"gateway_circuit_state"}
    assert rule["for"] == "1m"


# --------------------------------------------------------------------------- Grafana


def test_dashboard_has_prometheus_datasource_and_provider_variables() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash.get("uid") and dash.get("title")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    prov = variables["provider"]
    assert prov["type"] == "query"
    assert prov["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert prov["includeAll"] and prov["multi"] and prov["allValue"] == ".*"


def test_every_panel_queries_prometheus_with_known_metrics() -> None:
    dash = load_dashboard()
    known = exported_sample_names()
    panels = dashboard_panels(dash)
    assert len(panels) >= 10
    ids = [p["id"] for p in dash["panels"]] + [p["id"] for p in panels
                                                 if p not in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    shown: set[str] = set()
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
        targets = panel.get("targets") or []
        assert targets, f"panel {title!r} has no targets"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"panel {title!r}: duplicate refIds"
        for t in targets:
            assert t["datasource"] == panel["datasource"], title
            expr = t.get("expr", "")
            assert expr.strip(), f"panel {title!r} target {t['refId']}: empty expr"
            used = metric_names(grafana_expr(expr))
            assert used, f"panel {title!r}: no metric in {expr!r}"
            assert used <= known, f"panel {title!r}: unknown metrics {sorted(used - known)}"
            shown |= used
        gp = panel["gridPos"]
        assert 0 <= gp["x"] and gp["x"] + gp["w"] <= 24 and gp["h"] > 0, title
    missing = REQUIRED_DASHBOARD_METRICS - shown
    assert not missing, f"no panel shows {sorted(missing)}"


def test_latency_panel_has_p50_p95_p99() -> None:
    exprs = [e for _, e in dashboard_queries()
             if "gateway_provider_call_duration_seconds_bucket" in e]
    quantiles = {m.group(1) for e in exprs
                 for m in [re.match(r"\s*histogram_quantile\(\s*([0-9.]+)", e)] if m}
    assert {"0.5", "0.95", "0.99"} <= quantiles, quantiles


def test_metric_name_extraction() -> None:
    expr = ('sum by (provider, le) (rate(gateway_provider_call_duration_seconds_bucket'
            '{provider=~".*", outcome="up"}[1m])) / on (job) up')
    assert metric_names(expr) == {"gateway_provider_call_duration_seconds_bucket", "up"}


async def test_every_metric_the_dashboards_query_has_a_series_from_start(
    tmp_path: Path
) -> None:
    """A fresh gateway process that has served nothing but its health probe already exports
    a series (at 0) for every metric a panel or an alert queries: an empty panel reads as
    "no data", and a counter first seen at 1 hides that increase from rate()/increase().
    (A real process: this test process's registry holds other tests' series.)"""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    from tests.gateway_harness import write_config
    from tests.processes import start_gateway, stop

    providers = {
        name: {"type": kind, "sandbox": True, "currencies": ["EUR"]}
        for name, kind in (("stripe_main", "stripe"), ("bt", "braintree"), ("adyen", "adyen"))
    }
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}", providers=providers)
    async with aiohttp.ClientSession() as session:
        proc, base = await start_gateway(config, tmp_path / "gateway.log", session)
        try:
            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
        finally:
            stop(proc)
    present = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    queried = {m for _, e in dashboard_queries() for m in metric_names(grafana_expr(e))}
    queried |= {m for r in load_alert_rules() for m in metric_names(r["expr"])}
    queried -= {"up"}  # Prometheus's own
    missing = sorted(queried - present)
    assert not missing, f"no series at start for {missing}"
    assert 'gateway_failovers_total{from_provider="bt",reason="not_created",to_provider="adyen"}' \
        in text
