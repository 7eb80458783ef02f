"""A plane CR deleted, or made again under its name with another CA, as the gateway's own
watch sees it: the agents its old CA admitted stop serving that name at once. Only the
controller's notify did this before, and a notify that did not reach this replica (another
answered) left the old CA's agent serving the new CR: its runs, its Secrets."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.gateway.test_connections import WP, FakeSocket
from workflowplane.api import WorkflowPlaneResource
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

OLD_CA, NEW_CA = generate_ca("old-agent-ca"), generate_ca("new-agent-ca")
KEY = "tenant-a/wp"


def manifest(uid: str, ca: KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": "wp", "namespace": "tenant-a", "uid": uid},
        "spec": {"planeID": "p", "clusterAgent": {"clientCA": {"value": ca.cert_pem.decode()}}},
    }


def joined(manager: ConnectionManager, ca: KeyPair) -> AgentConnection:
    leaf = issue_certificate(ca, "agent").certificate
    admission = manager.admit("p", leaf)
    conn = AgentConnection(WP, "p", FakeSocket(), leaf, set(admission.granted))
    manager.connect(conn)
    return conn


async def test_a_deleted_crs_agents_stop_serving_its_name() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    conn = joined(manager, OLD_CA)
    assert manager.serves(WP, "p", KEY)
    planes._apply_plane("DELETED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    assert not manager.serves(WP, "p", KEY)
    await asyncio.sleep(0.1)
    assert conn.ws.closed  # authorized for nothing else


async def test_a_cr_made_again_with_another_ca_is_served_only_by_its_agents() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    old = joined(manager, OLD_CA)
    planes._apply_plane("MODIFIED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    assert manager.pick(WP, "p", KEY) is old  # the same CR changed: nothing judged again
    planes._apply_plane("ADDED", manifest("u2", NEW_CA), WorkflowPlaneResource)  # a gap hid
    assert manager.authorized(WP, "p", KEY) == []  # the deletion; the new CA admits it not
    new = joined(manager, NEW_CA)
    assert manager.authorized(WP, "p", KEY) == [new]


async def test_a_late_deletion_of_the_old_cr_leaves_the_new_ones_agents() -> None:
    """The controller's notify read the new CR (and judged its agents) before the watch
    brought the old one's deletion: that deletion is the old CR's, not the name's."""
    planes = PlaneCache(None)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    planes._apply_plane("ADDED", manifest("u2", NEW_CA), WorkflowPlaneResource)  # notify's read
    new = joined(manager, NEW_CA)
    planes._apply_plane("DELETED", manifest("u1", OLD_CA), WorkflowPlaneResource)  # late
    assert manager.authorized(WP, "p", KEY) == [new]
    assert KEY in planes.entries


async def test_a_cr_whose_ca_changes_under_the_watch_is_served_by_its_new_cas_agents() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    joined(manager, OLD_CA)
    planes._apply_plane("MODIFIED", manifest("u1", NEW_CA), WorkflowPlaneResource)  # rotated
    assert manager.authorized(WP, "p", KEY) == []
