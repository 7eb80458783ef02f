"""A plane CR whose new version does not decode must not keep admitting agents with the CA
of its previous version: the cache forgets it (fail closed), from the watch and from notify's
fresh read alike."""

from __future__ import annotations

from typing import Any

from workflowplane.api import WorkflowPlaneResource
from workflowplane.gateway import plane_cache
from workflowplane.gateway.connections import ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.pki import generate_ca, issue_certificate

CA = generate_ca("tenant-a-agent-ca")


def _manifest() -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": "wp", "namespace": "tenant-a"},
        "spec": {"planeID": "p", "clusterAgent": {"clientCA": {"value": CA.cert_pem.decode()}}},
    }


def _invalid() -> dict[str, Any]:
    data = _manifest()
    ca = data["spec"]["clusterAgent"]["clientCA"]
    ca["secretKeyRef"] = {"name": "agent-ca", "key": "ca.crt"}  # both set: invalid
    return data


def test_an_invalid_update_from_the_watch_stops_admitting_with_the_old_ca() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    manager = ConnectionManager(planes, GatewayMetrics())
    leaf = issue_certificate(CA, "agent").certificate
    planes._apply_plane("ADDED", _manifest(), WorkflowPlaneResource)
    assert manager.admit("p", leaf).granted == {"tenant-a/wp"}
    planes._apply_plane("MODIFIED", _invalid(), WorkflowPlaneResource)
    assert not manager.admit("p", leaf).granted
    assert "tenant-a/wp" not in planes.entries


async def test_an_invalid_cr_read_by_notify_stops_admitting_with_the_old_ca(
    monkeypatch: Any,
) -> None:

    async def get_dict(_client: Any, *_args: Any) -> dict[str, Any]:
        return _invalid()

    planes = PlaneCache(None)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    leaf = issue_certificate(CA, "agent").certificate
    planes._apply_plane("ADDED", _manifest(), WorkflowPlaneResource)
    assert manager.admit("p", leaf).granted == {"tenant-a/wp"}
    monkeypatch.setattr(plane_cache, "get_dict", get_dict)
    assert await planes.fresh_ca("tenant-a", "wp") is None
    assert not manager.admit("p", leaf).granted
