"""No panel or alert is empty by mistake: every query of the shipped Grafana dashboard and
every alert rule names only series some component exports, with labels those series have.

The exported series are read from each component's own metrics object (its registry), so a
renamed metric or label fails here, not on a wall screen."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from workflowplane.agent.metrics import AgentMetrics
from workflowplane.controller.metrics import ControllerMetrics
from workflowplane.gateway.metrics import GatewayMetrics

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "workflowplane-control-plane"
DASHBOARD = CHART / "dashboards" / "workflowplane.json"
ALERTS = CHART / "rules" / "workflowplane-alerts.yaml"
SERIES = re.compile(r"\b(workflowplane_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(workflowplane_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped series, and a histogram's bucket label.
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "service", "container", "le"})
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def component_registries() -> list[CollectorRegistry]:
    """Every component's metrics."""
    return [GatewayMetrics().registry, ControllerMetrics().registry, AgentMetrics().registry]


def exported() -> dict[str, frozenset[str]]:
    """Series name -> its label names, as each component's registry exports them.

    Label names of a family without children are not public in prometheus_client: the
    collectors' own ``_labelnames`` are read here (one place)."""
    series: dict[str, frozenset[str]] = {}
    for registry in component_registries():
        for collector in registry._collector_to_names:
            name, kind = collector._name, collector._type  # type: ignore[attr-defined]
            labels = frozenset(collector._labelnames)  # type: ignore[attr-defined]
            for suffix in SUFFIXES[kind]:
                series[name + suffix] = labels
    return series


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["definition"]


def alert_queries() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


QUERIES = [*dashboard_queries(), *alert_queries()]


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_the_query_names_exported_series_and_their_labels(where: str, expr: str) -> None:
    series = exported()
    names = SERIES.findall(expr)
    assert names, f"{where} names no workflowplane series: {expr}"
    unknown = sorted(set(names) - set(series))
    assert not unknown, f"{where}: not exported by any component: {unknown}"
    for name, matchers in SELECTOR.findall(expr):
        used = {m.split("=")[0].strip(" !~") for m in matchers.split(",") if m.strip()}
        assert used <= series[name], f"{where}: {name} has no label {used - series[name]}"
    known = set().union(*(series[n] for n in names)) | TARGET_LABELS
    for grouping in GROUPING.findall(expr):
        used = {label.strip() for label in grouping.split(",") if label.strip()}
        assert used <= known, f"{where}: no series here has label(s) {used - known}"


def test_every_dashboard_panel_has_a_unique_id_and_a_place() -> None:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert all({"h", "w", "x", "y"} <= set(p["gridPos"]) for p in panels)


def test_the_check_itself_catches_a_wrong_name_and_a_wrong_label() -> None:
    series = exported()
    assert "workflowplane_gateway_proxy_requests_total" in series
    assert "workflowplane_gateway_proxy_requests" not in series, "a counter is read as _total"
    assert series["workflowplane_reconcile_total"] == {"queue", "result"}
    assert "workflowplane_runs_in_flight" in series and "workflowplane_run_watches" in series
