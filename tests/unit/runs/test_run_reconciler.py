"""The run reconciler against an in-memory control plane and plane: the API calls a run
costs. Each read or write is CPU in the controller (and each write one more pass), so the
number per run is what bounds runs/s (bench/runs.py, docs/runs.md "Performance")."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from workflowplane.api.workflows import RUN_FINALIZER, RUN_UID_ANNOTATION, WORKFLOW_RUN
from workflowplane.kits.clock import rfc3339, utcnow
from workflowplane.protocol.gateway_client import GatewayClient, ProxyResponse
from workflowplane.runs.cache import ObjectCache, kind_of
from workflowplane.runs.plan import PlaneTarget, RunPlan, plan_run, workflow_reference
from workflowplane.runs.render import RenderError
from workflowplane.runs.run_handlers import RunsController
from workflowplane.runs.run_reconciler import RunReconciler

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "workflows" / "docker-build.yaml"
PARAMS = {"repository": {"url": "https://git.example/app"}, "image": {"name": "reg/app"}}
DISCOVERY = {
    "/api/v1": [
        ("namespaces", "Namespace", False),
        ("serviceaccounts", "ServiceAccount", True),
        ("configmaps", "ConfigMap", True),
    ],
    "/apis/rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    "/apis/argoproj.io/v1alpha1": [("workflows", "Workflow", True)],
}


def answer(data: dict[str, Any]) -> Any:
    """What lightkube gives back: an object whose ``to_dict`` is the data."""
    return SimpleNamespace(to_dict=lambda: copy.deepcopy(data))


class FakeKube:
    """Objects by (kind, namespace, name); merge patches (resourceVersion-guarded when the
    patch names one); every call recorded."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {self._key(o["kind"], o["metadata"]): o for o in objects}
        self.gets: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.version = 10

    @staticmethod
    def _key(kind: str, meta: Mapping[str, Any]) -> tuple[str, str | None, str]:
        return (kind, meta.get("namespace"), meta["name"])

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> Any:
        self.gets.append(f"{kind_of(resource)} {name}")
        found = self.objects.get((kind_of(resource), namespace, name))
        if found is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return answer(found)

    async def patch(
        self, resource: Any, name: str, body: dict[str, Any], *, namespace: str | None, **_: Any
    ) -> Any:
        self.patches.append(copy.deepcopy(body))
        found = self.objects.get((kind_of(resource), namespace, name))
        if found is None:
            raise ApiError(status=Status(code=404, message="not found"))
        guard = (body.get("metadata") or {}).get("resourceVersion")
        if guard is not None and guard != found["metadata"]["resourceVersion"]:
            raise ApiError(status=Status(code=409, message="conflict"))
        for part, values in body.items():
            found.setdefault(part, {}).update(values)
        self.version += 1
        found["metadata"]["resourceVersion"] = str(self.version)
        return answer(found)


class FakePlane:
    """The gateway's proxy to one plane: discovery, creates (409 when there), GETs."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.created: dict[str, dict[str, Any]] = {}
        self.fail_creates = 0

    async def proxy(
        self, method: str, *, path: str, body: bytes | None = None, **_: Any
    ) -> ProxyResponse:
        self.requests.append(f"{method} {path}")
        if method == "GET" and path in DISCOVERY:
            resources = [{"name": n, "kind": k, "namespaced": ns} for n, k, ns in DISCOVERY[path]]
            return _answer(200, {"resources": resources})
        if method == "POST":
            if self.fail_creates:
                self.fail_creates -= 1
                return _answer(503, {"message": "the plane's API server is restarting"})
            obj = json.loads(body or b"{}")
            where = f"{path}/{obj['metadata']['name']}"
            if where in self.created:
                return _answer(409, {"message": "already exists"})
            self.created[where] = obj
            return _answer(201, obj)
        found = self.created.get(path)
        return _answer(200, found) if found else _answer(404, {"message": "not found"})

    def proxy_stream(self, method: str, **_: Any) -> AsyncIterator[bytes]:
        raise AssertionError("no watch in these tests")

    def posts(self) -> list[str]:
        return [r for r in self.requests if r.startswith("POST")]


def _answer(status: int, body: Any) -> ProxyResponse:
    return ProxyResponse(status, {}, json.dumps(body).encode())


class InProcessPlanner:
    """The planner's contract without its worker processes."""

    async def plan(
        self, run: Mapping[str, Any], definition: Mapping[str, Any], target: PlaneTarget
    ) -> RunPlan:
        return plan_run(run, definition, target)


