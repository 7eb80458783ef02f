"""kopf wiring for WorkflowRuns: kopf watches (and elects a leader, with peering); a work
queue decides when each run is reconciled.

No kopf finalizer, timer or daemon is used on runs: the run's finalizer is the API's own
(``openchoreo.dev/workflowrun-cleanup``), managed by the reconciler, and TTLs are requeues.
"""

from __future__ import annotations

from typing import Any

import kopf
from lightkube import AsyncClient

from workflowplane.api.constants import CLUSTER_WORKFLOW_PLANE, GROUP, VERSION, WORKFLOW_PLANE
from workflowplane.api.workflows import CLUSTER_WORKFLOW, WORKFLOW, WORKFLOW_RUN
from workflowplane.kits.health import ProgressWatch
from workflowplane.kits.workqueue import QueueMetrics, WorkQueue
from workflowplane.protocol.gateway_client import TunnelAPI
from workflowplane.runs.metrics import RunMetrics
from workflowplane.runs.planner import Planner
from workflowplane.runs.run_reconciler import RunReconciler
from workflowplane.runs.tracker import RunKey, namespace_of

# What a waiting run can be waiting for: these kinds appearing or changing wake it up.
WAKERS = {
    "workflowplanes": WORKFLOW_PLANE,
    "clusterworkflowplanes": CLUSTER_WORKFLOW_PLANE,
    "workflows": WORKFLOW,
    "clusterworkflows": CLUSTER_WORKFLOW,
}
CLUSTER_SCOPED = {CLUSTER_WORKFLOW_PLANE, CLUSTER_WORKFLOW}


class RunsController:
    """The runs' queue, reconciler and health check; metrics are the process's (optional)."""

    def __init__(
        self,
        kube: AsyncClient,
        tunnel: TunnelAPI,
        *,
        concurrency: int = 16,
        queue_metrics: QueueMetrics | None = None,
        run_metrics: RunMetrics | None = None,
    ) -> None:
        self.planner = Planner()
        self.reconciler = RunReconciler(kube, tunnel, self.planner, metrics=run_metrics)
        # Made now, so its series exist before the first run (asyncio binds its loop lazily).
        self.queue: WorkQueue[RunKey] = WorkQueue(
            self.reconciler.reconcile,
            concurrency=concurrency,
            name="runs",
            metrics=queue_metrics,
            fair_by=namespace_of,  # one tenant's many runs wait behind each other's, not others'
        )

    def progress_watch(self, limit: float) -> ProgressWatch:
        """The queue's health check: stuck when runs are due and no pass finishes."""
        return self.queue.progress_watch(limit)

    def pause(self) -> None:
        """No run pass and no status write from Argo's side while another replica leads."""
        self.queue.pause()
        self.reconciler.tracker.pause_writes()

    def resume(self) -> None:
        self.queue.resume()
        self.reconciler.tracker.resume_writes()

    def saw(
        self, kind: str, namespace: str | None, name: str, event: str | None, body: kopf.Body
    ) -> None:
        """An object's newest state from its watch event, for the reconciler's cache."""
        if event == "DELETED" and kind == WORKFLOW_RUN:
            self.reconciler.cache.deleted(kind, body)  # its pass follows at once
        elif event == "DELETED":
            self.reconciler.cache.forget(kind, namespace, name)
        else:
            self.reconciler.cache.remember(kind, body)

    async def close(self) -> None:
        await self.queue.close()
        await self.reconciler.tracker.close()
        await self.planner.close()


def register_runs(registry: kopf.OperatorRegistry, runs: RunsController) -> None:
    @kopf.on.event(GROUP, VERSION, "workflowruns", registry=registry, id="workflowrun-event")
    async def run_changed(
        name: str, namespace: str | None, type: str | None, body: kopf.Body, **_: Any
    ) -> None:
        runs.saw(WORKFLOW_RUN, namespace, name, type, body)
        runs.queue.add((namespace or "", name))

    for plural, kind in WAKERS.items():
        _register_waker(registry, runs, plural, kind)

    @kopf.on.cleanup(registry=registry, id="workflowrun-cleanup")
    async def stop_runs(**_: Any) -> None:
        await runs.close()


def _register_waker(
    registry: kopf.OperatorRegistry, runs: RunsController, plural: str, kind: str
) -> None:
    @kopf.on.event(GROUP, VERSION, plural, registry=registry, id=f"wake-runs-{plural}")
    async def wake(
        name: str, namespace: str | None, type: str | None, body: kopf.Body, **_: Any
    ) -> None:
        runs.saw(kind, namespace, name, type, body)
        if type == "DELETED":
            return
        scope = None if kind in CLUSTER_SCOPED else namespace
        for key in runs.reconciler.woken_by((kind, scope, name)):
            runs.queue.add(key)
