"""The WorkflowRun controller's decisions, one run at a time.

A run moves through: not started (definition and plane resolved, rendered, objects created on
the plane) → in flight (the tracker follows its Argo Workflow) → completed (TTL) → deleted
(finalizer cleans the plane). Where the run goes (its plane, its finalizer) and the resources
it creates are recorded on the run *before* they are created on the plane; its Argo Workflow
is known from the run's name and UID alone. So a restart at any point resumes without
duplicates or leaks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from prometheus_client import CollectorRegistry

from workflowplane.api.conditions import Verdict, find_condition
from workflowplane.api.constants import CLUSTER_WORKFLOW_PLANE, WORKFLOW_PLANE
from workflowplane.api.kube import merge_patch
from workflowplane.api.workflows import (
    CLUSTER_WORKFLOW,
    PLANE_ANNOTATION,
    RUN_FINALIZER,
    WORKFLOW,
    WORKFLOW_RUN,
    ClusterWorkflowResource,
    RunCondition,
    RunReason,
    WorkflowResource,
    WorkflowRunResource,
)
from workflowplane.kits.clock import parse_rfc3339, rfc3339, utcnow
from workflowplane.kits.errors import Failure, TransientError
from workflowplane.protocol.gateway_client import TunnelAPI, UnroutablePath
from workflowplane.runs.cache import ObjectCache
from workflowplane.runs.metrics import RunMetrics
from workflowplane.runs.plan import PlaneTarget, RunPlan, made_by, workflow_reference
from workflowplane.runs.plane_api import Discovery, PlaneAPI
from workflowplane.runs.planner import Planner
from workflowplane.runs.progress import (
    changed,
    failed_before_start,
    is_completed,
    phase_verdicts,
    resources_verdict,
    status_from_argo,
    synced_kinds,
    waiting,
    with_verdicts,
)
from workflowplane.runs.render import RenderError, SecretStoreMissing
from workflowplane.runs.targets import plane_record, plane_target, recorded_target
from workflowplane.runs.tracker import ArgoTracker, RunKey
from workflowplane.runs.ttl import parse_ttl

log = logging.getLogger(__name__)
NOT_FOUND_RETRY = 60.0
UNREACHABLE_RETRY = 5.0
RESOURCES_RETRY = 10.0  # how often an in-flight run's unsynced ExternalSecrets are read again
CLEANUP_GIVE_UP = dt.timedelta(minutes=10)
# How long the shared objects of a plane namespace (Namespace, ServiceAccount, executor RBAC),
# once created or found, are not created again for the next runs there: one round of creates
# per namespace and half minute instead of four per run; one deleted on the plane meanwhile is
# back within this time (or at once, when a run's creation fails).
SETUP_FRESH_SECONDS = 30.0
ObjectKey = tuple[str, str | None, str]  # kind, namespace, name of something a run waits for


class RunReconciler:
    def __init__(
        self,
        kube: AsyncClient,
        tunnel: TunnelAPI,
        planner: Planner,
        clock: Callable[[], dt.datetime] = utcnow,
        metrics: RunMetrics | None = None,
    ) -> None:
        self._kube = kube
        self._tunnel = tunnel
        self._planner = planner
        self._clock = clock
        self._discovery = Discovery()
        self.cache = ObjectCache(kube)
        self._setup_fresh: dict[tuple[PlaneTarget, str], float] = {}
        self.tracker = ArgoTracker(tunnel, self._discovery, self.observe)
        self.metrics = metrics or RunMetrics(CollectorRegistry())
        self.metrics.follow(self.tracker.__len__, self.tracker.watches)
        self.waiters: dict[ObjectKey, set[RunKey]] = {}

    # -- entry points -------------------------------------------------------------------------

    async def reconcile(self, key: RunKey) -> float | None:
        """One pass; returns seconds until the run should be looked at again, if ever."""
        run = await self.cache.copy(WorkflowRunResource, key[1], key[0])
        if run is None:
            self.tracker.forget(key)
            self._unwait(key)
            return None
        meta, status = run["metadata"], run.get("status") or {}
        if meta.get("deletionTimestamp"):
            return await self._finalize(key, run)
        if _sent(run) and RUN_FINALIZER not in (meta.get("finalizers") or []):
            await self._set_finalizers(run, [*(meta.get("finalizers") or []), RUN_FINALIZER])
        if is_completed(status):
            self.tracker.forget(key)
            return await self._expire(key, run)
        if status.get("startedAt"):
            target = await recorded_target(self.cache.get, run)
            if target is None:
                recorded = (meta.get("annotations") or {}).get(PLANE_ANNOTATION, "its plane")
                message = f"the plane this run was sent to ({recorded}) no longer exists"
                return await self._fail(run, RunReason.WORKFLOW_PLANE_NOT_FOUND, message)
            self.tracker.track(key, target, status["runReference"], run_uid=_uid(run))
            return await self._follow_resources(run, target)
        return await self._start(key, run)

    async def _follow_resources(self, run: dict[str, Any], target: PlaneTarget) -> float | None:
        """While a run is in flight, read its ExternalSecrets on the plane until all have
        synced, and say on the run (ResourcesReady) when one fails or is still syncing."""
        resources = synced_kinds(run.get("status") or {})
        if not resources:
            return None
        api = PlaneAPI(self._tunnel, target, self._discovery)
        try:
            observed = {str(ref.get("id") or ref["name"]): await api.get(ref) for ref in resources}
        except Failure as exc:
            log.info("reading the resources of run %s: %s", run["metadata"]["name"], exc)
            return RESOURCES_RETRY
        verdict = resources_verdict(observed)
        conditions = self._conditions(run, {RunCondition.RESOURCES_READY: verdict})
        if conditions != (run.get("status") or {}).get("conditions"):
            await self._patch_status(run, {"conditions": conditions}, guarded=True)
        return None if verdict.status == "True" else RESOURCES_RETRY

    async def observe(self, key: RunKey, event: str, argo: dict[str, Any]) -> None:
        """The tracker saw the run's Argo Workflow change (or go away)."""
        arrived = time.monotonic()
        run = await self.cache.copy(WorkflowRunResource, key[1], key[0])
        if run is None or run["metadata"].get("deletionTimestamp"):
            return
        owner = made_by(argo)
        if owner is not None and owner != _uid(run):
            return  # a namesake's observation, taken before this run was followed
        status = run.get("status") or {}
        if is_completed(status) or not status.get("startedAt"):
            return
        if event == "DELETED":
            message = f"the Argo Workflow {argo['metadata'].get('name')} was deleted from the plane"
            await self._fail(run, RunReason.ARGO_WORKFLOW_DELETED, message)
            return
        now = self._clock()
        update = status_from_argo(status, argo, run["metadata"].get("generation"), now)
        if changed(status, update):
            await self._patch_status(run, update)
            self.metrics.status_lag.observe(time.monotonic() - arrived)

    # -- starting -----------------------------------------------------------------------------

    async def _start(self, key: RunKey, run: dict[str, Any]) -> float | None:
        # Wait-registrations come before each look-up, so an object created meanwhile still
        # wakes the run; they are dropped as soon as the look-up succeeds.
        self._unwait(key)
        wanted = _definition_key(run)
        self._wait_for(wanted, key)
        definition = await self._definition(run)
        if definition is None:
            kind, _, name = wanted
            message = f"{kind} {name!r} not found"
            await self._set_waiting(run, RunReason.WORKFLOW_NOT_FOUND, message)
            return NOT_FOUND_RETRY
        tried = _plane_candidates(run, definition)
        for candidate in tried:
            self._wait_for(candidate, key)
        target = await self._resolve_plane(tried)
        if target is None:
            names = " or ".join(f"{k}/{n}" if not ns else f"{k} {ns}/{n}" for k, ns, n in tried)
            await self._set_waiting(run, RunReason.WORKFLOW_PLANE_NOT_FOUND, f"{names} not found")
            return NOT_FOUND_RETRY
        self._unwait(key)
        try:
            plan = await self._planner.plan(run, definition, target)
        except SecretStoreMissing as exc:
            return await self._fail(run, RunReason.SECRET_STORE_NOT_CONFIGURED, str(exc))
        except RenderError as exc:
            return await self._fail(run, RunReason.RENDER_FAILED, f"cannot render: {exc}")
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # A definition whose free-form parts (schema, templates) have an unexpected shape.
            message = f"cannot render: malformed definition ({type(exc).__name__}: {exc})"
            return await self._fail(run, RunReason.RENDER_FAILED, message)
        return await self._create(key, run, target, plan)

    async def _create(
        self, key: RunKey, run: dict[str, Any], target: PlaneTarget, plan: RunPlan
    ) -> float | None:
        await self._record_intent(run, target, plan)
        api = PlaneAPI(self._tunnel, target, self._discovery)
        setup_key = (target, plan.workflow["metadata"]["namespace"])
        fresh = self._setup_fresh.get(setup_key, 0.0) > time.monotonic()
        try:
            for obj in plan.objects[len(plan.setup) if fresh else 0 : -1]:
                await api.create(obj)
            if not fresh:
                self._setup_fresh[setup_key] = time.monotonic() + SETUP_FRESH_SECONDS
            # Created now: it carries this run's UID. Already there: whose is it?
            created_at = asyncio.get_running_loop().time()
            created = await api.create(plan.workflow)
            conflict = None if created else await self._foreign_workflow(api, run, plan)
        except Failure as exc:
            self._setup_fresh.pop(setup_key, None)  # a namespace deleted there, perhaps
            if isinstance(exc, TransientError):
                await self._set_waiting(
                    run, RunReason.WORKFLOW_PLANE_UNREACHABLE, f"{target.ref}: {exc.message}"
                )
                return UNREACHABLE_RETRY
            return await self._fail(run, RunReason.PLANE_REJECTED, f"{target.ref}: {exc.message}")
        if conflict is not None:
            terminating, message = conflict
            if terminating:
                await self._set_waiting(run, RunReason.PENDING, message)
                return UNREACHABLE_RETRY
            return await self._fail(run, RunReason.ARGO_WORKFLOW_NAME_CONFLICT, message)
        conditions = self._conditions(run, phase_verdicts("", ""))
        now = rfc3339(self._clock())
        await self._patch_status(
            run,
            # startedAt until Argo says when it started (the tracker then writes Argo's time).
            # No tasks yet: said now, so Argo's first (task-less) state is no second write.
            {
                "runReference": plan.run_reference(),
                "resources": _listed_resources(run, plan),
                "submittedAt": now,
                "startedAt": now,
                "conditions": conditions,
                "tasks": [],
            },
        )
        # Created by this pass: the tracker's watch saw it, no read needed (unless it was down).
        self.tracker.track(
            key,
            target,
            plan.run_reference(),
            run_uid=_uid(run),
            created_at=created_at if created else None,
        )
        log.info("run %s/%s started on %s", key[0], key[1], target.ref)
        return None

    async def _foreign_workflow(
        self, api: PlaneAPI, run: Mapping[str, Any], plan: RunPlan
    ) -> tuple[bool, str] | None:
        """(still terminating?, message) when the Argo Workflow there belongs to another run.
        One gone between the create's 409 and this read was terminating (another run's, being
        deleted in the foreground): tried again, not taken for this run's."""
        uid, ref = run["metadata"].get("uid"), plan.run_reference()
        found = await api.get(ref)
        if not uid:
            return None
        where = f"{ref.get('namespace')}/{ref['name']}"  # what was read: the plane's, by name
        if found is None:
            return True, f"the Argo Workflow {where} of an earlier run was just deleted"
        owner = made_by(found)
        if owner == uid:
            return None
        if _mapping(found.get("metadata")).get("deletionTimestamp"):
            return True, f"the Argo Workflow {where} of an earlier run is still being deleted"
        return False, (
            f"an Argo Workflow {where} that this run did not create (run UID {owner or 'none'}) "
            "already exists on the plane; delete it there, or run under another name"
        )

    async def _record_intent(self, run: dict[str, Any], target: PlaneTarget, plan: RunPlan) -> None:
        """Where the run goes, and the resources it creates (status must list them first),
        written before anything is created there; not its Argo Workflow (known by name).

        Writes only what changed, so a run retrying against an unreachable plane does not
        churn its own status (each write would wake it again).
        """
        meta, status = run["metadata"], run.get("status") or {}
        record = plane_record(target)
        finalizers = list(meta.get("finalizers") or [])
        metadata: dict[str, Any] = {}
        if (meta.get("annotations") or {}).get(PLANE_ANNOTATION) != record:
            metadata["annotations"] = {PLANE_ANNOTATION: record}
        if RUN_FINALIZER not in finalizers:  # one write with the record, guarded
            metadata |= {"finalizers": [*finalizers, RUN_FINALIZER]}
            metadata["resourceVersion"] = meta["resourceVersion"]
        if metadata:
            await self._patch_run(run, {"metadata": metadata})
            meta.setdefault("annotations", {})[PLANE_ANNOTATION] = record
            meta["finalizers"] = metadata.get("finalizers", finalizers)
        if not plan.resources and not status.get("resources"):
            # Nothing for status to list first: cleanup knows the Argo Workflow from the run
            # alone (plan.workflow_reference), and the start's write records it. One write
            # per run fewer, on the API server every run shares (docs/runs.md).
            return
        update: dict[str, Any] = {"resources": _listed_resources(run, plan)}
        if find_condition(status.get("conditions") or [], RunCondition.COMPLETED) is None:
            update["conditions"] = self._conditions(
                run, waiting(RunReason.PENDING, f"creating the run's objects on {target.ref}")
            )
        if changed(status, update):
            await self._patch_status(run, update)

    async def _definition(self, run: Mapping[str, Any]) -> dict[str, Any] | None:
        kind, namespace, name = _definition_key(run)
        if kind == WORKFLOW:
            return await self.cache.get(WorkflowResource, name, namespace)
        return await self.cache.get(ClusterWorkflowResource, name)

    async def _resolve_plane(self, candidates: list[ObjectKey]) -> PlaneTarget | None:
        for kind, namespace, name in candidates:
            target = await plane_target(self.cache.get, kind, namespace, name)
            if target is not None:
                return target
        return None

    def _wait_for(self, thing: ObjectKey, key: RunKey) -> None:
        self.waiters.setdefault(thing, set()).add(key)

    def _unwait(self, key: RunKey) -> None:
        for thing in [t for t, keys in self.waiters.items() if key in keys]:
            self.waiters[thing].discard(key)
            if not self.waiters[thing]:
                del self.waiters[thing]

    def woken_by(self, thing: ObjectKey) -> set[RunKey]:
        """Runs waiting for this plane or definition (it appeared or changed)."""
        return self.waiters.pop(thing, set())

    # -- completion, TTL, deletion -------------------------------------------------------------

    async def _fail(self, run: dict[str, Any], reason: str, message: str) -> float | None:
        meta, status = run["metadata"], run.get("status") or {}
        update = {
            "conditions": self._conditions(run, failed_before_start(reason, message)),
            "completedAt": status.get("completedAt") or rfc3339(self._clock()),
        }
        await self._patch_status(run, update, guarded=True)
        log.info("run %s/%s failed: %s: %s", meta["namespace"], meta["name"], reason, message)
        return None  # the status event brings the run back for its TTL

    async def _expire(self, key: RunKey, run: dict[str, Any]) -> float | None:
        completed_at = (run.get("status") or {}).get("completedAt")
        try:
            ttl = await self._ttl(run)
            if ttl is None or not completed_at:
                return None
            remaining = (parse_rfc3339(completed_at) + ttl - self._clock()).total_seconds()
        except (ValueError, OverflowError) as exc:
            # A TTL the CRD's pattern lets through but time cannot hold (``99999999999d``):
            # it is never reached. Raising made every pass of the run fail, for ever.
            log.warning("run %s/%s is kept: its ttlAfterCompletion: %s", *key, exc)
            return None
        if remaining > 0:
            return remaining
        log.info("run %s/%s reached its ttlAfterCompletion; deleting it", *key)
        try:
            await self._kube.delete(WorkflowRunResource, key[1], namespace=key[0])
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        return None

    async def _ttl(self, run: Mapping[str, Any]) -> dt.timedelta | None:
        text = (run.get("spec") or {}).get("ttlAfterCompletion")
        if not text:
            definition = await self._definition(run)
            text = ((definition or {}).get("spec") or {}).get("ttlAfterCompletion")
        return parse_ttl(text) if text else None

    async def _finalize(self, key: RunKey, run: dict[str, Any]) -> float | None:
        meta = run["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if RUN_FINALIZER not in finalizers:
            return None
        self.tracker.forget(key)
        target = await recorded_target(self.cache.get, run, terminating=True)
        if target is not None:
            try:
                await self._delete_from_plane(target, run)
            except Failure as exc:
                since = self._clock() - parse_rfc3339(meta["deletionTimestamp"])
                if since < CLEANUP_GIVE_UP:
                    log.info("cleanup of run %s/%s waits: %s", key[0], key[1], exc.message)
                    return UNREACHABLE_RETRY
                log.warning("giving up cleanup of run %s/%s: %s", key[0], key[1], exc.message)
        await self._set_finalizers(run, [f for f in finalizers if f != RUN_FINALIZER])
        return None

    async def _delete_from_plane(self, target: PlaneTarget, run: Mapping[str, Any]) -> None:
        """The Argo Workflow, then what status lists.

        The Argo Workflow goes in the foreground: Argo names its step pods after it, so a run
        made again under this name must not start while this one's pods are there (Argo
        would take them for its own, and lose them to the garbage collector). Its namesake
        waits while it is still terminating (``_foreign_workflow``)."""
        api = PlaneAPI(self._tunnel, target, self._discovery)
        status = run.get("status") or {}
        failed: Failure | None = None
        workflows: list[dict[str, Any]] = []
        if status.get("startedAt") and status.get("runReference"):
            workflows.append(status["runReference"])
        else:
            # Not started. A runReference recorded without a start (an earlier version's
            # intent) may name another run's Workflow, the one this run failed to start over.
            try:
                workflows += await self._unrecorded_workflow(api, run)
            except Failure as exc:  # the resources are still deleted now
                failed = exc
        refs = [(ref, True) for ref in workflows]
        refs += [(ref, False) for ref in reversed(status.get("resources") or [])]
        for ref, foreground in refs:  # each one tried: one that fails keeps none of the others
            try:
                await api.delete(ref, foreground=foreground)
            except UnroutablePath as exc:  # no path names it: nothing of it was ever made
                log.warning("cleanup skips a reference no request can name: %s", exc.message)
            except Failure as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    async def _unrecorded_workflow(
        self, api: PlaneAPI, run: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """A run deleted before its start was recorded may still have created its Argo
        Workflow (status names it from the start on). Its name is known from the run; it is
        deleted only if it carries this run's UID: one of that name may be another run's
        (the reason this run failed to start)."""
        ref = workflow_reference(run["metadata"])
        try:
            found = await api.get(ref)
        except Failure as exc:
            if exc.status == 404:  # the kind is not served there: nothing of it can exist
                return []
            raise
        uid = run["metadata"].get("uid")
        if found is None or not uid or made_by(found) != uid:
            return []
        # that one only (by its own UID): not one of the name made since the read
        return [{**ref, "uid": _mapping(found.get("metadata")).get("uid")}]

    # -- writes -------------------------------------------------------------------------------

    async def _set_waiting(self, run: dict[str, Any], reason: str, message: str) -> None:
        conditions = self._conditions(run, waiting(reason, message))
        if conditions != (run.get("status") or {}).get("conditions"):
            await self._patch_status(run, {"conditions": conditions}, guarded=True)

    def _conditions(
        self, run: Mapping[str, Any], verdicts: Mapping[str, Verdict]
    ) -> list[dict[str, Any]]:
        """The run's conditions with these verdicts set, as of now."""
        generation = run["metadata"].get("generation")
        return with_verdicts(run.get("status") or {}, verdicts, generation, self._clock())

    async def _patch_status(
        self, run: dict[str, Any], update: dict[str, Any], *, guarded: bool = False
    ) -> None:
        """``guarded``: onto the copy the pass decided on only (its resourceVersion), while
        the run has no finalizer, for a verdict reached after waiting (a render, a plane):
        such a run may have been deleted and made again under its name meanwhile, and the new
        one must not get the old one's. With the finalizer it cannot be, and the guard would
        only make the pass lose to the tracker's status writes."""
        before = dict(run.get("status") or {})
        body: dict[str, Any] = {"status": update}
        meta = run["metadata"]
        version = meta.get("resourceVersion")
        if guarded and version and RUN_FINALIZER not in (meta.get("finalizers") or []):
            body["metadata"] = {"resourceVersion": version}
        await self._patch_run(run, body, status=True)
        run.setdefault("status", {}).update(update)
        self.metrics.status_written(before, run["status"])

    async def _set_finalizers(self, run: dict[str, Any], finalizers: list[str]) -> None:
        """Guarded by resourceVersion, so a concurrent change to the list is never lost."""
        meta = run["metadata"]
        guarded = {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}
        await self._patch_run(run, {"metadata": guarded})
        meta["finalizers"] = finalizers

    async def _patch_run(
        self, run: dict[str, Any], body: dict[str, Any], status: bool = False
    ) -> None:
        """A merge patch of the run; the API server's answer is the cache's newest copy, so
        the pass that this write wakes already sees it, and its resourceVersion the pass's
        copy's (the pass updates what it wrote there itself), so its next guarded write is
        measured against its own last one."""
        meta = run["metadata"]
        try:
            written = await merge_patch(
                self._kube,
                WorkflowRunResource,
                meta["name"],
                body,
                namespace=meta["namespace"],
                status=status,
            )
        except ApiError as exc:
            if exc.status.code in (404, 409):  # our copy was stale (a deletion's event
                # missed in a watch gap, a concurrent write): the retry reads the API server
                self.cache.forget(WORKFLOW_RUN, meta["namespace"], meta["name"])
            raise
        answer = written.to_dict()
        self.cache.remember(WORKFLOW_RUN, answer)
        written_meta = answer.get("metadata") or {}
        if written_meta.get("uid") == meta.get("uid") and written_meta.get("resourceVersion"):
            meta["resourceVersion"] = written_meta["resourceVersion"]  # the pass's copy now


def _sent(run: Mapping[str, Any]) -> bool:
    """Whether the run may have objects on a plane (its plane recorded): it needs its
    finalizer. Before that, nothing of it exists there, and the record adds it (one write)."""
    meta = run["metadata"]
    return bool((meta.get("annotations") or {}).get(PLANE_ANNOTATION))


def _uid(run: Mapping[str, Any]) -> str:
    return str(run["metadata"].get("uid") or "")


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is an object, else empty: what the plane answers is untrusted."""
    return value if isinstance(value, Mapping) else {}


def _listed_resources(run: Mapping[str, Any], plan: RunPlan) -> list[dict[str, Any]]:
    """The resources the run's status lists (cleanup's list). Its runReference is written
    only with the start, once the Argo Workflow there is taken for the run's own (created by
    it, or not found carrying another run's UID): cleanup deletes that one by name."""
    return _merged((run.get("status") or {}).get("resources") or [], plan.resource_refs())


def _merged(recorded: list[dict[str, Any]], planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Planned refs, plus any recorded earlier that the plan no longer has (a definition
    edited between retries): whatever may exist on the plane stays listed for cleanup."""
    return planned + [ref for ref in recorded if ref not in planned]


def _definition_key(run: Mapping[str, Any]) -> ObjectKey:
    ref = (run.get("spec") or {}).get("workflow") or {}
    kind, name = ref.get("kind") or CLUSTER_WORKFLOW, str(ref.get("name", ""))
    return (kind, run["metadata"]["namespace"] if kind == WORKFLOW else None, name)


def _plane_candidates(run: Mapping[str, Any], definition: Mapping[str, Any]) -> list[ObjectKey]:
    """The explicit ref, else WorkflowPlane ``default`` in the namespace, then the cluster's."""
    namespace = run["metadata"]["namespace"]
    ref = (definition.get("spec") or {}).get("workflowPlaneRef")
    if ref:
        kind = ref["kind"]
        return [(kind, namespace if kind == WORKFLOW_PLANE else None, ref["name"])]
    return [(WORKFLOW_PLANE, namespace, "default"), (CLUSTER_WORKFLOW_PLANE, None, "default")]