def a_run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": WORKFLOW_RUN,
        "metadata": {
            "name": name,
            "namespace": "team",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {"workflow": {"name": "docker-build", "parameters": PARAMS}},
    }


def the_plane() -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "ClusterWorkflowPlane",
        "metadata": {"name": "default", "resourceVersion": "1"},
        "spec": {"planeID": "p1"},
    }


class World:
    """A reconciler whose cache already holds what kopf's events brought (runs, definition,
    plane), as in the running controller."""

    def __init__(self, *runs: str, plane: FakePlane | None = None) -> None:
        definition = yaml.safe_load(SAMPLE.read_text())
        definition["metadata"]["resourceVersion"] = "1"
        self.kube = FakeKube(*(a_run(n) for n in runs), definition, the_plane())
        self.plane = plane or FakePlane()
        fake_kube: Any = self.kube
        planner: Any = InProcessPlanner()
        self.reconciler = RunReconciler(fake_kube, self.plane, planner)
        for obj in self.kube.objects.values():
            self.reconciler.cache.remember(obj["kind"], copy.deepcopy(obj))

    def run(self, name: str) -> dict[str, Any]:
        return self.kube.objects[(WORKFLOW_RUN, "team", name)]

    async def close(self) -> None:
        await self.reconciler.tracker.close()


def mark_deleted(world: World, run: dict[str, Any]) -> None:
    """The run as its deletion's event shows it: the controller's cache holds it so."""
    run["metadata"]["deletionTimestamp"] = rfc3339(utcnow())
    world.reconciler.cache.remember(WORKFLOW_RUN, copy.deepcopy(run))


def plane_deletes(world: World) -> list[str]:
    return [r for r in world.plane.requests if r.startswith("DELETE")]


def plant_another_runs_workflow(world: World) -> None:
    """An Argo Workflow named as r1's, made by another run (another UID)."""
    path = "/apis/argoproj.io/v1alpha1/namespaces/workflows-team/workflows/r1"
    world.plane.created[path] = {"metadata": {"annotations": {RUN_UID_ANNOTATION: "other"}}}


async def cleaned_up_sparing_the_plane(world: World) -> None:
    """r1's cleanup ends (its finalizer gone) having deleted nothing on the plane."""
    assert await world.reconciler.reconcile(("team", "r1")) is None
    assert not plane_deletes(world)
    assert RUN_FINALIZER not in world.run("r1")["metadata"]["finalizers"]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    made = World("r1", "r2", "r3", "r4")
    yield made
    await made.close()


async def test_a_run_without_resources_starts_with_two_writes_and_no_reads(world: World) -> None:
    await world.reconciler.reconcile(("team", "r1"))

    assert world.run("r1")["status"]["startedAt"]
    assert world.kube.gets == []  # run, definition and plane came from the cache
    assert len(world.kube.patches) == 2
    record, started = world.kube.patches
    # the plane record and the finalizer: one write, before anything is on the plane
    assert record["metadata"]["finalizers"] == ["openchoreo.dev/workflowrun-cleanup"]
    assert "openchoreo.dev/workflowplane" in record["metadata"]["annotations"]
    assert started["status"]["runReference"] == workflow_reference(world.run("r1")["metadata"])
    assert started["status"]["resources"] == []
    assert started["status"]["tasks"] == []  # so Argo's first, task-less state is no write


async def test_a_run_with_resources_lists_them_in_status_before_creating_them() -> None:
    world = World("r1")
    definition = world.kube.objects[("ClusterWorkflow", None, "docker-build")]
    secret = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}
    definition["spec"]["resources"] = [{"id": "settings", "template": secret}]
    world.reconciler.cache.remember("ClusterWorkflow", copy.deepcopy(definition))
    listed_before_created: list[bool] = []
    create = world.plane.proxy

    async def creating(method: str, *, path: str, **options: Any) -> ProxyResponse:
        if method == "POST" and path.endswith("/configmaps"):
            listed = (world.run("r1").get("status") or {}).get("resources") or []
            listed_before_created.append(any(r["name"] == "settings" for r in listed))
        return await create(method, path=path, **options)

    world.plane.proxy = creating  # type: ignore[method-assign]
    await world.reconciler.reconcile(("team", "r1"))

    assert listed_before_created == [True]
    assert "runReference" not in world.kube.patches[1]["status"]  # not the run's own yet
    assert world.run("r1")["status"]["runReference"]["name"] == "r1"
    await world.close()


