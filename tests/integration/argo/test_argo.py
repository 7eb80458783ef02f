"""Argo's real workflow-controller on a plane whose node is kwok: Workflows created directly in
the plane's API server run to their end with nobody patching any status. And External Secrets'
real controller syncing from its fake provider."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.integration.argo.conftest import GIT_CREDENTIALS, SECRET_STORE, ArgoPlane
from tests.integration.argo.workflows import (
    decoded,
    finished,
    get,
    namespace,
    pod_nodes,
    pods,
    step,
    submit,
    workflow,
)
from tests.integration.harness import eventually

pytestmark = pytest.mark.integration


def _at(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def test_a_workflow_runs_to_succeeded_with_its_pods_as_workflow_sa(
    argo_plane: ArgoPlane,
) -> None:
    ns = namespace(argo_plane)
    name = submit(argo_plane, ns, workflow("hello", [step("say", "sh", "-c", "echo hello")]))

    wf = await finished(argo_plane, ns, name)

    assert wf["status"]["phase"] == "Succeeded"
    node = pod_nodes(wf)["hello"]
    assert node["phase"] == "Succeeded"
    assert _at(node["startedAt"]) <= _at(node["finishedAt"])
    [pod] = pods(argo_plane, ns, name)
    assert pod["spec"]["serviceAccountName"] == "workflow-sa"
    assert pod["spec"]["nodeName"] == "kwok-node"
    log = argo_plane.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "main")
    assert "simulated node (kwok)" in log


async def test_a_failing_step_fails_the_workflow_with_its_exit_code(argo_plane: ArgoPlane) -> None:
    ns = namespace(argo_plane)
    name = submit(argo_plane, ns, workflow("broken", [step("fail", "sh", "-c", "exit 3")]))

    wf = await finished(argo_plane, ns, name)

    assert wf["status"]["phase"] == "Failed"
    node = pod_nodes(wf)["broken"]
    assert node["phase"] == "Failed"
    assert "exit code 3" in node["message"]


async def test_argo_refuses_an_invalid_workflow_with_its_reason(argo_plane: ArgoPlane) -> None:
    ns = namespace(argo_plane)
    manifest = workflow("invalid", [step("only", "true")])
    manifest["spec"]["entrypoint"] = "missing"
    name = submit(argo_plane, ns, manifest)

    wf = await finished(argo_plane, ns, name, timeout=30)

    assert wf["status"]["phase"] == "Failed"
    assert wf["status"]["message"] == "invalid spec: template name 'missing' undefined"
    assert not pods(argo_plane, ns, name)


async def test_a_dag_runs_independent_tasks_in_parallel_and_dependents_after(
    argo_plane: ArgoPlane,
) -> None:
    ns = namespace(argo_plane)
    tasks = [
        {"name": "checkout", "template": "work"},
        {"name": "lint", "template": "work", "depends": "checkout"},
        {"name": "test", "template": "work", "depends": "checkout"},
        {"name": "publish", "template": "work", "depends": "lint && test"},
    ]
    manifest = workflow("pipeline", [{"name": "pipeline", "dag": {"tasks": tasks}}])
    manifest["spec"]["templates"].append(step("work", "sh", "-c", "sleep 2"))
    name = submit(argo_plane, ns, manifest)

    wf = await finished(argo_plane, ns, name, timeout=90)

    assert wf["status"]["phase"] == "Succeeded"
    nodes = pod_nodes(wf)
    start = {n: _at(nodes[n]["startedAt"]) for n in nodes}
    end = {n: _at(nodes[n]["finishedAt"]) for n in nodes}
    assert sorted(nodes) == ["checkout", "lint", "publish", "test"]
    for task in ("lint", "test"):
        assert end["checkout"] <= start[task]
        assert end[task] <= start["publish"]
    # lint and test ran at the same time: each started before the other ended.
    assert start["lint"] < end["test"]
    assert start["test"] < end["lint"]


async def test_a_retried_step_succeeds_on_its_third_attempt(argo_plane: ArgoPlane) -> None:
    ns = namespace(argo_plane)
    # {{retries}} is the attempt number: attempts 0 and 1 run `exit 1`, attempt 2 `true`.
    flaky = step(
        "flaky",
        "sh",
        "-c",
        "{{=asInt(retries) < 2 ? 'exit 1' : 'true'}}",
        retryStrategy={"limit": "3", "retryPolicy": "Always"},
    )
    name = submit(argo_plane, ns, workflow("retried", [flaky]))

    wf = await finished(argo_plane, ns, name, timeout=90)

    assert wf["status"]["phase"] == "Succeeded"
    attempts = pod_nodes(wf)
    assert [attempts[f"retried({i})"]["phase"] for i in range(3)] == [
        "Failed",
        "Failed",
        "Succeeded",
    ]
    assert len(pods(argo_plane, ns, name)) == 3


async def test_an_external_secret_is_synced_from_the_fake_store(argo_plane: ArgoPlane) -> None:
    ns = namespace(argo_plane)
    external_secret = {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": "git"},
        "spec": {
            "secretStoreRef": {"kind": "ClusterSecretStore", "name": SECRET_STORE},
            "target": {"name": "git-credentials"},
            "dataFrom": [{"extract": {"key": "git/app"}}],
        },
    }
    submit(argo_plane, ns, external_secret)

    secret = await eventually(lambda: get(argo_plane, "secret", "git-credentials", ns), timeout=30)

    assert decoded(secret) == GIT_CREDENTIALS
