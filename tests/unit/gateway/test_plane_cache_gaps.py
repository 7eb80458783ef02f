"""What the gateway's watches miss while broken: a plane CR or its CA Secret deleted in a
gap sends no event. The CR's re-list forgets a CR it no longer lists, and the Secrets
watch reads its kept Secrets again after a gap; before, both stayed cached and their CA went
on admitting agents (and the agents admitted went on serving)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from tests.unit.gateway.test_connections import FakeSocket
from workflowplane.api import WorkflowPlaneResource
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.pki import generate_ca, issue_certificate

pytestmark = pytest.mark.looptime
CA = generate_ca("agent-ca")


def plane(ca: dict[str, Any]) -> SimpleNamespace:
    data = {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": "wp", "namespace": "tenant-a", "uid": "u1"},
        "spec": {"planeID": "p", "clusterAgent": {"clientCA": ca}},
    }
    return SimpleNamespace(to_dict=lambda: data)


class Listing:
    def __init__(self, items: list[Any]) -> None:
        self.items, self.resourceVersion = items, "7"

    async def __aiter__(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item


class GappyCluster:
    """The watch of ``broken`` (WorkflowPlane or Secret) breaks at once (a gap), once, then
    stays open, as every other does; ``planes`` is what each list of WorkflowPlanes answers
    now, ``secret`` the CA Secret's data (None: gone)."""

    def __init__(self, planes: list[Any], secret: dict[str, str] | None, broken: str) -> None:
        self.planes, self.secret, self.broken = planes, secret, broken
        self.secret_events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def list(self, resource: Any, **_: Any) -> Listing:
        return Listing(self.planes if resource is WorkflowPlaneResource else [])

    async def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
        if resource.__name__ == self.broken:
            self.broken = ""
            raise OSError("connection reset")
        if resource.__name__ == "Secret":
            while True:
                yield await self.secret_events.get()
        await asyncio.Event().wait()
        yield

    async def get(self, resource: Any, name: str, namespace: str) -> Any:
        if self.secret is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return SimpleNamespace(data=self.secret, metadata=SimpleNamespace(annotations=None))


def secret_backed(broken: str) -> GappyCluster:
    """A CR whose CA is ``CA``, in Secret ``agent-ca``; the watch of ``broken`` breaks once."""
    ref = {"secretKeyRef": {"name": "agent-ca", "key": "ca.crt"}}
    return GappyCluster([plane(ref)], ca_data(CA), broken)


async def started(cluster: GappyCluster) -> tuple[PlaneCache, ConnectionManager]:
    planes = PlaneCache(cluster)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes.start()
    await asyncio.sleep(0.5)  # listed (and the CA Secret read); one watch broken
    return planes, manager


async def admitting(cluster: GappyCluster) -> tuple[PlaneCache, ConnectionManager, Any]:
    """Started, and a leaf of ``CA`` admitted for the CR: the state each gap begins from."""
    planes, manager = await started(cluster)
    leaf = issue_certificate(CA, "agent").certificate
    assert manager.admit("p", leaf).granted == {"tenant-a/wp"}
    return planes, manager, leaf


async def test_a_cr_deleted_in_a_watch_gap_is_forgotten_at_the_re_list() -> None:
    cluster = GappyCluster([plane({"value": CA.cert_pem.decode()})], None, "WorkflowPlane")
    planes, manager, leaf = await admitting(cluster)
    cluster.planes = []  # deleted while the watch was broken
    await asyncio.sleep(5)  # the watch is listed again
    assert "tenant-a/wp" not in planes.entries
    assert not manager.admit("p", leaf).granted
    await planes.close()


async def test_a_ca_secret_deleted_in_a_watch_gap_admits_nobody_after_it() -> None:
    cluster = secret_backed(broken="Secret")
    planes, manager, leaf = await admitting(cluster)
    cluster.secret = None  # deleted while the watch was broken
    await asyncio.sleep(5)  # the watch starts again
    assert not manager.admit("p", leaf).granted
    await planes.close()


async def test_a_ca_secret_rotated_under_the_watch_stops_its_old_cas_agents() -> None:
    cluster = secret_backed(broken="")
    planes, manager = await started(cluster)
    leaf = issue_certificate(CA, "agent").certificate
    admission = manager.admit("p", leaf)
    conn = AgentConnection("workflowplane", "p", FakeSocket(), leaf, set(admission.granted))
    manager.connect(conn)
    assert manager.serves("workflowplane", "p", "tenant-a/wp")
    rotated = {"ca.crt": base64.b64encode(generate_ca("rotated").cert_pem).decode()}
    metadata = SimpleNamespace(namespace="tenant-a", name="agent-ca", annotations=None)
    cluster.secret_events.put_nowait(("MODIFIED", SimpleNamespace(metadata=metadata, data=rotated)))
    await asyncio.sleep(1)
    assert not manager.serves("workflowplane", "p", "tenant-a/wp")
    await planes.close()


class SecretStore:
    """Answers GETs of Secrets from ``data`` by name (absent: 404); ``hold`` keeps them
    waiting until set."""

    def __init__(self, data: dict[str, dict[str, str]]) -> None:
        self.data, self.hold = data, asyncio.Event()
        self.hold.set()

    async def get(self, resource: Any, name: str, namespace: str) -> Any:
        await self.hold.wait()
        if name not in self.data:
            raise ApiError(status=Status(code=404, message="not found"))
        return SimpleNamespace(data=self.data[name], metadata=SimpleNamespace(annotations=None))


def in_secret(name: str, uid: str = "u1") -> dict[str, Any]:
    found: dict[str, Any] = plane({"secretKeyRef": {"name": name, "key": "ca.crt"}}).to_dict()
    found["metadata"]["uid"] = uid
    return found


