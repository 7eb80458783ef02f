"""Manifests and plane look-ups shared by the runs tests."""

from __future__ import annotations

import json
from typing import Any

from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

LABELS = ("openchoreo.dev/workflowrun", "openchoreo.dev/workflowrun-namespace")
MANAGED = "openchoreo.dev/managed-by=workflowrun-controller"

BUILD_RUN_TEMPLATE: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"name": "ignored"},
    "spec": {
        "entrypoint": "build",
        "arguments": {
            "parameters": [
                {"name": "repo", "value": "${parameters.repository.url}"},
                {"name": "revision", "value": "${parameters.repository.revision}"},
                {"name": "image", "value": "${parameters.image}:${metadata.workflowRunName}"},
                {"name": "plane", "value": "${workflowplane.planeID}"},
            ]
        },
        "templates": [{"name": "build", "container": {"image": "alpine", "command": ["true"]}}],
    },
}
GIT_SECRET = {
    "id": "git-secret",
    "includeWhen": "${parameters.repository.secretRef != ''}",
    "template": {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": "${metadata.workflowRunName}-git"},
        "spec": {
            "secretStoreRef": {
                "name": "${workflowplane.secretStore}",
                "kind": "ClusterSecretStore",
            },
            "target": {"name": "${metadata.workflowRunName}-git"},
            "dataFrom": [{"extract": {"key": "${parameters.repository.secretRef}"}}],
        },
    },
}
PARAMETERS = {
    "type": "object",
    "required": ["repository"],
    "properties": {
        "repository": {
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string"},
                "revision": {"type": "string", "default": "main"},
                "secretRef": {"type": "string", "default": ""},
            },
        },
        "image": {"type": "string", "default": "registry.local/app"},
    },
}


def definition(
    kind: str,
    name: str,
    namespace: str | None = None,
    *,
    plane: tuple[str, str] | None = None,
    run_template: dict[str, Any] | None = None,
    ttl: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "parameters": PARAMETERS,
        "resources": [GIT_SECRET],
        "runTemplate": run_template or BUILD_RUN_TEMPLATE,
    }
    if plane:
        spec["workflowPlaneRef"] = {"kind": plane[0], "name": plane[1]}
    if ttl:
        spec["ttlAfterCompletion"] = ttl
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


def run(
    namespace: str,
    name: str,
    workflow: str,
    parameters: dict[str, Any],
    *,
    kind: str = "ClusterWorkflow",
    ttl: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"workflow": {"kind": kind, "name": workflow, "parameters": parameters}}
    if ttl:
        spec["ttlAfterCompletion"] = ttl
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def get(server: ApiServer, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    extra = ["-n", namespace] if namespace else []
    out = kubectl(
        server.kubeconfig, server.context, "get", kind, name, *extra, "-o", "json", check=False
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


def managed(server: ApiServer, kinds: str, namespace: str) -> list[dict[str, Any]]:
    out = kubectl(
        server.kubeconfig,
        server.context,
        "get",
        kinds,
        "-n",
        namespace,
        "-l",
        MANAGED,
        "-o",
        "json",
    )
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for found in (obj.get("status") or {}).get("conditions", []):
        if found["type"] == type_:
            return dict(found)
    return {}


def play_argo(server: ApiServer, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Stand in for Argo's controller: write the Workflow's status as Argo would."""
    kubectl(
        server.kubeconfig,
        server.context,
        "patch",
        "workflows.argoproj.io",
        name,
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        json.dumps({"status": status}),
    )


def pod_node(
    node_id: str, name: str, phase: str, started: str, finished: str | None = None
) -> dict[str, Any]:
    node = {
        "id": node_id,
        "name": f"wf.{name}",
        "displayName": name,
        "type": "Pod",
        "phase": phase,
        "startedAt": started,
    }
    if finished:
        node["finishedAt"] = finished
    return node
