"""The plane cache's CA rule for a WorkflowPlane naming another namespace's Secret: only with
that Secret's consent (annotation), and otherwise the same answer as a missing Secret."""

from __future__ import annotations

import base64

import pytest

from workflowplane.api import ClientCAError, SecretLocation
from workflowplane.api.constants import ANNOTATION_CLIENT_CA_SHARED_WITH
from workflowplane.gateway.connections import ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache, PlaneEntry
from workflowplane.pki import generate_ca, issue_certificate

CA = generate_ca("tenant-b-agent-ca")


def _reader(namespace: str, location: SecretLocation) -> PlaneEntry:
    return PlaneEntry(f"{namespace}/wp", "WorkflowPlane", namespace, "wp", "p", None, location)


def _message(planes: PlaneCache, entry: PlaneEntry) -> str:
    with pytest.raises(ClientCAError) as caught:
        planes.ca_of(entry)
    return caught.value.message


def test_another_namespaces_secret_needs_its_consent() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    foreign = SecretLocation("tenant-b", "agent-ca", "ca.crt", reader="tenant-a")
    entry = _reader("tenant-a", foreign)
    planes.upsert(entry)
    missing = _message(planes, entry)
    data = {"ca.crt": base64.b64encode(CA.cert_pem).decode()}
    planes.put_secret("tenant-b", "agent-ca", data)
    assert _message(planes, entry) == missing  # a tenant learns nothing about the Secret
    assert "not found or not shared with namespace tenant-a" in missing
    assert CA.cert_pem.strip() not in planes.all_cas()  # nor does it reach the TLS trust
    manager = ConnectionManager(planes, GatewayMetrics())
    leaf = issue_certificate(CA, "agent").certificate
    assert not manager.admit("p", leaf).granted
    planes.put_secret(
        "tenant-b", "agent-ca", data, {ANNOTATION_CLIENT_CA_SHARED_WITH: "tenant-c, tenant-a"}
    )
    assert planes.ca_of(entry) == CA.cert_pem
    assert manager.admit("p", leaf).granted == {"tenant-a/wp"}
    planes.put_secret("tenant-b", "agent-ca", data, {ANNOTATION_CLIENT_CA_SHARED_WITH: "*"})
    assert planes.ca_of(entry) == CA.cert_pem


def test_the_own_namespaces_secret_and_a_cluster_planes_need_no_annotation() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]
    data = {"ca.crt": base64.b64encode(CA.cert_pem).decode()}
    planes.put_secret("tenant-b", "agent-ca", data)
    own = _reader("tenant-b", SecretLocation("tenant-b", "agent-ca", "ca.crt", "tenant-b"))
    cluster = PlaneEntry(
        "/wp",
        "ClusterWorkflowPlane",
        None,
        "wp",
        "p",
        None,
        SecretLocation("tenant-b", "agent-ca", "ca.crt", None),
    )
    assert planes.ca_of(own) == planes.ca_of(cluster) == CA.cert_pem


def test_a_bundle_too_large_to_admit_anyone_stays_out_of_the_tls_trust() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    other = generate_ca("tenant-c-agent-ca")
    planes.upsert(PlaneEntry("a/wp", "WorkflowPlane", "a", "wp", "p", CA.cert_pem * 101, None))
    planes.upsert(PlaneEntry("c/wp", "WorkflowPlane", "c", "wp", "q", other.cert_pem, None))
    assert planes.all_cas() == other.cert_pem.strip() + b"\n"
