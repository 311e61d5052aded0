"""Dashboards and alert rules reference only metrics (and labels) the services export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import services.projector.metrics as projector_metrics
from services.observability import metrics
from tests.unit.observability.promql import usage

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_BUILTIN = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def exported() -> dict[str, set[str]]:
    """Every sample name the services can export, with its label names (plus target labels)."""
    names: dict[str, set[str]] = dict(PROMETHEUS_BUILTIN)
    for module in (metrics, projector_metrics):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                labels = set(obj._labelnames) | TARGET_LABELS
                assert obj._type is not None, obj._name
                for suffix in SUFFIXES[obj._type]:
                    names[obj._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    names[metrics.RunsByStateCollector.NAME] = {"tenant", "state"} | TARGET_LABELS
    return names


def test_exported_names_cover_the_registry() -> None:
    families = {family.name for family in metrics.REGISTRY.collect()}
    names = exported()
    assert families, "the registry is empty"
    missing = [f for f in families if not any(n == f or n.startswith(f + "_") for n in names)]
    assert not missing, f"registry families not covered by exported(): {missing}"


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in board["templating"]["list"]:
            query = variable.get("definition", "")
            if query.startswith("label_values("):
                metric, label = query[len("label_values(") : -1].split(",")
                yield f"{path.name}: ${variable['name']}", f"{metric.strip()}{{{label.strip()}=~'.+'}}"


def alert_exprs() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alerts.yml: {rule['alert']}", rule["expr"]


def check(where: str, expr: str, names: dict[str, set[str]]) -> list[str]:
    used = usage(expr)
    problems = [f"{where}: unknown metric {m!r}" for m in sorted(used.metrics) if m not in names]
    if not any(m.startswith("switchyard_") for m in used.metrics) and "up" not in used.metrics:
        problems.append(f"{where}: no switchyard metric in {expr!r}")
    problems += [
        f"{where}: {m} has no label {label!r}"
        for m, label in sorted(used.matchers)
        if m in names and label not in names[m]
    ]
    all_labels = set().union(*(names[m] for m in used.metrics if m in names))
    problems += [f"{where}: no metric of it has label {g!r}" for g in sorted(used.grouping - all_labels)]
    return problems


def test_dashboards_exist_with_a_tenant_variable() -> None:
    assert {p.name for p in DASHBOARDS} == {"overview.json", "tenant.json"}
    tenant = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "tenant.json").read_text())
    variables = {v["name"]: v for v in tenant["templating"]["list"]}
    assert variables["tenant"]["definition"].startswith("label_values(switchyard_")
    assert all("$tenant" in t["expr"] for p in tenant["panels"] for t in p.get("targets", []))


@pytest.mark.parametrize("where_expr", list(dashboard_exprs()), ids=lambda we: we[0])
def test_dashboard_expressions_use_exported_metrics(where_expr: tuple[str, str]) -> None:
    assert check(*where_expr, exported()) == []


@pytest.mark.parametrize("where_expr", list(alert_exprs()), ids=lambda we: we[0])
def test_alert_expressions_use_exported_metrics(where_expr: tuple[str, str]) -> None:
    assert check(*where_expr, exported()) == []


def test_dashboards_cover_the_issue_panels() -> None:
    exprs = " ".join(e for _, e in dashboard_exprs())
    for metric in (
        "switchyard_consumer_lag",
        "switchyard_handler_seconds_bucket",
        "switchyard_step_retries_total",
        "switchyard_dlq_records_total",
        "switchyard_runs_by_state",
        "switchyard_runs_in_flight",
        "switchyard_runs_pending",
        "switchyard_throttled_seconds_total",
        "switchyard_transaction_seconds_bucket",
        "switchyard_transaction_aborts_total",
        "switchyard_projector_lag_seconds",
    ):
        assert metric in exprs, metric


def test_dashboards_are_generated_from_build_dashboards() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "deploy/grafana/build_dashboards.py"
    )
    assert spec and spec.loader
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.render().items():
        assert (ROOT / "deploy/grafana/dashboards" / name).read_text() == text, (
            f"{name} is stale: run python deploy/grafana/build_dashboards.py"
        )


def test_alert_rules_cover_dlq_lag_and_stuck_runs() -> None:
    alerts = dict(alert_exprs())
    assert any("switchyard_dlq_records_total" in e for e in alerts.values())
    assert any("switchyard_consumer_lag" in e for e in alerts.values())
    assert "switchyard_runs_in_flight" in alerts["alerts.yml: SwitchyardRunsStuck"]


def test_promql_usage_parser() -> None:
    used = usage(
        "histogram_quantile(0.99, sum by (service, le) "
        '(rate(switchyard_handler_seconds_bucket{tenant=~"$t"}[5m])))'
        " and on (service) up > 0 unless foo_bar offset 5m"
    )
    assert used.metrics == {"switchyard_handler_seconds_bucket", "up", "foo_bar"}
    assert used.matchers == {("switchyard_handler_seconds_bucket", "tenant")}
    assert used.grouping == {"service", "le"}


def test_check_reports_unknown_metrics_and_labels() -> None:
    names = exported()
    assert check("x", "rate(switchyard_nope_total[5m])", names) == [
        "x: unknown metric 'switchyard_nope_total'"
    ]
    assert check("x", 'switchyard_projector_lag_seconds{tenant="a"}', names) == [
        "x: switchyard_projector_lag_seconds has no label 'tenant'"
    ]
    assert check("x", "sum by (workflow) (switchyard_runs_in_flight)", names) == [
        "x: no metric of it has label 'workflow'"
    ]
