"""What a tenant's spec or the gateway's answers can make a plane pass do: nothing to another
tenant's CR, no status the CRD refuses, no status that changes on every pass."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.unit.controller.test_plane_reconciler import (
    REF,
    FakeGateway,
    FakeKube,
    reconciler,
    workflow_plane,
)
from workflowplane.api import FINALIZERS, WORKFLOW_PLANE
from workflowplane.api.conditions import find_condition
from workflowplane.controller.directory import PlaneRef
from workflowplane.controller.events import EventRecorder
from workflowplane.controller.plane_handlers import PlanesController
from workflowplane.controller.plane_reconciler import PlaneReconciler
from workflowplane.controller.status import agent_observation, next_agent_connection
from workflowplane.kits.clock import rfc3339
from workflowplane.kits.errors import PermanentError, TransientError
from workflowplane.protocol.gateway_client import ProxyResponse


class TunnelGateway(FakeGateway):
    """Connected; every request through the tunnel is recorded and answered 200."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def proxy(self, method: str, *, path: str, **_: Any) -> ProxyResponse:
        self.paths.append(path)
        return ProxyResponse(200, {}, b"{}")


def condition(kube: FakeKube, type_: str) -> dict[str, Any]:
    assert kube.plane is not None
    return find_condition(kube.plane["status"]["conditions"], type_) or {}


@pytest.mark.parametrize(
    "name",
    [
        "../../../../../../victim/theirs/k8s/api/v1/namespaces/kube-system/secrets/token",
        "store?watch=true",
        "..",
    ],
    ids=["traversal-to-another-cr", "query", "dot-dot"],
)
async def test_a_secret_store_name_that_is_no_object_name_is_never_requested(name: str) -> None:
    """The name went into the tunnel path as it was; the gateway client's URL resolves dot
    segments, so the controller's request (internal credentials) left this CR's proxy route
    for another tenant's CR's: a GET in that tenant's plane, answered in this CR's status."""
    plane = workflow_plane()
    plane["spec"]["secretStoreRef"] = {"name": name}
    kube, gateway = FakeKube(plane), TunnelGateway()
    await reconciler(kube, gateway).reconcile(REF)
    assert gateway.paths == []
    store = condition(kube, "SecretStoreReady")
    assert (store["status"], store["reason"]) == ("False", "SecretStoreNotFound")
    assert "not a valid object name" in store["message"]


async def test_a_secret_store_name_is_still_looked_up() -> None:
    plane = workflow_plane()
    plane["spec"]["secretStoreRef"] = {"name": "vault.backend"}
    kube, gateway = FakeKube(plane), TunnelGateway()
    await reconciler(kube, gateway).reconcile(REF)
    assert gateway.paths == ["apis/external-secrets.io/v1/clustersecretstores/vault.backend"]
    assert condition(kube, "SecretStoreReady")["status"] == "True"


MAX_MESSAGE = 32768  # the CRD's conditions[].message maxLength


def assert_within_schema(kube: FakeKube) -> None:
    assert kube.plane is not None
    for item in kube.plane["status"]["conditions"]:
        assert len(item["message"]) <= MAX_MESSAGE, (item["type"], len(item["message"]))


async def test_a_huge_notify_refusal_still_gives_a_status_the_crd_takes() -> None:
    """The gateway's error body became the Ready message whole: a 100 KB body made a status
    the API server refuses (422), and as the refused write left observedGeneration behind,
    every later pass notified again, was refused again, and wrote nothing."""
    kube = FakeKube(workflow_plane())
    gateway = FakeGateway(PermanentError("400: " + "x" * 100_000, status=400))
    await reconciler(kube, gateway).reconcile(REF)
    assert_within_schema(kube)
    ready = condition(kube, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "GatewayNotifyFailed")
    assert ready["message"].startswith("gateway refused notify created: 400: xxx")


class SharedGateway(FakeGateway):
    """This CR's agents are unrestricted and serve CRs of thousands of namespaces."""

    async def plane_status(self, *_: Any, **__: Any) -> Mapping[str, Any]:
        namespaces = [f"tenant-{i:05d}-" + "n" * 50 for i in range(3000)]
        return {"connectedAgents": 1, "unrestrictedSharedCA": namespaces}


