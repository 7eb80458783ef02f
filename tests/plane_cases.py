"""Plane manifests with the verdict the API must give: the shared corpus for the models
(unit tests) and the real API server (integration tests), proving both agree."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

INLINE_CA = {"value": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}


def workflow_plane(name: str = "wp-case", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"clusterAgent": {"clientCA": copy.deepcopy(INLINE_CA)}}
    body.update(spec)
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": name},
        "spec": body,
    }


def cluster_workflow_plane(name: str = "cwp-case", **spec: Any) -> dict[str, Any]:
    manifest = workflow_plane(name, **spec)
    manifest["kind"] = "ClusterWorkflowPlane"
    manifest["spec"].setdefault("planeID", "shared")
    return manifest


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    field: str | None  # None: valid; else the field the error must name


def _without(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    manifest["spec"].pop(key)
    return manifest


SKR = {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}

CASES = [
    Case("minimal", workflow_plane(), None),
    Case("plane-id-63", workflow_plane(planeID="a" * 63), None),
    Case("secret-key-ref", workflow_plane(clusterAgent={"clientCA": SKR}), None),
    Case("observability-default-kind", workflow_plane(observabilityPlaneRef={"name": "obs"}), None),
    Case(
        "cluster-observability",
        workflow_plane(observabilityPlaneRef={"kind": "ClusterObservabilityPlane", "name": "obs"}),
        None,
    ),
    Case("cwp-minimal", cluster_workflow_plane(), None),
    Case(
        "cwp-secret-with-namespace",
        cluster_workflow_plane(
            clusterAgent={
                "clientCA": {"secretKeyRef": {"name": "ca", "namespace": "ops", "key": "ca.crt"}}
            }
        ),
        None,
    ),
    Case(
        "cwp-cluster-observability",
        cluster_workflow_plane(
            observabilityPlaneRef={"kind": "ClusterObservabilityPlane", "name": "obs"}
        ),
        None,
    ),
    Case("plane-id-64", workflow_plane(planeID="a" * 64), "spec.planeID"),
    Case("plane-id-upper", workflow_plane(planeID="Builder"), "spec.planeID"),
    Case("plane-id-leading-dash", workflow_plane(planeID="-builder"), "spec.planeID"),
    Case("plane-id-trailing-dash", workflow_plane(planeID="builder-"), "spec.planeID"),
    Case(
        "client-ca-both",
        workflow_plane(clusterAgent={"clientCA": {**INLINE_CA, **SKR}}),
        "spec.clusterAgent.clientCA",
    ),
    Case(
        "client-ca-empty-value-and-secret",  # OpenChoreo: an empty value is unset (omitempty)
        workflow_plane(clusterAgent={"clientCA": {"value": "", **SKR}}),
        None,
    ),
    Case(
        "secret-ref-empty-namespace",  # OpenChoreo: the CR's namespace, as when absent
        workflow_plane(
            clusterAgent={"clientCA": {"secretKeyRef": {"name": "ca", "namespace": "", "key": "k"}}}
        ),
        None,
    ),
    Case(
        "client-ca-empty-value-alone",
        workflow_plane(clusterAgent={"clientCA": {"value": ""}}),
        "spec.clusterAgent.clientCA",
    ),
    Case(
        "cwp-secret-empty-namespace",
        cluster_workflow_plane(
            clusterAgent={"clientCA": {"secretKeyRef": {"name": "ca", "namespace": "", "key": "k"}}}
        ),
        "spec.clusterAgent.clientCA",
    ),
    Case(
        "client-ca-neither",
        workflow_plane(clusterAgent={"clientCA": {}}),
        "spec.clusterAgent.clientCA",
    ),
    Case("no-cluster-agent", _without(workflow_plane(), "clusterAgent"), "spec.clusterAgent"),
    Case(
        "secret-store-without-name", workflow_plane(secretStoreRef={}), "spec.secretStoreRef.name"
    ),
    Case(
        "observability-unknown-kind",
        workflow_plane(observabilityPlaneRef={"kind": "Prometheus", "name": "obs"}),
        "spec.observabilityPlaneRef.kind",
    ),
    Case("unknown-spec-field", workflow_plane(planeId="typo"), "spec.planeId"),
    Case("cwp-without-plane-id", _without(cluster_workflow_plane(), "planeID"), "spec.planeID"),
    Case(
        "cwp-references-observability-plane",
        cluster_workflow_plane(observabilityPlaneRef={"kind": "ObservabilityPlane", "name": "obs"}),
        "spec.observabilityPlaneRef",
    ),
    Case(
        "cwp-secret-without-namespace",
        cluster_workflow_plane(clusterAgent={"clientCA": SKR}),
        "spec.clusterAgent.clientCA",
    ),
]
