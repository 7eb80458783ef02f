"""Runs are counted by what a status write did to them, with bounded labels."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from workflowplane.runs.metrics import RunMetrics


def _completed(reason: str) -> dict[str, Any]:
    return {
        "startedAt": "2026-11-24T12:00:00Z",
        "conditions": [{"type": "WorkflowCompleted", "status": "True", "reason": reason}],
    }


def test_started_succeeded_and_failed_each_count_once_per_transition() -> None:
    registry = CollectorRegistry()
    metrics = RunMetrics(registry)

    def runs(result: str) -> float:
        return registry.get_sample_value("workflowplane_runs_total", {"result": result}) or 0

    assert (runs("started"), runs("succeeded"), runs("failed")) == (0, 0, 0)
    metrics.status_written({}, {"startedAt": "2026-11-24T12:00:00Z"})
    metrics.status_written({"startedAt": "x"}, {"startedAt": "x", "tasks": []})
    assert runs("started") == 1
    metrics.status_written({"startedAt": "x"}, _completed("Succeeded"))
    metrics.status_written(_completed("Succeeded"), _completed("Succeeded"))
    assert runs("succeeded") == 1
    metrics.status_written({}, _completed("RenderFailed"))
    metrics.status_written({}, _completed("something a later version writes"))
    assert runs("failed") == 2
    for reason in ("RenderFailed", "Other"):
        sample = registry.get_sample_value("workflowplane_run_failures_total", {"reason": reason})
        assert sample == 1, reason