async def test_an_agent_shared_by_thousands_of_namespaces_is_reported_within_the_schema() -> None:
    kube = FakeKube(workflow_plane())
    await reconciler(kube, SharedGateway()).reconcile(REF)
    assert_within_schema(kube)
    warning = condition(kube, "AgentAccessRestricted")
    assert warning["reason"] == "SharedCAUnrestricted"
    assert "tenant-00000-" in warning["message"] and "more" in warning["message"]
    assert "wpctl register --allow" in warning["message"], "the advice is not cut off"


class FailingTunnelGateway(FakeGateway):
    async def proxy(self, *_: Any, **__: Any) -> ProxyResponse:
        raise TransientError("502: " + "y" * 100_000)


async def test_a_huge_tunnel_error_still_gives_a_status_the_crd_takes() -> None:
    plane = workflow_plane()
    plane["spec"]["secretStoreRef"] = {"name": "vault"}
    kube = FakeKube(plane)
    await reconciler(kube, FailingTunnelGateway()).reconcile(REF)
    assert_within_schema(kube)
    assert condition(kube, "SecretStoreReady")["reason"] == "SecretStoreCheckFailed"


class ChattyGateway(FakeGateway):
    """An agent heard from all the time: ``lastSeen`` is always the clock's now."""

    def __init__(self, clock: list[dt.datetime]) -> None:
        super().__init__()
        self.clock = clock

    async def plane_status(self, *_: Any, **__: Any) -> Mapping[str, Any]:
        return {"connectedAgents": 1, "lastSeen": rfc3339(self.clock[0])}


async def test_a_status_write_does_not_cause_another_for_a_busy_agent() -> None:
    """Each status write is a watch event, and each event a pass. The heartbeat moved on every
    pass a second or more after the last, so an agent sending a frame a second (a pong, a
    followed run's watch) kept its CR, and every CR it serves, writing status about once a
    second for good: write, event, pass, newer heartbeat, write."""
    clock = [dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)]
    kube, gateway = FakeKube(workflow_plane()), ChattyGateway(clock)
    fake: Any = kube
    planes = PlaneReconciler(fake, gateway, EventRecorder(fake), clock=lambda: clock[0])
    await planes.reconcile(REF)  # accepted: status written
    passes = 0
    writes = len(kube.patches)
    while passes < 10:  # the watch event of each write brings a pass, a second later
        clock[0] += dt.timedelta(seconds=1)
        await planes.reconcile(REF)
        passes += 1
        if len(kube.patches) == writes:
            break
        writes = len(kube.patches)
    assert passes == 1, f"{passes} passes each wrote the status again"
    clock[0] += dt.timedelta(seconds=60)  # the resync still records the heartbeat
    await planes.reconcile(REF)
    assert kube.plane is not None
    assert kube.plane["status"]["agentConnection"]["lastHeartbeatTime"] == rfc3339(clock[0])


class GarbledGateway(FakeGateway):
    """A gateway client whose answer does not parse (a replica's body that is no JSON)."""

    async def plane_status(self, *_: Any, **__: Any) -> Mapping[str, Any]:
        raise ValueError("Expecting value: line 1 column 1 (char 0)")


async def test_a_status_answer_that_does_not_parse_is_reported_not_raised() -> None:
    """The merge's ValueError went through the pass: a "bug" every 300 s, for good, and the
    CR's status never said anything."""
    kube = FakeKube(workflow_plane())
    assert await reconciler(kube, GarbledGateway()).reconcile(REF) == 60.0
    ready = condition(kube, "Ready")
    assert (ready["status"], ready["reason"]) == ("Unknown", "AgentNotConnected")
    assert "gateway status unavailable" in ready["message"]


@pytest.mark.parametrize(
    "answer",
    [
        {"connectedAgents": -2, "consentRefusedAgents": -1},
        {"connectedAgents": "3", "consentRefusedAgents": "x"},
        {"connectedAgents": True, "consentRefusedAgents": 1e400},
        {"connectedAgents": 2**40},
        {"lastSeen": "yesterday"},
        {"lastSeen": "2026-11-24T12:00:00"},  # no zone
        {"lastSeen": 12},
        {"unrestrictedSharedCA": "abc"},
        {"unrestrictedSharedCA": [1, None, {"a": 1}, "ok"]},
    ],
)
def test_the_gateways_answer_is_type_checked(answer: dict[str, Any]) -> None:
    """Counts the CRD takes (0 to int32), an aware heartbeat or none, namespaces as strings."""
    seen = agent_observation(answer)
    assert 0 <= seen.connected_agents <= 2**31 - 1
    assert 0 <= seen.consent_refused_agents <= 2**31 - 1
    assert seen.last_seen is None or seen.last_seen.tzinfo is not None
    assert all(isinstance(name, str) for name in seen.unrestricted_shared_with)
    if isinstance(answer.get("unrestrictedSharedCA"), str):
        assert seen.unrestricted_shared_with == ()
    status = next_agent_connection(None, seen, dt.datetime(2026, 11, 24, tzinfo=dt.UTC))
    assert 0 <= status["connectedAgents"] <= 2**31 - 1