def ca_data(ca: Any) -> dict[str, str]:
    return {"ca.crt": base64.b64encode(ca.cert_pem).decode()}


async def test_a_secret_no_cr_names_is_not_kept_to_be_trusted_stale_later() -> None:
    rotated = generate_ca("rotated")
    store = SecretStore({"s": ca_data(CA), "t": ca_data(rotated)})
    planes = PlaneCache(store)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    leaf = issue_certificate(CA, "agent").certificate
    planes._apply_plane("ADDED", in_secret("s"), WorkflowPlaneResource)
    await asyncio.sleep(1)  # read
    assert manager.admit("p", leaf).granted == {"tenant-a/wp"}
    planes._apply_plane("MODIFIED", in_secret("t"), WorkflowPlaneResource)  # moved to t
    store.data["s"] = ca_data(rotated)  # s rotated: no event reaches a Secret nobody names
    planes._apply_plane("MODIFIED", in_secret("s"), WorkflowPlaneResource)  # back to s
    await asyncio.sleep(1)
    assert not manager.admit("p", leaf).granted


async def test_a_cr_replaced_by_one_whose_ca_is_not_read_yet_is_served_by_nobody_meanwhile() -> (
    None
):
    store = SecretStore({})
    store.hold.clear()  # its Secret's read takes long
    planes = PlaneCache(store)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane(
        "ADDED", plane({"value": CA.cert_pem.decode()}).to_dict(), WorkflowPlaneResource
    )
    leaf = issue_certificate(CA, "agent").certificate
    admission = manager.admit("p", leaf)
    manager.connect(
        AgentConnection("workflowplane", "p", FakeSocket(), leaf, set(admission.granted))
    )
    planes._apply_plane("ADDED", in_secret("s", uid="u2"), WorkflowPlaneResource)
    assert not manager.serves("workflowplane", "p", "tenant-a/wp")
    store.hold.set()
    await planes.close()


async def test_a_secret_edit_that_leaves_its_ca_as_it_was_judges_nobody() -> None:
    same = (ca_data(CA), None)  # a label's edit, say: the same data
    assert await _judged_by_secret_events(same, same, same) == []


async def test_a_first_read_answered_late_keeps_the_newer_copy_the_watch_brought() -> None:
    rotated = generate_ca("rotated")
    store = SecretStore({"s": ca_data(CA)})
    store.hold.clear()  # the first read's answer, the old CA, comes late
    planes = PlaneCache(store)  # type: ignore[arg-type]
    manager = ConnectionManager(planes, GatewayMetrics())
    planes._apply_plane("ADDED", in_secret("s"), WorkflowPlaneResource)
    await asyncio.sleep(1)
    planes.put_secret("tenant-a", "s", ca_data(rotated))  # the watch: rotated meanwhile
    store.hold.set()
    await asyncio.sleep(1)
    assert not manager.admit("p", issue_certificate(CA, "agent").certificate).granted
    assert manager.admit("p", issue_certificate(rotated, "agent").certificate).granted
    await planes.close()


async def _judged_by_secret_events(
    *secrets: tuple[dict[str, str], dict[str, str] | None],
) -> list[str]:
    """The CRs judged again while the watch brings these versions of the CR's CA Secret
    (data, annotations), after its first read."""
    cluster = secret_backed(broken="")
    judged: list[str] = []
    planes = PlaneCache(cluster)  # type: ignore[arg-type]
    planes.on_judge_again(lambda key, plane_id: judged.append(key))
    planes.start()
    await asyncio.sleep(1)
    judged.clear()
    for data, notes in secrets:
        metadata = SimpleNamespace(namespace="tenant-a", name="agent-ca", annotations=notes)
        cluster.secret_events.put_nowait(
            ("MODIFIED", SimpleNamespace(metadata=metadata, data=data))
        )
    await asyncio.sleep(1)
    await planes.close()
    return judged


async def test_a_tenants_edits_that_leave_what_its_ca_admits_judge_nobody() -> None:
    """Each judgement walks the CR's plane's every connection on the shared loop: a tenant
    re-annotating its Secret, editing its other keys or respelling its PEM in a loop held
    every tenant's requests for a second per edit."""
    respelled = {"ca.crt": base64.b64encode(CA.cert_pem + b"\n\ncomment\n").decode()}
    judged = await _judged_by_secret_events(
        (ca_data(CA), {"note": "1"}),
        (ca_data(CA), {"note": "2"}),
        ({**ca_data(CA), "other": "eA=="}, None),
        (respelled, None),
    )
    assert judged == []


async def test_a_secret_edit_that_changes_its_ca_or_its_sharing_judges_its_crs() -> None:
    rotated = generate_ca("rotated")
    assert await _judged_by_secret_events((ca_data(rotated), None)) == ["tenant-a/wp"]
    shared = {"openchoreo.dev/client-ca-shared-with": "team-b"}
    assert await _judged_by_secret_events((ca_data(CA), shared)) == []  # own namespace: no say


async def test_an_inline_ca_respelled_judges_nobody() -> None:
    planes = PlaneCache(None)  # type: ignore[arg-type]
    judged: list[str] = []
    planes.on_judge_again(lambda key, plane_id: judged.append(key))
    planes._apply_plane(
        "ADDED", plane({"value": CA.cert_pem.decode()}).to_dict(), WorkflowPlaneResource
    )
    judged.clear()
    respelled = plane({"value": CA.cert_pem.decode() + "\n# rotated? no\n"}).to_dict()
    planes._apply_plane("MODIFIED", respelled, WorkflowPlaneResource)
    assert judged == []
    other = plane({"value": generate_ca("other").cert_pem.decode()}).to_dict()
    planes._apply_plane("MODIFIED", other, WorkflowPlaneResource)
    assert judged == ["tenant-a/wp"]
