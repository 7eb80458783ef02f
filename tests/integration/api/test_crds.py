"""The CRDs on a real API server: examples apply, bad manifests are refused naming the field,
printer columns and categories work, and the status subresource separates spec from status."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.plane_cases import CASES, Case
from workflowplane.pki import generate_ca
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).resolve().parents[3] / "samples" / "reference"


@pytest.fixture(scope="module")
def reference_namespaces(control_plane: ApiServer, crds: Path) -> None:
    for name in ("my-org", "org1", "org2"):
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "create",
            "namespace",
            name,
            check=False,
        )


def _apply(
    server: ApiServer, manifest: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    extra = ["-n", namespace] if namespace else []
    return kubectl(
        server.kubeconfig, server.context, "apply", *extra, "-f", "-", input=manifest, check=False
    )


@pytest.mark.parametrize("example", sorted(p.name for p in REFERENCE.glob("*.yaml")))
def test_every_reference_example_applies_unchanged(
    control_plane: ApiServer, reference_namespaces: None, example: str
) -> None:
    result = _apply(control_plane, (REFERENCE / example).read_text())
    assert result.returncode == 0, result.stderr
    assert (
        "created" in result.stdout or "unchanged" in result.stdout or "configured" in result.stdout
    )


def test_option1_inline_ca_template_applies(
    control_plane: ApiServer, reference_namespaces: None
) -> None:
    """The reference page's Option 1 heredoc, with the shell substitution done as bash does."""
    ca = generate_ca("agent-ca").cert_pem.decode().strip()
    indented = "\n".join("        " + line for line in ca.splitlines())
    template = (REFERENCE / "option1-inline.yaml.tmpl").read_text()
    manifest = template.replace("$(echo \"$WP_CA_CERT\" | sed 's/^/        /')", indented)
    assert "WP_CA_CERT" not in manifest
    manifest = manifest.replace("name: my-workflowplane", "name: my-inline-workflowplane")
    result = _apply(control_plane, manifest)
    assert result.returncode == 0, result.stderr
    stored = json.loads(
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "get",
            "wp",
            "my-inline-workflowplane",
            "-n",
            "my-org",
            "-o",
            "json",
        ).stdout
    )
    assert stored["spec"]["clusterAgent"]["clientCA"]["value"].strip() == ca


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_api_server_verdicts_match_the_corpus(
    control_plane: ApiServer, crds: Path, namespace: str, case: Case
) -> None:
    manifest = yaml.safe_dump(case.manifest)
    is_cluster = case.manifest["kind"] == "ClusterWorkflowPlane"
    result = _apply(control_plane, manifest, None if is_cluster else namespace)
    if case.field is None:
        assert result.returncode == 0, result.stderr
        if is_cluster:
            kubectl(
                control_plane.kubeconfig,
                control_plane.context,
                "delete",
                "cwp",
                case.manifest["metadata"]["name"],
            )
        return
    assert result.returncode != 0, f"accepted an invalid manifest: {case.id}"
    assert case.field in result.stderr, result.stderr


def test_printer_columns_and_categories(
    control_plane: ApiServer, crds: Path, namespace: str
) -> None:
    wp = CASES[0].manifest
    cwp = {**CASES[5].manifest, "metadata": {"name": f"cols-{namespace}"}}
    assert _apply(control_plane, yaml.safe_dump(wp), namespace).returncode == 0
    assert _apply(control_plane, yaml.safe_dump(cwp)).returncode == 0
    table = kubectl(control_plane.kubeconfig, control_plane.context, "get", "wp,cwp", "-A").stdout
    header = re.sub(r"\s+", " ", table.splitlines()[0])
    for column in ("PLANE ID", "CONNECTED", "AGENTS", "READY", "AGE"):
        assert column in header
    planes = kubectl(
        control_plane.kubeconfig, control_plane.context, "get", "planes", "-A", "-o", "name"
    ).stdout
    assert "workflowplane.openchoreo.dev/wp-case" in planes
    assert f"clusterworkflowplane.openchoreo.dev/cols-{namespace}" in planes
    for short in ("wp", "wps", "cwp", "cwps"):
        kubectl(control_plane.kubeconfig, control_plane.context, "get", short, "-A")
    kubectl(control_plane.kubeconfig, control_plane.context, "delete", "cwp", f"cols-{namespace}")


def test_status_subresource_separates_spec_and_status(
    control_plane: ApiServer, crds: Path, namespace: str
) -> None:
    run: Callable[..., subprocess.CompletedProcess[str]] = lambda *a: kubectl(  # noqa: E731
        control_plane.kubeconfig, control_plane.context, *a, "-n", namespace
    )
    assert _apply(control_plane, yaml.safe_dump(CASES[0].manifest), namespace).returncode == 0
    status = {
        "status": {
            "observedGeneration": 1,
            "agentConnection": {"connected": True, "connectedAgents": 1},
        }
    }
    # A write to the main resource cannot set status ...
    run("patch", "wp", "wp-case", "--type=merge", "-p", json.dumps(status))
    after_spec_write = json.loads(run("get", "wp", "wp-case", "-o", "json").stdout)
    assert "status" not in after_spec_write or not after_spec_write["status"].get("agentConnection")
    # ... a write to the status subresource can, and it cannot change the spec.
    both = {**status, "spec": {"planeID": "changed"}}
    run("patch", "wp", "wp-case", "--subresource=status", "--type=merge", "-p", json.dumps(both))
    after_status_write = json.loads(run("get", "wp", "wp-case", "-o", "json").stdout)
    assert after_status_write["status"]["agentConnection"]["connectedAgents"] == 1
    assert "planeID" not in after_status_write["spec"]
    assert (
        after_status_write["metadata"]["generation"] == after_spec_write["metadata"]["generation"]
    )


def _plane_reading_secret_of(namespace: str, name: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": "WorkflowPlane",
            "metadata": {"name": name},
            "spec": {
                "clusterAgent": {
                    "clientCA": {
                        "secretKeyRef": {"name": "agent-ca", "namespace": namespace, "key": "c"}
                    }
                }
            },
        }
    )


def test_naming_another_namespaces_secret_warns_at_apply(
    control_plane: ApiServer, crds: Path, namespace: str
) -> None:
    """The shipped ValidatingAdmissionPolicy warns, naming the field and the consent annotation;
    the plane's own namespace gets no warning, nor does an empty one (OpenChoreo reads it as
    the plane's own). (The policy is live once the API server has
    loaded it, so the first applies may pass silently.)"""
    foreign = _plane_reading_secret_of("kube-system", "peeks")
    deadline = time.monotonic() + 30
    while "Warning" not in (result := _apply(control_plane, foreign, namespace)).stderr:
        assert time.monotonic() < deadline, "the policy never warned about a foreign Secret"
        time.sleep(0.5)
    assert result.returncode == 0, "a warning, not a refusal (the reference example does this)"
    assert "spec.clusterAgent.clientCA.secretKeyRef.namespace" in result.stderr
    assert "openchoreo.dev/client-ca-shared-with" in result.stderr
    own = _apply(control_plane, _plane_reading_secret_of(namespace, "own"), namespace)
    assert own.returncode == 0 and "Warning" not in own.stderr, own.stderr
    empty = _apply(control_plane, _plane_reading_secret_of("", "own-by-default"), namespace)
    assert empty.returncode == 0 and "Warning" not in empty.stderr, empty.stderr
