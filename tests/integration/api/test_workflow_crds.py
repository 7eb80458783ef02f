"""The workflow CRDs on a real API server: the sample applies, and what the spec makes
immutable or invalid is refused by the API server itself, with a message naming it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).resolve().parents[3] / "samples" / "workflows"


def _apply(server: ApiServer, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl(
        server.kubeconfig,
        server.context,
        "apply",
        "-f",
        "-",
        input=json.dumps(manifest),
        check=False,
    )


def _run(
    namespace: str, workflow: str, kind: str | None = None, ttl: str | None = None
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": workflow}
    if kind:
        ref["kind"] = kind
    spec: dict[str, Any] = {"workflow": ref}
    if ttl:
        spec["ttlAfterCompletion"] = ttl
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": "r", "namespace": namespace},
        "spec": spec,
    }


def _definition(
    kind: str, name: str, plane: dict[str, str] | None, namespace: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {"runTemplate": {"kind": "Workflow"}}
    if plane is not None:
        spec["workflowPlaneRef"] = plane
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


def test_the_sample_workflow_applies(control_plane: ApiServer, crds: Path) -> None:
    result = kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "apply",
        "--dry-run=server",
        "-f",
        str(SAMPLES / "docker-build.yaml"),
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_run_defaults_to_a_cluster_workflow_and_its_reference_is_immutable(
    control_plane: ApiServer, crds: Path, namespace: str
) -> None:
    assert _apply(control_plane, _run(namespace, "build")).returncode == 0
    created = json.loads(
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "get",
            "workflowrun",
            "r",
            "-n",
            namespace,
            "-o",
            "json",
        ).stdout
    )
    assert created["spec"]["workflow"]["kind"] == "ClusterWorkflow"
    renamed = _apply(control_plane, _run(namespace, "other"))
    assert renamed.returncode != 0 and "workflow kind and name are immutable" in renamed.stderr
    rekinded = _apply(control_plane, _run(namespace, "build", kind="Workflow"))
    assert rekinded.returncode != 0 and "workflow kind and name are immutable" in rekinded.stderr


def test_bad_ttls_are_refused(control_plane: ApiServer, crds: Path, namespace: str) -> None:
    for ttl in ("1 day", "12x", "1h30"):
        result = _apply(control_plane, _run(namespace, "build", ttl=ttl))
        assert result.returncode != 0 and "spec.ttlAfterCompletion" in result.stderr, ttl
    assert _apply(control_plane, _run(namespace, "build", ttl="1d12h")).returncode == 0


def test_a_cluster_workflow_may_only_reference_a_cluster_workflow_plane(
    control_plane: ApiServer, crds: Path
) -> None:
    refused = _apply(
        control_plane,
        _definition("ClusterWorkflow", "cw-bad", {"kind": "WorkflowPlane", "name": "x"}),
    )
    assert refused.returncode != 0
    assert "a ClusterWorkflow may only reference a ClusterWorkflowPlane" in refused.stderr


def test_a_workflows_plane_reference_is_immutable(
    control_plane: ApiServer, crds: Path, namespace: str
) -> None:
    plane = {"kind": "WorkflowPlane", "name": "a"}
    assert _apply(control_plane, _definition("Workflow", "wf", plane, namespace)).returncode == 0
    moved = _apply(
        control_plane,
        _definition("Workflow", "wf", {"kind": "WorkflowPlane", "name": "b"}, namespace),
    )
    assert moved.returncode != 0 and "workflowPlaneRef is immutable" in moved.stderr
    dropped = _apply(control_plane, _definition("Workflow", "wf", None, namespace))
    assert dropped.returncode != 0 and "workflowPlaneRef is immutable" in dropped.stderr