async def test_a_run_deleted_before_its_start_was_recorded_leaves_no_workflow(
    world: World,
) -> None:
    """Created on the plane, then the start's write lost (a restart): cleanup finds the Argo
    Workflow by the run's name, and deletes it because it carries the run's UID."""
    real_patch = world.kube.patch

    async def start_lost(resource: Any, name: str, body: dict[str, Any], **options: Any) -> Any:
        if "startedAt" in (body.get("status") or {}):
            raise ApiError(status=Status(code=500, message="the controller stopped"))
        return await real_patch(resource, name, body, **options)

    world.kube.patch = start_lost  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        await world.reconciler.reconcile(("team", "r1"))
    run = world.run("r1")
    assert "runReference" not in (run.get("status") or {})
    mark_deleted(world, run)

    assert await world.reconciler.reconcile(("team", "r1")) is None

    deletes = plane_deletes(world)
    assert deletes == ["DELETE /apis/argoproj.io/v1alpha1/namespaces/workflows-team/workflows/r1"]
    assert RUN_FINALIZER not in world.run("r1")["metadata"]["finalizers"]


async def test_cleanup_of_a_run_that_never_started_spares_another_runs_workflow(
    world: World,
) -> None:
    """The Argo Workflow of that name is another run's (why this one could not start)."""
    plant_another_runs_workflow(world)
    await world.reconciler.reconcile(("team", "r1"))
    run = world.run("r1")
    assert "runReference" not in run["status"]  # it failed: a name conflict
    mark_deleted(world, run)

    await cleaned_up_sparing_the_plane(world)


async def test_what_a_tenant_writes_in_its_runs_metadata_never_names_what_cleanup_deletes(
    world: World,
) -> None:
    """Metadata is the tenant's to write; only status (the controller's) lists what the run
    created. Objects named anywhere else are never deleted on the plane."""
    foreign = {
        "apiVersion": "v1",
        "kind": "Secret",
        "name": "cluster-agent-tls",
        "namespace": "openchoreo-workflow-plane",
    }
    planted = json.dumps({"runReference": foreign, "resources": [foreign]})
    run = world.run("r1")
    run["metadata"]["annotations"] = {"openchoreo.dev/workflowrun-intent": planted}
    world.reconciler.cache.remember(WORKFLOW_RUN, copy.deepcopy(run))
    await world.reconciler.reconcile(("team", "r1"))
    assert foreign not in world.run("r1")["status"]["resources"]

    run = world.run("r1")
    run["metadata"]["annotations"]["openchoreo.dev/workflowrun-intent"] = planted  # and again
    mark_deleted(world, run)
    await world.reconciler.reconcile(("team", "r1"))

    deletes = [r.split(" ", 1)[1] for r in world.plane.requests if r.startswith("DELETE")]
    assert deletes  # the run's own objects were cleaned up
    assert not [path for path in deletes if "cluster-agent-tls" in path]
    assert RUN_FINALIZER not in world.run("r1")["metadata"]["finalizers"]


async def test_the_pass_woken_by_its_own_writes_reads_and_writes_nothing(world: World) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    calls = (len(world.kube.gets), len(world.kube.patches), len(world.plane.requests))

    await world.reconciler.reconcile(("team", "r1"))

    assert (len(world.kube.gets), len(world.kube.patches), len(world.plane.requests)) == calls


async def test_the_shared_setup_is_created_once_while_fresh(world: World) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    assert [p.rsplit(" ", 1)[1].rsplit("/", 1)[1] for p in world.plane.posts()] == [
        "namespaces",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "workflows",
    ]
    before = len(world.plane.requests)

    await world.reconciler.reconcile(("team", "r2"))

    # only its Argo Workflow; created now (201), so no read to ask whose it is
    assert world.plane.requests[before:] == [
        "POST /apis/argoproj.io/v1alpha1/namespaces/workflows-team/workflows"
    ]


