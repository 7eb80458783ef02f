"""Pure status arithmetic for runs: Argo's Workflow status → the run's conditions and tasks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from workflowplane.api.conditions import Verdict, find_condition, set_condition
from workflowplane.api.workflows import RunCondition, RunReason
from workflowplane.kits.clock import rfc3339

COMPLETED_PHASES = {"Succeeded", "Failed", "Error"}


def is_completed(status: Mapping[str, Any]) -> bool:
    found = find_condition(list(status.get("conditions") or []), RunCondition.COMPLETED)
    return bool(found and found.get("status") == "True")


def with_verdicts(
    status: Mapping[str, Any],
    verdicts: Mapping[str, Verdict],
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    conditions = list(status.get("conditions") or [])
    for type_, verdict in verdicts.items():
        conditions = set_condition(conditions, type_, verdict, generation, now)
    return conditions


def waiting(reason: str, message: str) -> dict[str, Verdict]:
    """Not started yet, for a reason that may go away (plane missing, unreachable, ...)."""
    return {RunCondition.COMPLETED: Verdict("False", reason, message)}


def failed_before_start(reason: str, message: str) -> dict[str, Verdict]:
    """A permanent failure found before anything ran (render error, missing secret store)."""
    return {
        RunCondition.RUNNING: Verdict("False", reason, message),
        RunCondition.FAILED: Verdict("True", reason, message),
        RunCondition.COMPLETED: Verdict("True", reason, message),
    }


def phase_verdicts(phase: str, message: str) -> dict[str, Verdict]:
    """Argo phase → conditions: Running, Succeeded, Failed/Error; anything else is pending."""
    if phase == "Running":
        text = message or "the Argo Workflow is running"
        return {
            RunCondition.RUNNING: Verdict("True", RunReason.RUNNING, text),
            RunCondition.COMPLETED: Verdict("False", RunReason.RUNNING, text),
        }
    if phase == "Succeeded":
        text = message or "the Argo Workflow succeeded"
        return {
            RunCondition.RUNNING: Verdict("False", RunReason.SUCCEEDED, text),
            RunCondition.SUCCEEDED: Verdict("True", RunReason.SUCCEEDED, text),
            RunCondition.COMPLETED: Verdict("True", RunReason.SUCCEEDED, text),
        }
    if phase in {"Failed", "Error"}:
        reason = RunReason.FAILED if phase == "Failed" else RunReason.ERROR
        text = message or f"the Argo Workflow ended in phase {phase}"
        return {
            RunCondition.RUNNING: Verdict("False", reason, text),
            RunCondition.FAILED: Verdict("True", reason, text),
            RunCondition.COMPLETED: Verdict("True", reason, text),
        }
    text = message or "waiting for Argo to start the workflow"
    return {
        RunCondition.RUNNING: Verdict("False", RunReason.PENDING, text),
        RunCondition.COMPLETED: Verdict("False", RunReason.PENDING, text),
    }


def tasks_of(argo_status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Argo's Pod nodes, in the order they started (not-yet-started ones last)."""
    nodes = [n for n in (argo_status.get("nodes") or {}).values() if n.get("type") == "Pod"]
    nodes.sort(
        key=lambda n: (n.get("startedAt") is None, n.get("startedAt") or "", n.get("id", ""))
    )
    tasks = []
    for node in nodes:
        task = {
            "name": node.get("displayName") or node.get("name", ""),
            "phase": node.get("phase") or "Pending",
        }
        for source, target in (
            ("startedAt", "startedAt"),
            ("finishedAt", "completedAt"),
            ("message", "message"),
        ):
            if node.get(source):
                task[target] = node[source]
        tasks.append(task)
    return tasks


def status_from_argo(
    status: Mapping[str, Any], argo: Mapping[str, Any], generation: int | None, now: dt.datetime
) -> dict[str, Any]:
    """The run's new status fields for this observation of its Argo Workflow."""
    argo_status = argo.get("status") or {}
    phase = str(argo_status.get("phase") or "")
    update: dict[str, Any] = {
        "conditions": with_verdicts(
            status, phase_verdicts(phase, str(argo_status.get("message") or "")), generation, now
        ),
        "tasks": tasks_of(argo_status),
    }
    if argo_status.get("startedAt"):  # Argo's own start, not when we submitted the run
        update["startedAt"] = argo_status["startedAt"]
    if phase in COMPLETED_PHASES and not status.get("completedAt"):
        update["completedAt"] = argo_status.get("finishedAt") or rfc3339(now)
    return update


def changed(status: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
    return any(status.get(key) != value for key, value in update.items())


SYNCED_KINDS = frozenset({"ExternalSecret"})


def synced_kinds(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's resources whose sync a controller on the plane reports (ExternalSecrets)."""
    return [r for r in status.get("resources") or [] if r.get("kind") in SYNCED_KINDS]


def resources_verdict(observed: Mapping[str, Mapping[str, Any] | None]) -> Verdict:
    """ResourcesReady from each synced resource as read on the plane (None: not there).

    False names the first resource whose controller says Ready=False and why (e.g. External
    Secrets' ``SecretSyncedError``); Unknown while any has not said yet; True when all have."""
    waiting = []
    for rid, obj in observed.items():
        ready = find_condition(
            list(((obj or {}).get("status") or {}).get("conditions") or []), "Ready"
        )
        if ready is None:
            waiting.append(rid)
        elif ready.get("status") == "False":
            reason = ready.get("reason") or "NotReady"
            message = f"{rid}: {reason}: {ready.get('message') or 'not ready'}"
            return Verdict("False", reason, message)
    if waiting:
        return Verdict("Unknown", RunReason.RESOURCES_SYNCING, f"waiting for {', '.join(waiting)}")
    return Verdict("True", RunReason.RESOURCES_SYNCED, "every resource reports Ready")
