"""The controller process's Prometheus series, on a registry of its own (several controllers
run in one test process, so never the global one). Served on the controller's health
listener at /metrics.

- ``workflowplane_workqueue_*`` and ``workflowplane_reconcile_*`` per queue (``planes``,
  ``runs``): ``kits.workqueue.QueueMetrics``;
- ``workflowplane_plane_status_lag_seconds``: from a gateway push event (an agent connected
  or left) to the pass that wrote the plane's status after seeing it;
- ``workflowplane_runs_*`` and ``workflowplane_run_*``: ``runs.metrics.RunMetrics``;
- the push channel itself and this replica's role.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workflowplane.kits.workqueue import QueueMetrics
from workflowplane.runs.metrics import RunMetrics

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
GATEWAY_EVENT_TYPES: Final = frozenset({"connected", "disconnected", "authorization", "rejected"})


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queues = QueueMetrics(self.registry)
        self.runs = RunMetrics(self.registry)
        self.plane_status_lag = Histogram(
            "workflowplane_plane_status_lag_seconds",
            "From a gateway connection event reaching the controller to the plane status "
            "pass that reflects it",
            registry=self.registry,
            buckets=LAG_BUCKETS,
        )
        self.gateway_events = Counter(
            "workflowplane_controller_gateway_events_total",
            "Connection events received on the gateway's push channel, by type",
            ["type"],
            registry=self.registry,
        )
        self.gateway_stream_interruptions = Counter(
            "workflowplane_controller_gateway_event_stream_interruptions_total",
            "Times the gateway's push channel broke (status follows the resync until reopened)",
            registry=self.registry,
        )
        self.leader = Gauge(
            "workflowplane_controller_leader",
            "1 when this replica reconciles (standalone, or the elected peer), else 0",
            registry=self.registry,
        )

    def gateway_event(self, kind: object) -> None:
        text = str(kind)
        self.gateway_events.labels(type=text if text in GATEWAY_EVENT_TYPES else "other").inc()