async def test_a_failed_creation_makes_the_next_run_create_the_setup_again(world: World) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    world.plane.fail_creates = 1
    assert await world.reconciler.reconcile(("team", "r2")) is not None  # retried later
    before = len(world.plane.posts())

    await world.reconciler.reconcile(("team", "r3"))

    assert len(world.plane.posts()) - before == 5  # namespace, SA, Role, RoleBinding, Workflow
    assert world.run("r3")["status"]["startedAt"]


def test_an_older_copy_never_replaces_a_newer_one() -> None:
    cache = ObjectCache(Any)  # type: ignore[arg-type]
    newer, older = a_run("r1"), a_run("r1")
    newer["metadata"]["resourceVersion"], older["metadata"]["resourceVersion"] = "12", "11"
    newer["status"] = {"startedAt": "2026-01-01T00:00:00Z"}
    cache.remember(WORKFLOW_RUN, newer)
    cache.remember(WORKFLOW_RUN, older)  # an event for an earlier write, arriving late
    assert cache._objects[(WORKFLOW_RUN, "team", "r1")]["status"]["startedAt"]


def test_the_cache_keeps_no_managed_fields() -> None:
    """Never read by the controller, and most of a run's metadata: copied on every pass."""
    cache = ObjectCache(Any)  # type: ignore[arg-type]
    run = a_run("r1")
    run["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    cache.remember(WORKFLOW_RUN, run)
    held = cache._objects[(WORKFLOW_RUN, "team", "r1")]
    assert "managedFields" not in held["metadata"]
    assert held["metadata"]["resourceVersion"] == "1"
    assert "managedFields" in run["metadata"]  # the event's own body is left as it was


async def test_a_write_refused_for_a_stale_copy_is_retried_from_the_api_server(
    world: World,
) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    stored = world.run("r1")
    stale = copy.deepcopy(stored)
    stale["metadata"]["finalizers"] = []  # as if ours had been removed: a write is due
    world.reconciler.cache._objects[(WORKFLOW_RUN, "team", "r1")] = stale
    stored["metadata"]["resourceVersion"] = "99"  # someone wrote meanwhile
    stored["metadata"]["finalizers"] = []

    with pytest.raises(ApiError):
        await world.reconciler.reconcile(("team", "r1"))
    await world.reconciler.reconcile(("team", "r1"))

    assert stored["metadata"]["finalizers"] == ["openchoreo.dev/workflowrun-cleanup"]


async def test_a_run_deleted_unseen_is_read_again_after_its_write_fails(world: World) -> None:
    del world.kube.objects[(WORKFLOW_RUN, "team", "r1")]  # its deletion event never came

    with pytest.raises(ApiError):
        await world.reconciler.reconcile(("team", "r1"))
    assert await world.reconciler.reconcile(("team", "r1")) is None

    assert world.kube.gets == ["WorkflowRun r1"]  # the second pass asked, and it was gone
    assert len(world.kube.patches) == 1


class RoutedPlane(FakePlane):
    """The plane behind the gateway client's own route building."""

    async def proxy(self, method: str, *, path: str, **options: Any) -> ProxyResponse:
        GatewayClient.proxy_path("clusterworkflowplane", "p1", None, "default", path)
        return await super().proxy(method, path=path, **options)


async def test_cleanup_deletes_every_object_it_can_name_and_skips_one_no_path_can() -> None:
    """A reference recorded before names were checked (``../..``): no request can name it,
    so nothing of it was made; it no longer stops cleanup of the others."""
    world = World("r1", plane=RoutedPlane())
    await world.reconciler.reconcile(("team", "r1"))
    run = world.run("r1")
    unnameable = {"apiVersion": "v1", "kind": "ServiceAccount", "name": "../../x", "namespace": "n"}
    run["status"]["resources"] = [*run["status"]["resources"], unnameable]
    mark_deleted(world, run)

    assert await world.reconciler.reconcile(("team", "r1")) is None

    deletes = plane_deletes(world)
    assert any(r.endswith("/workflows/r1") for r in deletes)
    assert not [r for r in deletes if ".." in r]
    assert RUN_FINALIZER not in world.run("r1")["metadata"]["finalizers"]
    await world.close()


async def test_the_pass_after_a_runs_deletion_event_asks_the_api_server_nothing() -> None:
    world = World("r1")
    runs = RunsController(world.kube, world.plane)  # type: ignore[arg-type]
    runs.reconciler = world.reconciler
    await world.reconciler.reconcile(("team", "r1"))
    gone = world.kube.objects.pop((WORKFLOW_RUN, "team", "r1"))

    runs.saw(WORKFLOW_RUN, "team", "r1", "DELETED", gone)  # type: ignore[arg-type]
    assert await world.reconciler.reconcile(("team", "r1")) is None

    assert world.kube.gets == []
    assert ("team", "r1") not in world.reconciler.tracker._runs
    # only that pass: a later read of the name asks again
    assert await world.reconciler.reconcile(("team", "r1")) is None
    assert world.kube.gets == ["WorkflowRun r1"]
    await runs.close()


async def test_a_run_made_again_after_its_deletion_event_is_seen_again() -> None:
    world = World("r1")
    runs = RunsController(world.kube, world.plane)  # type: ignore[arg-type]
    runs.reconciler = world.reconciler
    made = world.run("r1")
    runs.saw(WORKFLOW_RUN, "team", "r1", "DELETED", made)  # type: ignore[arg-type]
    runs.saw(WORKFLOW_RUN, "team", "r1", "ADDED", copy.deepcopy(made))  # type: ignore[arg-type]

    await world.reconciler.reconcile(("team", "r1"))
    assert world.run("r1")["status"]["startedAt"]
    assert world.kube.gets == []

    world.reconciler.cache.forget(WORKFLOW_RUN, "team", "r1")  # a write found our copy stale
    await world.reconciler.reconcile(("team", "r1"))
    assert world.kube.gets == ["WorkflowRun r1"]  # read again, not taken for gone
    await runs.close()


async def test_a_deletion_event_after_its_successors_creation_leaves_the_successor() -> None:
    """kopf hands each UID's events to its own worker: the old run's deletion may be handled
    after the ADDED of a new run of the same name."""
    world = World("r1")
    runs = RunsController(world.kube, world.plane)  # type: ignore[arg-type]
    runs.reconciler = world.reconciler
    old = copy.deepcopy(world.run("r1"))
    successor = world.run("r1")
    successor["metadata"]["uid"] = "uid-successor"
    runs.saw(WORKFLOW_RUN, "team", "r1", "ADDED", copy.deepcopy(successor))  # type: ignore[arg-type]
    runs.saw(WORKFLOW_RUN, "team", "r1", "DELETED", old)  # type: ignore[arg-type]

    await world.reconciler.reconcile(("team", "r1"))

    assert world.run("r1")["status"]["startedAt"]
    assert world.kube.gets == []
    await runs.close()


async def test_a_reference_recorded_without_a_start_is_not_trusted_by_cleanup(
    world: World,
) -> None:
    """An earlier version wrote runReference before creating: a run that then failed on a
    name conflict names another run's Workflow there. Cleanup asks whose it is."""
    plant_another_runs_workflow(world)
    run = world.run("r1")
    run["metadata"]["finalizers"] = [RUN_FINALIZER]
    run["metadata"]["annotations"] = {
        "openchoreo.dev/workflowplane": json.dumps(
            {"kind": "ClusterWorkflowPlane", "name": "default", "planeID": "p1"}
        )
    }
    run["status"] = {"runReference": workflow_reference(run["metadata"]), "resources": []}
    mark_deleted(world, run)

    await cleaned_up_sparing_the_plane(world)


async def test_a_failed_look_for_the_workflow_still_deletes_the_listed_resources(
    world: World,
) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    run = world.run("r1")
    del run["status"]["startedAt"], run["status"]["runReference"]  # as if never started
    run["status"]["resources"] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "name": "extra", "namespace": "n"}
    ]
    mark_deleted(world, run)
    real_proxy = world.plane.proxy

    async def refusing_gets(method: str, *, path: str, **options: Any) -> ProxyResponse:
        if method == "GET" and "/workflows/" in path:
            return _answer(403, {"message": "forbidden"})
        return await real_proxy(method, path=path, **options)

    world.plane.proxy = refusing_gets  # type: ignore[method-assign]
    assert await world.reconciler.reconcile(("team", "r1")) is not None  # tried again later

    deletes = plane_deletes(world)
    assert deletes == ["DELETE /api/v1/namespaces/n/serviceaccounts/extra"]


