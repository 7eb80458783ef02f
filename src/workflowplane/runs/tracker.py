"""Follow Argo Workflows on each plane that has runs in flight: one list+watch per plane CR,
through the tunnel, so a run's status follows the plane within a second or so.

A broken watch is re-established with capped backoff and a fresh list (which is also the
catch-up poll); a watch that ends normally resumes from the last resourceVersion. What the
watch brings is handed to a work queue, so the stream never waits for a status write: each
run's newest state is written, several runs' at once (one slow write used to hold up every
run of the plane, and 100 Argo changes a second queued up for seconds).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from workflowplane.api.workflows import (
    ARGO_API_VERSION,
    ARGO_WORKFLOW,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    LABEL_RUN_NAMESPACE,
    MANAGED_BY,
    RUN_UID_ANNOTATION,
)
from workflowplane.kits.errors import EXPECTED_ERRORS, report_failure
from workflowplane.kits.tasks import TaskSet
from workflowplane.kits.workqueue import WorkQueue
from workflowplane.protocol.gateway_client import TunnelAPI
from workflowplane.runs.plan import PlaneTarget, made_by
from workflowplane.runs.plane_api import Discovery, PlaneAPI, WatchExpired

log = logging.getLogger(__name__)
RunKey = tuple[str, str]


def namespace_of(key: RunKey) -> str:
    """A run's tenant: the group its work queues serve in turn."""
    return key[0]


Observer = Callable[[RunKey, str, dict[str, Any]], Awaitable[None]]
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
CATCH_UP_RETRY = 5.0
STATUS_WRITERS = 32  # runs whose observed change is being written at once
# How long the watch keeps what it saw of an Argo Workflow no run follows yet: the run that
# has just created it claims it when it starts following (instead of reading it once more).
UNCLAIMED_SECONDS = 30.0
UNCLAIMED_MAX = 10_000
KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels")


