"""The whole system on real Argo: WorkflowRun → controller → gateway → agent → the plane, where
Argo's workflow-controller runs the steps on kwok's node and the run's status follows it."""

from __future__ import annotations

import json
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


WORKSPACE = {  # as the sample's: a claim Argo makes per Workflow, which it owns
    "metadata": {"name": "workspace"},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
}


def _argo_template(*steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A runTemplate whose steps run one after the other."""
    sequence = {
        "name": "main",
        "steps": [[{"name": s["name"], "template": s["name"]}] for s in steps],
    }
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "ignored"},
        "spec": {"entrypoint": "main", "templates": [sequence, *steps], **spec},
    }


def _start(
    control_plane: ApiServer,
    plane: str,
    namespace: str,
    *steps: dict[str, Any],
    params: dict[str, Any] = PARAMS,
    **spec: Any,
) -> str:
    workflow = unique("argo-build")
    apply(
        control_plane,
        definition(
            "ClusterWorkflow",
            workflow,
            plane=("ClusterWorkflowPlane", plane),
            run_template=_argo_template(*steps, **spec),
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
    build = step("build", "sleep", "600")
    build["container"]["volumeMounts"] = [{"name": "workspace", "mountPath": "/workspace"}]
    name = _start(
        control_plane, argo_cluster_plane, namespace, build, volumeClaimTemplates=[WORKSPACE]
    )
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

    _delete_run(control_plane, namespace, name)

    assert argo_plane.kubectl("get", "pvc", f"{name}-workspace", "-n", target, "-o", "name")

    # The run's finalizer deletes the Argo Workflow on the plane before the run goes; the
    # plane's garbage collector deletes its step pod and its claim (let go once no pod uses
    # it), then the Workflow (foreground).
    await eventually(lambda: not get(control_plane, "workflowrun", name, namespace), timeout=30)
    await eventually(lambda: not _pods_of(argo_plane, target, name), timeout=30)
    claims = ("get", "pvc", "-n", target, "-o", "name")
    await eventually(lambda: not argo_plane.kubectl(*claims), timeout=30)
    await eventually(lambda: argo_phase() == "", timeout=30)
    assert not argo_plane.kubectl("get", "workflows.argoproj.io", "-n", target, "-o", "name")


def _delete_run(control_plane: ApiServer, namespace: str, name: str) -> None:
    """Not waiting in kubectl: the gateway and agent that carry the cleanup run in this loop."""
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        *("delete", "workflowrun", name, "-n", namespace, "--wait=false"),
    )


def _pods_of(plane: ArgoPlane, namespace: str, workflow: str) -> list[dict[str, Any]]:
    """The step pods Argo made for the Argo Workflow of that name (of any UID)."""
    selector = f"workflows.argoproj.io/workflow={workflow}"
    found = plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    pods: list[dict[str, Any]] = json.loads(found)["items"]
    return pods


HOLD = "workflowplane.test/hold"


def _slow_dependent(plane: ArgoPlane, namespace: str, workflow: dict[str, Any]) -> str:
    """Something the Workflow owns that takes its time to go, as a real kubelet's pods can
    (kwok's pods go at once): a ConfigMap owned by it, held by a finalizer of the test's."""
    meta = workflow["metadata"]
    owner = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": True,
    }
    name = f"{meta['name']}-slow"
    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [owner],
            "finalizers": [HOLD],
        },
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(held))
    return name


async def test_a_run_made_again_under_a_deleted_runs_name_waits_for_the_old_pods_to_go(
    control_plane: ApiServer,
    argo_plane: ArgoPlane,
    argo_cluster_plane: str,
    controller: None,
    namespace: str,
) -> None:
    """Argo names a step's pod after its Workflow: the new run's Argo Workflow must not meet
    the old one's pods (it would take them for its own, and lose them to the garbage
    collector). Cleanup deletes the old Workflow in the foreground, so it stays while what it
    owns does, and the new run waits Pending until it has gone; then it runs on pods of its
    own. (Without the plane's garbage collector, the old Workflow would never go.)"""
    name = _start(control_plane, argo_cluster_plane, namespace, step("build", "true"))
    first = await _completed(control_plane, namespace, name)
    assert condition(first, "WorkflowSucceeded")["status"] == "True"
    target = f"workflows-{namespace}"
    assert _pods_of(argo_plane, target, name)
    old = json.loads(
        argo_plane.kubectl("get", "workflows.argoproj.io", name, "-n", target, "-o", "json")
    )
    slow = _slow_dependent(argo_plane, target, old)
    again = {k: v for k, v in first.items() if k != "status"}
    again["metadata"] = {"name": name, "namespace": namespace}

    _delete_run(control_plane, namespace, name)
    await eventually(lambda: not get(control_plane, "workflowrun", name, namespace), timeout=30)
    apply(control_plane, again)

    def waiting_message() -> str:
        obj = get(control_plane, "workflowrun", name, namespace)
        return str(condition(obj, "WorkflowCompleted").get("message", "")) if obj else ""

    await eventually(lambda: "is still being deleted" in waiting_message(), timeout=30)
    assert not (get(control_plane, "workflowrun", name, namespace)["status"].get("startedAt"))
    release = json.dumps({"metadata": {"finalizers": None}})
    argo_plane.kubectl("patch", "configmap", slow, "-n", target, "--type=merge", "-p", release)

    second = await _completed(control_plane, namespace, name)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert condition(second, "WorkflowSucceeded")["status"] == "True"
    argo = json.loads(
        argo_plane.kubectl("get", "workflows.argoproj.io", name, "-n", target, "-o", "json")
    )
    owners = {
        ref["uid"]
        for pod in _pods_of(argo_plane, target, name)
        for ref in pod["metadata"]["ownerReferences"]
    }
    assert owners == {argo["metadata"]["uid"]}  # the new Workflow's pods only


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