class PreconditionPlane(FakePlane):
    """DELETEs honour a UID precondition as the API server does (409 when it differs)."""

    def __init__(self) -> None:
        super().__init__()
        self.delete_bodies: list[dict[str, Any]] = []

    async def proxy(
        self, method: str, *, path: str, body: bytes | None = None, **options: Any
    ) -> ProxyResponse:
        if method != "DELETE":
            return await super().proxy(method, path=path, body=body, **options)
        self.requests.append(f"{method} {path}")
        sent = json.loads(body or b"{}")
        self.delete_bodies.append(sent)
        held = self.created.get(path)
        if held is None:
            return _answer(404, {"message": "not found"})
        wanted = (sent.get("preconditions") or {}).get("uid")
        if wanted and wanted != held["metadata"].get("uid"):
            return _answer(409, {"message": "precondition failed: UID in precondition"})
        del self.created[path]
        return _answer(200, {})


async def test_cleanup_of_a_run_that_never_started_deletes_only_the_workflow_it_read() -> None:
    """Between the read (whose is it?) and the delete, one of that name may be made anew
    (another run's): the delete names the UID it read, and a 409 leaves the new one."""
    world = World("r1", plane=PreconditionPlane())
    plane: Any = world.plane
    path = "/apis/argoproj.io/v1alpha1/namespaces/workflows-team/workflows/r1"
    mine = {"metadata": {"uid": "plane-1", "annotations": {RUN_UID_ANNOTATION: "uid-r1"}}}
    plane.created[path] = mine
    await world.reconciler.reconcile(("team", "r1"))  # 409 on create: found, its own
    run = world.run("r1")
    del run["status"]["startedAt"], run["status"]["runReference"]  # its start lost
    mark_deleted(world, run)
    real_get = plane.proxy

    async def replaced_after_read(method: str, *, path: str, **options: Any) -> ProxyResponse:
        answer = await real_get(method, path=path, **options)
        if method == "GET" and path.endswith("/workflows/r1"):  # made anew, by another
            plane.created[path] = {"metadata": {"uid": "plane-2", "annotations": {}}}
        return answer

    plane.proxy = replaced_after_read
    assert await world.reconciler.reconcile(("team", "r1")) is None

    assert plane.delete_bodies[-1]["preconditions"] == {"uid": "plane-1"}
    assert plane.created[path]["metadata"]["uid"] == "plane-2"  # the new one stays
    assert RUN_FINALIZER not in world.run("r1")["metadata"]["finalizers"]
    await world.close()