class ArgoTracker:
    """One list+watch of Argo Workflows per plane CR with runs in flight, delivering each
    change to the run it belongs to. Owns the watch tasks and the catch-up reads; a run that
    joins a watch already past its list has its Argo Workflow read once."""

    def __init__(self, tunnel: TunnelAPI, discovery: Discovery, observe: Observer) -> None:
        self._tunnel = tunnel
        self._discovery = discovery
        self._observe = observe
        self._runs: dict[RunKey, PlaneTarget] = {}
        self._run_uids: dict[RunKey, str] = {}
        self._references: dict[RunKey, dict[str, Any]] = {}
        self._watches: dict[PlaneTarget, asyncio.Task[Any]] = {}
        self._tasks = TaskSet("argo-tracker")
        self._latest: dict[RunKey, tuple[PlaneTarget, str, dict[str, Any]]] = {}
        self._writes: WorkQueue[RunKey] = WorkQueue(
            self._observe_latest,
            concurrency=STATUS_WRITERS,
            name="run-status",
            fair_by=namespace_of,  # one tenant's many changes do not delay another's
        )
        self._streaming_since: dict[PlaneTarget, float] = {}  # listed, watching without a gap
        self._unclaimed: dict[RunKey, tuple[PlaneTarget, str, dict[str, Any], float]] = {}

    def track(
        self,
        key: RunKey,
        target: PlaneTarget,
        reference: dict[str, Any],
        *,
        run_uid: str,
        created_at: float | None = None,
    ) -> None:
        """Follow this run's Argo Workflow. A run that joins a watch already past its list
        gets its current state read once, so nothing that happened before is missed; unless
        it created its Argo Workflow (at monotonic ``created_at``) while the watch streamed
        without a gap: then every event of it came or will come through the watch.

        Only this run's own Argo Workflow is delivered to it: one carrying another run's UID
        (its deleted namesake's, whose deletion the watch may bring late) is not."""
        previous = self._runs.get(key)
        if previous == target and self._run_uids.get(key) == run_uid:
            return
        if previous is not None:
            self.forget(key)
        self._runs[key] = target
        self._run_uids[key] = run_uid
        self._references[key] = reference
        if target not in self._watches:
            self._watches[target] = self._tasks.spawn(self._follow(target), f"watch {target.ref}")
        elif self._seen_by_watch(target, created_at):
            seen = self._unclaimed.pop(key, None)
            if seen is not None and seen[0] == target:
                self._deliver(target, seen[1], seen[2])
        else:
            self._spawn(self._catch_up(key, target, 0.0))

    def _seen_by_watch(self, target: PlaneTarget, created_at: float | None) -> bool:
        since = self._streaming_since.get(target)
        recent = asyncio.get_running_loop().time() - UNCLAIMED_SECONDS
        return created_at is not None and since is not None and since <= created_at >= recent

    def __len__(self) -> int:
        """Runs followed (started, not completed)."""
        return len(self._runs)

    def watches(self) -> int:
        """List+watches open, one per plane CR with runs in flight."""
        return len(self._watches)

    def forget(self, key: RunKey) -> None:
        target = self._runs.pop(key, None)
        self._run_uids.pop(key, None)
        self._references.pop(key, None)
        self._latest.pop(key, None)
        if target is not None and target not in self._runs.values():
            task = self._watches.pop(target, None)
            if task is not None:
                task.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(work, "catch-up")

    async def _catch_up(self, key: RunKey, target: PlaneTarget, delay: float) -> None:
        """Read the run's Argo Workflow now (after ``delay``) and deliver what is there."""
        await asyncio.sleep(delay)
        reference, run_uid = self._references.get(key), self._run_uids.get(key, "")
        if reference is None or self._runs.get(key) != target:
            return
        api = PlaneAPI(self._tunnel, target, self._discovery)
        try:
            found = await api.get(reference)
        except EXPECTED_ERRORS as exc:  # the watch's next event or re-list covers it too
            log.info("catch-up read of run %s/%s failed: %s", key[0], key[1], exc)
            self._spawn(self._catch_up(key, target, CATCH_UP_RETRY))
            return
        self._deliver(target, "ADDED" if found else "DELETED", found or _gone(key, run_uid))

    def pause_writes(self) -> None:
        """Hold the runs' status writes (another replica leads); watching goes on."""
        self._writes.pause()

    def resume_writes(self) -> None:
        """Write what was held, and what comes."""
        self._writes.resume()

    async def close(self) -> None:
        self._watches.clear()
        await self._tasks.close()
        await self._writes.close()

    async def _follow(self, target: PlaneTarget) -> None:
        api = PlaneAPI(self._tunnel, target, self._discovery)
        delay = 1.0
        while True:
            self._streaming_since.pop(target, None)
            try:
                expected = {
                    key: self._run_uids.get(key, "")
                    for key, where in self._runs.items()
                    if where == target
                }
                items, version = await api.list(ARGO_API_VERSION, ARGO_WORKFLOW, SELECTOR)
                for item in items:
                    self._deliver(target, "ADDED", item)
                listed = {_key_of(item) for item in items}
                await self._missing(target, {k: u for k, u in expected.items() if k not in listed})
                delay = 1.0
                self._streaming_since[target] = asyncio.get_running_loop().time()
                while True:
                    version = await self._watch_once(api, target, version)
            except WatchExpired:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watch must outlive anything (bugs logged)
                report_failure(log, f"watch of Argo Workflows on {target.ref}", exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 30.0)

    async def _watch_once(self, api: PlaneAPI, target: PlaneTarget, version: str) -> str:
        async for kind, obj in api.watch(ARGO_API_VERSION, ARGO_WORKFLOW, SELECTOR, version):
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind != "BOOKMARK":
                self._deliver(target, kind, obj, keep=True)
        return version

    async def _missing(self, target: PlaneTarget, runs: dict[RunKey, str]) -> None:
        """Runs in flight before the list (by their UIDs then) whose Argo Workflow it lacks:
        deleted meanwhile. Not a namesake made since: its own may not have been listed."""
        for key, run_uid in runs.items():
            self._deliver(target, "DELETED", _gone(key, run_uid))

    def _deliver(
        self, target: PlaneTarget, kind: str, obj: dict[str, Any], keep: bool = False
    ) -> None:
        """Keep the run's newest observation and queue its write (never waits for it).
        ``keep``: a watch event no run follows yet is kept a while for its run to claim."""
        key = _key_of(obj)
        if self._runs.get(key) != target:
            # not in flight (perhaps not yet), or a run of another plane CR on this cluster
            if keep:
                self._keep_unclaimed(key, target, kind, _essentials(obj, made_by(obj)))
            return
        owner = made_by(obj)
        if owner is not None and owner != self._run_uids.get(key):
            return  # a namesake's, deleted before this run was made
        self._latest[key] = (target, kind, _essentials(obj, owner))
        self._writes.add(key)

    def _keep_unclaimed(
        self, key: RunKey, target: PlaneTarget, kind: str, obj: dict[str, Any]
    ) -> None:
        now = asyncio.get_running_loop().time()
        self._unclaimed.pop(key, None)  # re-inserted last: the dict stays oldest first
        self._unclaimed[key] = (target, kind, obj, now)
        for old in list(self._unclaimed):
            seen_at = self._unclaimed[old][3]
            if seen_at >= now - UNCLAIMED_SECONDS and len(self._unclaimed) <= UNCLAIMED_MAX:
                break
            del self._unclaimed[old]

    async def _observe_latest(self, key: RunKey) -> None:
        """The work queue's pass for one run: its newest observation, if still wanted."""
        target, kind, obj = self._latest.pop(key, (None, "", {}))
        if target is None or self._runs.get(key) != target:
            return
        try:
            await self._observe(key, kind, obj)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the watch
            report_failure(log, f"status update of run {key[0]}/{key[1]}", exc)
            self._spawn(self._catch_up(key, target, CATCH_UP_RETRY))


def _key_of(obj: dict[str, Any]) -> RunKey:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (str(labels.get(LABEL_RUN_NAMESPACE, "")), str(labels.get(LABEL_RUN, "")))


def _essentials(obj: dict[str, Any], owner: str | None) -> dict[str, Any]:
    """What is kept of an Argo Workflow: whose it is (name, labels, ``owner``: the run UID it
    carries) and its status, which the run's status is made from.

    The spec and managedFields are most of an Argo Workflow's size: a mass deletion left a
    thousand whole ones held for ``UNCLAIMED_SECONDS``, for runs that never claim them."""
    metadata = obj.get("metadata")
    kept: dict[str, Any] = {}
    if isinstance(metadata, dict):
        kept = {field: metadata[field] for field in KEPT_METADATA if field in metadata}
        if owner is not None:
            kept["annotations"] = {RUN_UID_ANNOTATION: owner}
    return {"metadata": kept, "status": obj.get("status")}


def _gone(key: RunKey, run_uid: str) -> dict[str, Any]:
    """What a DELETED event would carry for the Argo Workflow of the run with this UID
    (named after the run): a namesake made since the look is not given it."""
    return {
        "metadata": {
            "name": key[1],
            "labels": {LABEL_RUN_NAMESPACE: key[0], LABEL_RUN: key[1]},
            "annotations": {RUN_UID_ANNOTATION: run_uid},
        }
    }
