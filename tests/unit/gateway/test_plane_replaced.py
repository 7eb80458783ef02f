"""A plane CR deleted, or made again under its name with another CA, as the gateway's own
watch sees it: the agents its old CA admitted stop serving that name at once. Only the
controller's notify did this before, and a notify that did not reach this replica (another
answered) left the old CA's agent serving the new CR: its runs, its Secrets."""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from tests.unit.gateway.test_connections import WP, FakeSocket
from workflowplane.api import WorkflowPlaneResource
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.internal_api import InternalAPI
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

OLD_CA, NEW_CA = generate_ca("old-agent-ca"), generate_ca("new-agent-ca")
KEY = "tenant-a/wp"


def manifest(uid: str, ca: KeyPair, plane_id: str = "p") -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": "wp", "namespace": "tenant-a", "uid": uid},
        "spec": {
            "planeID": plane_id,
            "clusterAgent": {"clientCA": {"value": ca.cert_pem.decode()}},
        },
    }


def terminating(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["deletionTimestamp"] = "2026-11-29T06:00:00Z"
    return obj


def joined(manager: ConnectionManager, ca: KeyPair, plane_id: str = "p") -> AgentConnection:
    leaf = issue_certificate(ca, "agent").certificate
    admission = manager.admit(plane_id, leaf)
    conn = AgentConnection(WP, plane_id, FakeSocket(), leaf, set(admission.granted))
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


class _Answers:
    """The API server as a notify's fresh read finds the CR (or fails to)."""

    def __init__(self, found: dict[str, Any] | None = None, error: int = 0) -> None:
        self.found, self.error = found, error

    async def get(self, _resource: Any, _name: str, **_options: Any) -> Any:
        if self.error == -1:
            raise httpx2.ConnectError("connection refused")
        if self.error:
            raise ApiError(status=Status(code=self.error, message="API unavailable"))
        if self.found is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return SimpleNamespace(to_dict=lambda: copy.deepcopy(self.found))


class _Notify:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    async def json(self) -> dict[str, Any]:
        return self.payload


async def _deleted_notify(answers: _Answers) -> tuple[ConnectionManager, AgentConnection]:
    """The new CR's agent joined, then a late notify that the (old) CR was deleted."""
    planes = PlaneCache(answers)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u2", NEW_CA), WorkflowPlaneResource)  # the watch
    new = joined(manager, NEW_CA)
    body = {"planeType": WP, "planeID": "p", "event": "deleted"}
    body |= {"namespace": "tenant-a", "name": "wp"}
    answer = await InternalAPI(manager, planes).notify(_Notify(body))  # type: ignore[arg-type]
    assert answer.status == 200
    return manager, new


async def test_a_late_deleted_notify_leaves_the_cr_made_again_under_its_name() -> None:
    """Another replica answered the controller's notify; this one's came after its watch
    brought the new CR of that name. The read it makes finds the new CR: its agents stay."""
    manager, new = await _deleted_notify(_Answers(manifest("u2", NEW_CA)))
    assert manager.authorized(WP, "p", KEY) == [new]
    await asyncio.sleep(0)
    assert not new.ws.closed


@pytest.mark.parametrize(
    "answers",
    [
        _Answers(None),  # gone
        _Answers(terminating(manifest("u2", NEW_CA))),  # still there, its finalizer pending
        _Answers(error=503),  # cannot tell: revoked, as a deletion always was
        _Answers(error=-1),  # nor over a broken connection
    ],
    ids=["gone", "terminating", "unreadable", "unreachable"],
)
async def test_a_deleted_notify_revokes_the_cr_that_is_gone_or_going(answers: _Answers) -> None:
    manager, _new = await _deleted_notify(answers)
    assert manager.authorized(WP, "p", KEY) == []


async def test_a_late_deleted_notify_judges_a_namesake_of_another_plane_where_it_is() -> None:
    """The namesake made since names another planeID: its agents there keep it, and the
    deleted CR's planeID (the notify's) gets nothing of it."""
    planes = PlaneCache(_Answers(manifest("u2", NEW_CA, plane_id="q")))  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u2", NEW_CA, plane_id="q"), WorkflowPlaneResource)
    theirs = joined(manager, NEW_CA, plane_id="q")
    stray = AgentConnection(WP, "p", FakeSocket(), theirs.leaf, set())  # same CA, plane p
    manager.connect(stray)
    body = {"planeType": WP, "planeID": "p", "event": "deleted"}
    body |= {"namespace": "tenant-a", "name": "wp"}
    answer = await InternalAPI(manager, planes).notify(_Notify(body))  # type: ignore[arg-type]
    assert answer.status == 200
    assert manager.authorized(WP, "q", KEY) == [theirs]
    assert KEY not in stray.authorized


async def test_a_cr_being_deleted_is_not_granted_again_by_its_next_event() -> None:
    """The controller's notify (while its finalizer holds) revoked it; a later change of the
    terminating object (another finalizer released) must not bring it back."""
    planes = PlaneCache(None)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", manifest("u1", OLD_CA), WorkflowPlaneResource)
    conn = joined(manager, OLD_CA)
    planes._apply_plane("MODIFIED", terminating(manifest("u1", OLD_CA)), WorkflowPlaneResource)
    assert manager.authorized(WP, "p", KEY) == []
    assert KEY not in planes.entries
    assert not manager.admit("p", conn.leaf).granted  # nor to an agent coming back
