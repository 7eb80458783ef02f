"""What the runs controller counts, on a registry its process owns (never the global one).

Every series is per process, with bounded labels only: a result out of three, a reason out of
``RunReason``'s, never a run's name. Counting happens where a run's status is written, by
comparing the status before and after the write, so it follows the status and not the code
path that wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workflowplane.api.conditions import find_condition
from workflowplane.api.workflows import RunCondition, RunReason
from workflowplane.runs.progress import is_completed

RESULTS: Final = ("started", "succeeded", "failed")
REASONS: Final = frozenset(v for k, v in vars(RunReason).items() if k.isupper())
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RunMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "workflowplane_runs_total",
            "Runs started on a plane, and runs completed: succeeded or failed (any reason)",
            ["result"],
            registry=registry,
        )
        self.failures = Counter(
            "workflowplane_run_failures_total",
            "Completed runs that did not succeed, by WorkflowCompleted's reason",
            ["reason"],
            registry=registry,
        )
        self.status_lag = Histogram(
            "workflowplane_run_status_lag_seconds",
            "From an Argo Workflow change reaching the tracker to the run's status write",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.in_flight = Gauge(
            "workflowplane_runs_in_flight",
            "Runs started and not completed that this controller follows",
            registry=registry,
        )
        self.watches = Gauge(
            "workflowplane_run_watches",
            "Argo Workflow list+watches open through the tunnel (one per plane CR in use)",
            registry=registry,
        )
        for result in RESULTS:
            self.runs.labels(result=result)

    def follow(self, in_flight: Callable[[], int], watches: Callable[[], int]) -> None:
        """The gauges read the tracker when scraped."""
        self.in_flight.set_function(in_flight)
        self.watches.set_function(watches)

    def status_written(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        """Count what this status write did to the run: started it, completed it, both."""
        if not before.get("startedAt") and after.get("startedAt"):
            self.runs.labels(result="started").inc()
        if is_completed(after) and not is_completed(before):
            completed = find_condition(list(after.get("conditions") or []), RunCondition.COMPLETED)
            reason = str((completed or {}).get("reason") or "")
            reason = reason if reason in REASONS else "Other"  # bounded, whatever was written
            if reason == RunReason.SUCCEEDED:
                self.runs.labels(result="succeeded").inc()
            else:
                self.runs.labels(result="failed").inc()
                self.failures.labels(reason=reason).inc()
