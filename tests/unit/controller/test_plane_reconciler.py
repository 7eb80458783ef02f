"""The executor against an in-memory API server and gateway: the I/O each decision causes,
and the notification a pass owes until it gets through."""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from workflowplane.api import FINALIZERS, WORKFLOW_PLANE
from workflowplane.controller.directory import PlaneRef
from workflowplane.controller.events import EventRecorder
from workflowplane.controller.plane_decision import NOTIFY_RETRY_SECONDS
from workflowplane.controller.plane_reconciler import PlaneReconciler
from workflowplane.kits.errors import PermanentError, TransientError
from workflowplane.pki import generate_ca

RESYNC = 60.0
REF = PlaneRef(WORKFLOW_PLANE, "team", "wp")
OURS = FINALIZERS[WORKFLOW_PLANE]
CA_PEM = generate_ca("agents").cert_pem.decode()


class FakeObject:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)


class FakeKube:
    """One WorkflowPlane; patches merge into it; created Events are kept."""

    def __init__(self, plane: dict[str, Any] | None) -> None:
        self.plane = plane
        self.patches: list[dict[str, Any]] = []
        self.events: list[Any] = []
        self.fail_patch: ApiError | None = None

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> FakeObject:
        if self.plane is None or resource.__name__ != WORKFLOW_PLANE:
            raise ApiError(status=Status(code=404, message="not found"))
        return FakeObject(self.plane)

    async def patch(self, resource: Any, name: str, body: dict[str, Any], **_: Any) -> None:
        if self.fail_patch is not None:
            raise self.fail_patch
        assert self.plane is not None
        self.patches.append(body)
        for part, values in body.items():
            self.plane.setdefault(part, {}).update(values)

    async def create(self, event: Any) -> None:
        self.events.append(event)

    def reasons(self) -> list[str]:
        return [event.reason for event in self.events]


class FakeGateway:
    def __init__(self, *notify_failures: Exception) -> None:
        self.notified: list[str] = []
        self.failures = list(notify_failures)

    async def notify(self, *, event: str, **_: Any) -> Mapping[str, Any]:
        self.notified.append(event)
        if self.failures:
            raise self.failures.pop(0)
        return {"success": True}

    async def plane_status(self, *_: Any, **__: Any) -> Mapping[str, Any]:
        return {"connectedAgents": 1, "lastSeen": "2026-11-24T12:00:00Z"}

    async def proxy(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("no secret store in these tests")

    def proxy_stream(self, *_: Any, **__: Any) -> AsyncIterator[bytes]:
        raise AssertionError("not used")

    async def events(self) -> AsyncIterator[Mapping[str, Any]]:
        raise AssertionError("not used")
        yield {}


def workflow_plane(**metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": WORKFLOW_PLANE,
        "metadata": {
            "name": "wp",
            "namespace": "team",
            "generation": 1,
            "resourceVersion": "1",
            "uid": "u",
            **metadata,
        },
        "spec": {"planeID": "p1", "clusterAgent": {"clientCA": {"value": CA_PEM}}},
    }


def reconciler(kube: FakeKube, gateway: FakeGateway) -> PlaneReconciler:
    fake: Any = kube
    return PlaneReconciler(
        fake,
        gateway,
        EventRecorder(fake),
        resync_seconds=RESYNC,
        clock=lambda: dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC),
    )


async def test_first_pass_accepts_and_a_second_changes_nothing() -> None:
    kube, gateway = FakeKube(workflow_plane()), FakeGateway()
    planes = reconciler(kube, gateway)
    assert await planes.reconcile(REF) == RESYNC
    assert kube.patches[0]["metadata"] == {"finalizers": [OURS], "resourceVersion": "1"}
    assert gateway.notified == ["created"]
    assert kube.reasons() == ["Ready", "ReconcileComplete"]
    writes = len(kube.patches)
    assert await planes.reconcile(REF) == RESYNC
    assert (gateway.notified, len(kube.patches), len(kube.events)) == (["created"], writes, 2)


