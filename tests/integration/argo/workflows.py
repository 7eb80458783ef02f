"""Argo Workflow manifests and look-ups for the real-Argo tests.

How a step ends under kwok is decided by its ``main`` container's command
(``src/workflowplane/testenv/kwok_pods.yaml``): ``[sh, -c, "exit N"]`` fails with exit code N,
``... sleep N`` runs N seconds, anything else succeeds after about a second.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.integration.argo.conftest import ArgoPlane
from tests.integration.harness import eventually, unique

IMAGE = "alpine:3.20"
FINISHED = ("Succeeded", "Failed", "Error")


def step(name: str, *command: str, **extra: Any) -> dict[str, Any]:
    """A container template whose command decides how the simulated step ends."""
    return {"name": name, "container": {"image": IMAGE, "command": list(command)}, **extra}


def workflow(name: str, templates: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": templates[0]["name"],
            "serviceAccountName": "workflow-sa",
            "templates": templates,
            **spec,
        },
    }


def namespace(plane: ArgoPlane) -> str:
    """A fresh namespace with the service account runs use."""
    name = unique("argo")
    plane.kubectl("create", "namespace", name)
    plane.kubectl("create", "serviceaccount", "workflow-sa", "-n", name)
    return name


def submit(plane: ArgoPlane, ns: str, manifest: dict[str, Any]) -> str:
    plane.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(manifest))
    return str(manifest["metadata"]["name"])


def get(plane: ArgoPlane, kind: str, name: str, ns: str) -> dict[str, Any]:
    out = plane.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(out) if out else {}


async def finished(plane: ArgoPlane, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:  # noqa: ASYNC109
    """The Workflow once Argo has given it a final phase."""
    result: dict[str, Any] = await eventually(
        lambda: (
            (wf := get(plane, "workflows.argoproj.io", name, ns))
            and (wf.get("status") or {}).get("phase") in FINISHED
            and wf
        ),
        timeout=timeout,
        interval=0.3,
    )
    return result


def pod_nodes(wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Argo's Pod nodes by display name (retried attempts are named ``step(0)``, ``step(1)``)."""
    nodes = (wf.get("status") or {}).get("nodes") or {}
    return {n["displayName"]: n for n in nodes.values() if n["type"] == "Pod"}


def pods(plane: ArgoPlane, ns: str, name: str) -> list[dict[str, Any]]:
    out = plane.kubectl(
        "get", "pods", "-n", ns, "-l", f"workflows.argoproj.io/workflow={name}", "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
