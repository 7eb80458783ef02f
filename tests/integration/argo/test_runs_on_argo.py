"""The whole system on real Argo: WorkflowRun → controller → gateway → agent → the plane, where
Argo's workflow-controller runs the steps on kwok's node and the run's status follows it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.argo.conftest import GIT_CREDENTIALS, ArgoPlane
from tests.integration.argo.workflows import decoded, step
from tests.integration.harness import apply, eventually, unique
from tests.integration.runs.workflows import condition, definition, get, run
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
PARAMS = {"repository": {"url": "https://git.example/app"}}


def _argo_template(*steps: dict[str, Any]) -> dict[str, Any]:
    """A runTemplate whose steps run one after the other."""
    sequence = {
        "name": "main",
        "steps": [[{"name": s["name"], "template": s["name"]}] for s in steps],
    }
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "ignored"},
        "spec": {"entrypoint": "main", "templates": [sequence, *steps]},
    }


def _start(
    control_plane: ApiServer,
    plane: str,
    namespace: str,
    *steps: dict[str, Any],
    params: dict[str, Any] = PARAMS,
) -> str:
    workflow = unique("argo-build")
    apply(
        control_plane,
        definition(
            "ClusterWorkflow",
            workflow,
            plane=("ClusterWorkflowPlane", plane),
            run_template=_argo_template(*steps),
        ),
    )
    name = unique("run")
    apply(control_plane, run(namespace, name, workflow, params))
    return name


async def _completed(control_plane: ApiServer, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = await eventually(
        lambda: (
            (o := get(control_plane, "workflowrun", name, namespace))
            and condition(o, "WorkflowCompleted").get("status") == "True"
            and o
        ),
        timeout=60,
        interval=0.3,
    )
    return result


async def test_a_run_on_real_argo_reaches_succeeded_with_its_tasks_in_order(
    control_plane: ApiServer, argo_cluster_plane: str, controller: None, namespace: str
) -> None:
    name = _start(
        control_plane,
        argo_cluster_plane,
        namespace,
        step("checkout", "git", "clone", "https://git.example/app"),
        step("build", "sh", "-c", "make"),
    )

    obj = await _completed(control_plane, namespace, name)

    assert condition(obj, "WorkflowSucceeded")["status"] == "True"
    assert condition(obj, "WorkflowFailed").get("status") != "True"
    status = obj["status"]
    assert status["startedAt"] <= status["completedAt"]
    tasks = status["tasks"]
    assert [(t["name"], t["phase"]) for t in tasks] == [
        ("checkout", "Succeeded"),
        ("build", "Succeeded"),
    ]
    assert tasks[0]["completedAt"] <= tasks[1]["startedAt"]


async def test_a_failing_step_on_real_argo_fails_the_run_with_argos_message(
    control_plane: ApiServer, argo_cluster_plane: str, controller: None, namespace: str
) -> None:
    name = _start(
        control_plane,
        argo_cluster_plane,
        namespace,
        step("checkout", "true"),
        step("build", "sh", "-c", "exit 2"),
    )

    obj = await _completed(control_plane, namespace, name)

    assert condition(obj, "WorkflowFailed")["status"] == "True"
    assert condition(obj, "WorkflowSucceeded").get("status") != "True"
    tasks = {t["name"]: t for t in obj["status"]["tasks"]}
    assert tasks["checkout"]["phase"] == "Succeeded"
    assert tasks["build"]["phase"] == "Failed"
    assert "exit code 2" in tasks["build"]["message"]


async def test_deleting_a_running_run_removes_its_argo_workflow_from_the_plane(
    control_plane: ApiServer,
    argo_plane: ArgoPlane,
    argo_cluster_plane: str,
    controller: None,
    namespace: str,
) -> None:
    name = _start(control_plane, argo_cluster_plane, namespace, step("build", "sleep", "600"))
    target = f"workflows-{namespace}"

    def argo_phase() -> str:
        return argo_plane.kubectl(
            "get",
            "workflows.argoproj.io",
            name,
            "-n",
            target,
            "--ignore-not-found",
            "-o",
            "jsonpath={.status.phase}",
        )

    await eventually(lambda: argo_phase() == "Running", timeout=60, interval=0.3)
    await eventually(
        lambda: (
            condition(get(control_plane, "workflowrun", name, namespace), "WorkflowRunning").get(
                "status"
            )
            == "True"
        ),
        timeout=30,
    )

    # Not waiting in kubectl: the gateway and agent that carry the cleanup run in this loop.
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "delete",
        "workflowrun",
        name,
        "-n",
        namespace,
        "--wait=false",
    )

    # The run's finalizer deletes the Argo Workflow on the plane before the run goes.
    await eventually(lambda: not get(control_plane, "workflowrun", name, namespace), timeout=30)
    assert argo_phase() == ""
    assert not argo_plane.kubectl("get", "workflows.argoproj.io", "-n", target, "-o", "name")


async def test_a_runs_git_credentials_come_from_the_planes_secret_store(
    control_plane: ApiServer,
    argo_plane: ArgoPlane,
    argo_cluster_plane: str,
    controller: None,
    namespace: str,
) -> None:
    """The definition's ExternalSecret, created by the run, synced by External Secrets'
    controller from the plane's (fake) store into the Secret the steps mount."""
    params = {"repository": {"url": "https://git.example/app", "secretRef": "git/app"}}
    name = _start(
        control_plane, argo_cluster_plane, namespace, step("checkout", "true"), params=params
    )

    obj = await _completed(control_plane, namespace, name)

    assert condition(obj, "WorkflowSucceeded")["status"] == "True"
    [resource] = obj["status"]["resources"]
    assert (resource["kind"], resource["name"]) == ("ExternalSecret", f"{name}-git")
    secret = await eventually(
        lambda: get(argo_plane.server, "secret", f"{name}-git", f"workflows-{namespace}"),
        timeout=30,
    )
    assert decoded(secret) == GIT_CREDENTIALS


async def test_a_secret_the_store_cannot_give_shows_on_the_run_while_it_runs(
    control_plane: ApiServer,
    argo_plane: ArgoPlane,
    argo_cluster_plane: str,
    controller: None,
    namespace: str,
) -> None:
    """A secretRef the plane's store does not hold: External Secrets' controller says
    SecretSyncedError, and the run says so (ResourcesReady=False) while its step still runs,
    instead of the failure surfacing only as a step that cannot find its Secret."""
    params = {"repository": {"url": "https://git.example/app", "secretRef": "git/nope"}}
    name = _start(
        control_plane,
        argo_cluster_plane,
        namespace,
        step("checkout", "sh", "-c", "sleep 30"),
        params=params,
    )
    obj = await eventually(
        lambda: (
            (o := get(control_plane, "workflowrun", name, namespace))
            and condition(o, "ResourcesReady").get("status") == "False"
            and o
        ),
        timeout=60,
        interval=0.5,
    )
    ready = condition(obj, "ResourcesReady")
    assert ready["reason"] == "SecretSyncedError", ready
    assert ready["message"].startswith("git-secret: SecretSyncedError"), ready
    assert condition(obj, "WorkflowCompleted").get("status") != "True"