async def test_a_forced_notification_stays_owed_until_it_gets_through() -> None:
    kube, gateway = FakeKube(workflow_plane()), FakeGateway()
    planes = reconciler(kube, gateway)
    await planes.reconcile(REF)  # accepted
    planes.notify_owed.add(REF)  # the CA Secret changed
    gateway.failures.append(TransientError("503: busy", status=503))
    assert await planes.reconcile(REF) == NOTIFY_RETRY_SECONDS
    assert REF in planes.notify_owed
    assert await planes.reconcile(REF) == RESYNC
    assert gateway.notified[-2:] == ["updated", "updated"] and REF not in planes.notify_owed


async def test_a_failed_pass_keeps_the_owed_notification() -> None:
    kube, gateway = FakeKube(workflow_plane(finalizers=[OURS])), FakeGateway()
    planes = reconciler(kube, gateway)
    planes.notify_owed.add(REF)
    kube.fail_patch = ApiError(status=Status(code=409, message="conflict"))
    with pytest.raises(ApiError):
        await planes.reconcile(REF)
    assert REF in planes.notify_owed  # the work queue retries; the mark is still there


async def test_a_refusal_is_recorded_and_not_retried() -> None:
    kube = FakeKube(workflow_plane())
    gateway = FakeGateway(PermanentError("400: notify needs planeType", status=400))
    planes = reconciler(kube, gateway)
    assert await planes.reconcile(REF) == RESYNC
    assert kube.reasons() == ["GatewayNotifyFailed", "ReconcileComplete"]
    assert REF not in planes.notify_owed
    await planes.reconcile(REF)
    assert gateway.notified == ["created"]


@pytest.mark.parametrize(
    ("failure", "released", "requeue"),
    [
        (None, True, None),
        (PermanentError("400: bad", status=400), True, None),
        (TransientError("gateway unreachable"), False, NOTIFY_RETRY_SECONDS),
    ],
    ids=["accepted", "refused", "unavailable"],
)
async def test_deletion_notifies_then_releases(
    failure: Exception | None, released: bool, requeue: float | None
) -> None:
    plane = workflow_plane(finalizers=[OURS, "other"], deletionTimestamp="2026-11-24T12:00:00Z")
    kube = FakeKube(plane)
    gateway = FakeGateway(*([failure] if failure else []))
    assert await reconciler(kube, gateway).reconcile(REF) == requeue
    assert gateway.notified == ["deleted"]
    assert kube.plane is not None
    assert (kube.plane["metadata"]["finalizers"] == ["other"]) == released


async def test_a_gone_cr_is_left_alone() -> None:
    kube, gateway = FakeKube(None), FakeGateway()
    planes = reconciler(kube, gateway)
    planes.notify_owed.add(REF)
    assert await planes.reconcile(REF) is None
    assert gateway.notified == [] and REF not in planes.notify_owed


async def test_an_agent_change_is_timed_to_the_first_pass_that_completes_after_it() -> None:
    kube, gateway = FakeKube(workflow_plane()), FakeGateway()
    lags: list[float] = []
    fake: Any = kube
    planes = PlaneReconciler(fake, gateway, EventRecorder(fake), on_status_lag=lags.append)
    planes.agents_changed_at(REF, time.monotonic())
    kube.fail_patch = ApiError(status=Status(code=500, message="etcd busy"))
    with pytest.raises(ApiError):
        await planes.reconcile(REF)
    assert lags == [] and REF in planes.agents_changed, "a failed pass reflects nothing"
    kube.fail_patch = None
    await planes.reconcile(REF)
    assert len(lags) == 1 and lags[0] >= 0 and REF not in planes.agents_changed
    await planes.reconcile(REF)
    assert len(lags) == 1, "no agent change since, nothing more to time"