class WatchedKube(FakeKube):
    """Each write comes back as a watch event, as the API server's watch delivers it."""

    def __init__(self, plane: dict[str, Any]) -> None:
        super().__init__(plane)
        self.watchers: list[Callable[[dict[str, Any]], None]] = []
        self.version = 1

    async def patch(self, resource: Any, name: str, body: dict[str, Any], **kw: Any) -> None:
        await super().patch(resource, name, body, **kw)
        assert self.plane is not None
        self.version += 1
        self.plane["metadata"]["resourceVersion"] = str(self.version)
        for watcher in self.watchers:
            watcher(copy.deepcopy(self.plane))


class FlappingStoreGateway(FakeGateway):
    """The CR's own agent answers the secret store check 200 and 500 in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def proxy(self, *_: Any, **__: Any) -> ProxyResponse:
        self.asked += 1
        await asyncio.sleep(0)  # a round trip: other tasks (the test) run meanwhile
        return ProxyResponse(200 if self.asked % 2 else 500, {}, b"{}")


async def test_a_pass_is_not_started_by_its_own_status_write() -> None:
    """Before, every watch event started a pass, the pass's own status write included: an
    agent answering in turn 200 and 500 kept its CR in a pass after pass, each one writing
    the status and asking the gateway and the plane again, for as long as it liked."""
    plane = workflow_plane(finalizers=[FINALIZERS[WORKFLOW_PLANE]])
    plane["spec"]["secretStoreRef"] = {"name": "vault"}
    plane["status"] = {"observedGeneration": 1}  # an earlier controller's
    kube, gateway = WatchedKube(plane), FlappingStoreGateway()
    planes = PlanesController(reconciler(kube, gateway), gateway)
    kube.watchers.append(lambda body: planes.plane_event(REF, body, "MODIFIED"))
    planes.plane_event(REF, copy.deepcopy(plane), None)  # the initial listing
    for _ in range(1000):  # until the queue has nothing due (or the loop shows)
        await asyncio.sleep(0)
        if planes.queue.due() == 0 or gateway.asked > 10:
            break
    await planes.close()
    assert gateway.asked == 1, f"{gateway.asked} passes, each started by the last's write"


async def test_a_spec_change_deletion_or_listing_still_starts_a_pass() -> None:
    kube = FakeKube(workflow_plane())
    planes = PlanesController(reconciler(kube, FakeGateway()), FakeGateway())
    started: list[PlaneRef] = []
    planes.add = lambda ref, **_: started.append(ref)  # type: ignore[method-assign]
    body = workflow_plane(finalizers=[FINALIZERS[WORKFLOW_PLANE]])
    body["status"] = {"observedGeneration": 1}
    planes.plane_event(REF, body, None)
    status_only = {**copy.deepcopy(body), "status": {"observedGeneration": 1, "conditions": []}}
    status_only["metadata"]["resourceVersion"] = "2"
    planes.plane_event(REF, status_only, "MODIFIED")
    assert len(started) == 1
    spec = copy.deepcopy(status_only)
    spec["metadata"]["generation"] = 2
    planes.plane_event(REF, spec, "MODIFIED")
    deleting = copy.deepcopy(spec)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    planes.plane_event(REF, deleting, "MODIFIED")
    no_finalizer = copy.deepcopy(spec)
    no_finalizer["metadata"]["finalizers"] = []
    planes.plane_event(REF, no_finalizer, "MODIFIED")
    planes.plane_event(REF, no_finalizer, None)  # relisted
    assert len(started) == 5
    planes.plane_event(REF, no_finalizer, "DELETED")
    planes.plane_event(REF, no_finalizer, "MODIFIED")  # recreated with the same name
    assert len(started) == 6