async def test_cleanup_deletes_the_workflow_after_its_pods_and_the_resources_at_once() -> None:
    """Argo names a Workflow's step pods after it: a run made again under this name must not
    find the old pods there, so the Workflow goes only once what it owns has gone."""
    world = World("r1", plane=PreconditionPlane())
    plane: Any = world.plane
    await world.reconciler.reconcile(("team", "r1"))
    run = world.run("r1")
    run["status"]["resources"] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "name": "extra", "namespace": "n"}
    ]
    mark_deleted(world, run)

    assert await world.reconciler.reconcile(("team", "r1")) is None

    policies = dict(zip(plane_deletes(world), plane.delete_bodies, strict=True))
    workflow = "DELETE /apis/argoproj.io/v1alpha1/namespaces/workflows-team/workflows/r1"
    assert policies[workflow]["propagationPolicy"] == "Foreground"
    extra = "DELETE /api/v1/namespaces/n/serviceaccounts/extra"
    assert policies[extra]["propagationPolicy"] == "Background"
    await world.close()


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (b"not json", True),
        (b"\xff\xfe", True),
        (b"[1, 2]", True),
        (b'{"metadata": []}', False),
        (b'{"metadata": {"annotations": "uid-r1"}}', False),
        (b'{"metadata": {"annotations": {"openchoreo.dev/workflowrun-uid": 7}}}', False),
    ],
)
async def test_an_unreadable_answer_about_an_unrecorded_workflow_deletes_nothing(
    world: World, answer: bytes, retried: bool
) -> None:
    """The plane's answers are untrusted: one that is not an object is the request's error
    (retried, then given up as any cleanup failure), one of another shape is not this run's;
    neither escapes the pass as an exception (which retried it for ever)."""
    run = world.run("r1")
    run["metadata"]["finalizers"] = [RUN_FINALIZER]
    run["metadata"]["annotations"] = {
        "openchoreo.dev/workflowplane": json.dumps(
            {"kind": "ClusterWorkflowPlane", "name": "default", "planeID": "p1"}
        )
    }
    mark_deleted(world, run)
    real_proxy = world.plane.proxy

    async def garbled(method: str, *, path: str, **options: Any) -> ProxyResponse:
        if method == "GET" and path.endswith("/workflows/r1"):
            return ProxyResponse(200, {}, answer)
        return await real_proxy(method, path=path, **options)

    world.plane.proxy = garbled  # type: ignore[method-assign]
    if retried:
        assert await world.reconciler.reconcile(("team", "r1")) is not None
        assert not plane_deletes(world)
    else:
        await cleaned_up_sparing_the_plane(world)


