"""A rolling restart of all three gateway replicas (SIGTERM drain, ready again, next) while
100 WorkflowRuns start (issue #12): every run starts exactly once, and the plane's CR says
connected, with one agent, at every read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient

from tests.integration.ha.conftest import Planes
from tests.integration.ha.fleet import (
    Fleet,
    StatusRecorder,
    recording,
    warning_events,
    warnings_for,
)
from tests.integration.harness import apply, controller_running, eventually, unique
from tests.integration.runs.conftest import SECRET_STORE
from tests.integration.runs.workflows import LABELS, condition, definition, run
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
RUNS = 100
BATCHES = 4  # one before the restart, one while each replica drains


def _runs(namespace: str, workflow: str, batch: int) -> dict[str, Any]:
    size = RUNS // BATCHES
    names = [f"ha-{batch * size + i}" for i in range(size)]
    params = {"repository": {"url": "https://git.example/app"}}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [run(namespace, n, workflow, params) for n in names],
    }


def _listed(server: ApiServer, kind: str, namespace: str) -> list[dict[str, Any]]:
    out = kubectl(server.kubeconfig, server.context, "get", kind, "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def _started(control_plane: ApiServer, namespace: str) -> int:
    runs = _listed(control_plane, "workflowruns", namespace)
    return sum(1 for r in runs if (r.get("status") or {}).get("startedAt"))


async def test_every_run_starts_once_through_a_rolling_restart(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    plane_crds: Path,
    kube: AsyncClient,
    fleet: Fleet,
    planes: Planes,
    namespace: str,
) -> None:
    plane = {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "ClusterWorkflowPlane",
        "metadata": {"name": "default"},
        "spec": {"planeID": unique("ha-runs"), "secretStoreRef": {"name": SECRET_STORE}},
    }
    earlier = await warning_events(kube, "default", "default")  # the runs tests' "default"
    agent = (await planes.agent(fleet.public_urls, plane)).agent
    workflow = unique("build")
    apply(control_plane, definition("ClusterWorkflow", workflow))
    async with (
        controller_running(control_plane, fleet.internal_urls) as controller,
        recording(StatusRecorder(kube, "default", None), agents=1) as status,
    ):
        apply(control_plane, _runs(namespace, workflow, 0))
        for index, replica in enumerate(fleet.replicas, start=1):
            assert await replica.terminate() == 0
            apply(control_plane, _runs(namespace, workflow, index))  # while it drains/is down
            await replica.start(kube)
            await eventually(lambda: all(agent.tunnel.replicas.values()), timeout=60)
        await eventually(lambda: _started(control_plane, namespace) == RUNS, timeout=300)
        started = controller.sample("workflowplane_runs_total", result="started")

    runs = _listed(control_plane, "workflowruns", namespace)
    assert len(runs) == RUNS
    reasons = {condition(r, "WorkflowCompleted").get("reason") for r in runs}
    assert reasons == {"Pending"}  # none failed (Argo's controller is not running here)
    assert started == RUNS  # each started once
    workflows = _listed(workflow_plane, "workflows.argoproj.io", f"workflows-{namespace}")
    owners = sorted(w["metadata"]["labels"][LABELS[0]] for w in workflows)
    assert owners == sorted(r["metadata"]["name"] for r in runs)  # one Argo Workflow each
    assert set(status.seen) == {(True, 1)}, status.seen
    assert await warnings_for(kube, "default", "default", besides=earlier) == []
