"""Pure status arithmetic for runs: Argo's Workflow status → the run's conditions and tasks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from workflowplane.api.conditions import Verdict, find_condition, set_condition
from workflowplane.api.workflows import RunCondition, RunReason
from workflowplane.kits.clock import parse_rfc3339, rfc3339
from workflowplane.kits.text import within

COMPLETED_PHASES = {"Succeeded", "Failed", "Error"}

# Bounds on what the run's status takes from Argo and from error messages. The status is
# refused whole by the API server when one condition's message is over the CRD's 32768
# characters or the object over etcd's 1.5 MB, and then refused again on every retry: the run
# never completed, never expired. Argo's status is not only Argo's to write (its CRD has no
# status subresource, so a tenant's runTemplate may carry one; a step's termination message
# becomes its node's message), so each field is also checked for its type.
MAX_MESSAGE_CHARS = 4096  # a condition's message (set_condition cuts reasons to the CRD's)
MAX_PHASE_CHARS = 1024
MAX_TASKS = 300  # the first ones in start order; with the bounds below, about 250 KiB at most
MAX_TASK_NAME_CHARS = 253
MAX_TASK_MESSAGE_CHARS = 512


def timestamp(value: Any) -> str | None:
    """An RFC 3339 time (with its zone) as the run's status writes it, else None: the CRD
    refuses anything else, and a time without a zone could not be compared with ours."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = parse_rfc3339(value)
        if moment.tzinfo is None:
            return None
        moment = moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None
    return rfc3339(moment) if moment.year >= 1000 else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


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
    for type_, given in verdicts.items():
        verdict = Verdict(given.status, given.reason, within(given.message, MAX_MESSAGE_CHARS))
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
    """Argo's Pod nodes, in the order they started (not-yet-started ones last), at most
    :data:`MAX_TASKS`, each field a string of bounded length (or left out)."""
    nodes = _mapping(argo_status.get("nodes")).values()
    tasks = []
    for node in nodes:
        if not isinstance(node, Mapping) or node.get("type") != "Pod":
            continue
        name = _text(node.get("displayName")) or _text(node.get("name"))
        task = {
            "name": within(name, MAX_TASK_NAME_CHARS),
            "phase": within(_text(node.get("phase")) or "Pending", MAX_PHASE_CHARS),
        }
        for source, target in (("startedAt", "startedAt"), ("finishedAt", "completedAt")):
            moment = timestamp(node.get(source))
            if moment:
                task[target] = moment
        message = node.get("message")
        if message:
            task["message"] = within(
                message if isinstance(message, str) else str(message), MAX_TASK_MESSAGE_CHARS
            )
        tasks.append(
            (
                task.get("startedAt") is None,
                task.get("startedAt", ""),
                str(node.get("id", "")),
                task,
            )
        )
    tasks.sort(key=lambda entry: entry[:3])
    return [task for *_, task in tasks[:MAX_TASKS]]


def status_from_argo(
    status: Mapping[str, Any], argo: Mapping[str, Any], generation: int | None, now: dt.datetime
) -> dict[str, Any]:
    """The run's new status fields for this observation of its Argo Workflow."""
    argo_status = _mapping(argo.get("status"))
    phase = _text(argo_status.get("phase"))
    update: dict[str, Any] = {
        "conditions": with_verdicts(
            status, phase_verdicts(phase, str(argo_status.get("message") or "")), generation, now
        ),
        "tasks": tasks_of(argo_status),
    }
    started = timestamp(argo_status.get("startedAt"))
    if started:  # Argo's own start, not when we submitted the run
        update["startedAt"] = started
    if phase in COMPLETED_PHASES and not status.get("completedAt"):
        update["completedAt"] = timestamp(argo_status.get("finishedAt")) or rfc3339(now)
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
        # the plane's to write: a status or conditions of another shape is "not said yet"
        conditions = _mapping(_mapping(obj).get("status")).get("conditions")
        listed = [dict(c) for c in conditions or [] if isinstance(c, Mapping)]
        ready = find_condition(listed if isinstance(conditions, list) else [], "Ready")
        if ready is None:
            waiting.append(rid)
        elif ready.get("status") == "False":
            reason = _text(ready.get("reason")) or "NotReady"
            message = f"{rid}: {reason}: {ready.get('message') or 'not ready'}"
            return Verdict("False", reason, message)
    if waiting:
        return Verdict("Unknown", RunReason.RESOURCES_SYNCING, f"waiting for {', '.join(waiting)}")
    return Verdict("True", RunReason.RESOURCES_SYNCED, "every resource reports Ready")