class NamesakeMeanwhile(InProcessPlanner):
    """While the run's render is under way the run is deleted and made again under its name
    (a new UID); then the render fails."""

    def __init__(self, world: World) -> None:
        self.world, self.failed = world, False

    async def plan(
        self, run: Mapping[str, Any], definition: Mapping[str, Any], target: PlaneTarget
    ) -> RunPlan:
        if self.failed:
            return await super().plan(run, definition, target)
        self.failed = True
        anew = a_run("r1")
        anew["metadata"] |= {"uid": "uid-anew", "resourceVersion": "99"}
        self.world.kube.objects[(WORKFLOW_RUN, "team", "r1")] = anew
        raise RenderError("the old run's template")


async def test_a_verdict_on_a_run_made_again_meanwhile_is_not_written_on_the_new_one() -> None:
    world = World("r1")
    planner: Any = NamesakeMeanwhile(world)
    world.reconciler._planner = planner
    with pytest.raises(ApiError):  # the old run's failure refused: the pass is retried
        await world.reconciler.reconcile(("team", "r1"))
    assert "completedAt" not in (world.run("r1").get("status") or {})
    await world.reconciler.reconcile(("team", "r1"))  # read again: the new run starts
    assert world.run("r1")["status"]["startedAt"]
    assert world.run("r1")["metadata"]["uid"] == "uid-anew"
    await world.close()


async def test_a_started_runs_verdict_is_written_over_a_change_its_copy_has_not_seen(
    world: World,
) -> None:
    """With its finalizer a run cannot be made again under its name during a pass: its
    verdicts are not guarded, and do not lose to a write the cache has not seen yet."""
    await world.reconciler.reconcile(("team", "r1"))  # started: the finalizer is on
    world.run("r1")["metadata"]["resourceVersion"] = "500"  # a tenant's edit, not seen yet
    gone = {"metadata": {"name": "r1", "annotations": {RUN_UID_ANNOTATION: "uid-r1"}}}
    await world.reconciler.observe(("team", "r1"), "DELETED", gone)
    assert world.run("r1")["status"]["completedAt"]


async def test_an_observation_of_a_namesakes_workflow_is_not_written_on_the_run(
    world: World,
) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    theirs = {"metadata": {"name": "r1", "annotations": {RUN_UID_ANNOTATION: "uid-other"}}}
    await world.reconciler.observe(("team", "r1"), "DELETED", theirs)
    assert "completedAt" not in world.run("r1")["status"]


async def test_a_workflow_gone_between_the_409_and_the_look_is_waited_for(world: World) -> None:
    """Another run's Argo Workflow, terminating (deleted in the foreground), answered the
    create with 409, and was gone by the read: the run tries again, it does not start on a
    Workflow that is not there (its tracker would fail it as deleted)."""
    real_proxy = world.plane.proxy

    async def conflict_then_gone(method: str, *, path: str, **options: Any) -> ProxyResponse:
        if method == "POST" and path.endswith("/workflows"):
            world.plane.requests.append(f"{method} {path}")
            return _answer(409, {"message": "already exists"})
        return await real_proxy(method, path=path, **options)

    world.plane.proxy = conflict_then_gone  # type: ignore[method-assign]

    assert await world.reconciler.reconcile(("team", "r1")) is not None  # tried again later
    status = world.run("r1")["status"]
    assert "startedAt" not in status
    assert "was just deleted" in str(status["conditions"])
