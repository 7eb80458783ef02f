"""Argo Workflow status → a run's conditions, tasks and completion time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from workflowplane.api.conditions import Verdict
from workflowplane.api.workflows import RunCondition, RunReason
from workflowplane.runs.progress import (
    is_completed,
    phase_verdicts,
    resources_verdict,
    status_from_argo,
    synced_kinds,
    tasks_of,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NOW_TEXT = "2026-03-01T12:00:00Z"


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


# phase_verdicts


def test_running_phase_is_running_and_not_completed() -> None:
    assert phase_verdicts("Running", "") == {
        RunCondition.RUNNING: Verdict("True", RunReason.RUNNING, "the Argo Workflow is running"),
        RunCondition.COMPLETED: Verdict("False", RunReason.RUNNING, "the Argo Workflow is running"),
    }


def test_succeeded_phase_is_succeeded_completed_and_not_running() -> None:
    verdicts = phase_verdicts("Succeeded", "")
    assert set(verdicts) == {RunCondition.RUNNING, RunCondition.SUCCEEDED, RunCondition.COMPLETED}
    assert verdicts[RunCondition.RUNNING].status == "False"
    assert verdicts[RunCondition.SUCCEEDED] == Verdict(
        "True", RunReason.SUCCEEDED, "the Argo Workflow succeeded"
    )
    assert verdicts[RunCondition.COMPLETED] == Verdict(
        "True", RunReason.SUCCEEDED, "the Argo Workflow succeeded"
    )
    assert RunCondition.FAILED not in verdicts


@pytest.mark.parametrize(("phase", "reason"), [("Failed", RunReason.FAILED), ("Error", "Error")])
def test_failed_and_error_phases_are_failed_and_completed(phase: str, reason: str) -> None:
    verdicts = phase_verdicts(phase, "")
    text = f"the Argo Workflow ended in phase {phase}"
    assert verdicts == {
        RunCondition.RUNNING: Verdict("False", reason, text),
        RunCondition.FAILED: Verdict("True", reason, text),
        RunCondition.COMPLETED: Verdict("True", reason, text),
    }


@pytest.mark.parametrize("phase", ["", "Pending", "Unknown"])
def test_empty_or_unknown_phase_is_pending(phase: str) -> None:
    assert phase_verdicts(phase, "") == {
        RunCondition.RUNNING: Verdict(
            "False", RunReason.PENDING, "waiting for Argo to start the workflow"
        ),
        RunCondition.COMPLETED: Verdict(
            "False", RunReason.PENDING, "waiting for Argo to start the workflow"
        ),
    }


@pytest.mark.parametrize("phase", ["Running", "Succeeded", "Failed", "Error", ""])
def test_argo_message_replaces_the_default_text(phase: str) -> None:
    verdicts = phase_verdicts(phase, "child 'build' failed")
    assert {v.message for v in verdicts.values()} == {"child 'build' failed"}


# tasks_of


def test_tasks_are_only_pod_nodes_ordered_by_start_with_unstarted_last() -> None:
    argo_status = {
        "nodes": {
            "wf": {"id": "wf", "type": "DAG", "name": "wf", "startedAt": "2026-03-01T10:00:00Z"},
            "late": {
                "id": "late",
                "type": "Pod",
                "displayName": "push",
                "phase": "Running",
                "startedAt": "2026-03-01T10:05:00Z",
            },
            "waiting": {"id": "waiting", "type": "Pod", "displayName": "deploy"},
            "early": {
                "id": "early",
                "type": "Pod",
                "displayName": "build",
                "phase": "Succeeded",
                "startedAt": "2026-03-01T10:01:00Z",
                "finishedAt": "2026-03-01T10:04:00Z",
            },
            "steps": {"id": "steps", "type": "Steps", "startedAt": "2026-03-01T10:00:30Z"},
        }
    }
    assert tasks_of(argo_status) == [
        {
            "name": "build",
            "phase": "Succeeded",
            "startedAt": "2026-03-01T10:01:00Z",
            "completedAt": "2026-03-01T10:04:00Z",
        },
        {"name": "push", "phase": "Running", "startedAt": "2026-03-01T10:05:00Z"},
        {"name": "deploy", "phase": "Pending"},
    ]


def test_task_falls_back_to_node_name_and_carries_message() -> None:
    argo_status = {
        "nodes": {
            "n": {"type": "Pod", "name": "wf.step", "phase": "Failed", "message": "exit code 1"}
        }
    }
    assert tasks_of(argo_status) == [
        {"name": "wf.step", "phase": "Failed", "message": "exit code 1"}
    ]


def test_no_nodes_means_no_tasks() -> None:
    assert tasks_of({}) == []
    assert tasks_of({"nodes": None}) == []


# status_from_argo


def test_running_workflow_gives_running_conditions_tasks_and_no_completion() -> None:
    argo = {
        "status": {
            "phase": "Running",
            "finishedAt": "2026-03-01T11:00:00Z",
            "nodes": {"a": {"type": "Pod", "displayName": "a", "phase": "Running"}},
        }
    }
    update = status_from_argo({}, argo, 4, NOW)
    assert "completedAt" not in update
    assert update["tasks"] == [{"name": "a", "phase": "Running"}]
    conditions = by_type(update["conditions"])
    assert conditions[RunCondition.RUNNING]["status"] == "True"
    assert conditions[RunCondition.COMPLETED]["status"] == "False"
    assert conditions[RunCondition.RUNNING]["observedGeneration"] == 4
    assert conditions[RunCondition.RUNNING]["lastTransitionTime"] == NOW_TEXT


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Error"])
def test_completed_workflow_takes_completed_at_from_argo_finished_at(phase: str) -> None:
    argo = {"status": {"phase": phase, "finishedAt": "2026-03-01T11:59:00Z"}}
    update = status_from_argo({}, argo, None, NOW)
    assert update["completedAt"] == "2026-03-01T11:59:00Z"
    assert is_completed({"conditions": update["conditions"]})


def test_completed_workflow_without_finished_at_uses_now() -> None:
    update = status_from_argo({}, {"status": {"phase": "Succeeded"}}, None, NOW)
    assert update["completedAt"] == NOW_TEXT


def test_started_at_is_argos_own_start_not_our_submission() -> None:
    """A run submitted at 10:00 that Argo started at 10:14 and finished at 10:15 took a
    minute (``wpctl runs`` showed the queueing time as run time)."""
    status = {"submittedAt": "2026-03-01T10:00:00Z", "startedAt": "2026-03-01T10:00:00Z"}
    argo = {
        "status": {
            "phase": "Succeeded",
            "startedAt": "2026-03-01T10:14:00Z",
            "finishedAt": "2026-03-01T10:15:00Z",
        }
    }
    update = status_from_argo(status, argo, None, NOW)
    assert update["startedAt"] == "2026-03-01T10:14:00Z"
    assert "submittedAt" not in update
    assert "startedAt" not in status_from_argo(status, {"status": {"phase": "Pending"}}, None, NOW)


def test_existing_completed_at_is_not_overwritten() -> None:
    status = {"completedAt": "2026-03-01T09:00:00Z"}
    argo = {"status": {"phase": "Failed", "finishedAt": "2026-03-01T11:59:00Z"}}
    assert "completedAt" not in status_from_argo(status, argo, None, NOW)


def test_workflow_without_status_is_pending() -> None:
    update = status_from_argo({}, {}, None, NOW)
    conditions = by_type(update["conditions"])
    assert conditions[RunCondition.COMPLETED]["reason"] == RunReason.PENDING
    assert update["tasks"] == []
    assert "completedAt" not in update


def test_status_from_argo_keeps_transition_time_when_status_is_unchanged() -> None:
    first = status_from_argo({}, {"status": {"phase": "Running"}}, 1, NOW)
    later = NOW + dt.timedelta(minutes=5)
    second = status_from_argo(first, {"status": {"phase": "Running"}}, 1, later)
    running = by_type(second["conditions"])[RunCondition.RUNNING]
    assert running["lastTransitionTime"] == NOW_TEXT


# is_completed


def test_is_completed_only_when_completed_condition_is_true() -> None:
    def status(value: str) -> dict[str, Any]:
        return {"conditions": [{"type": RunCondition.COMPLETED, "status": value}]}

    assert is_completed(status("True"))
    assert not is_completed(status("False"))
    assert not is_completed(status("Unknown"))
    assert not is_completed({})
    assert not is_completed({"conditions": [{"type": RunCondition.FAILED, "status": "True"}]})


# resources_verdict


def _external_secret(status: str | None, reason: str = "", message: str = "") -> dict[str, Any]:
    if status is None:
        return {"status": {}}
    ready = {"type": "Ready", "status": status, "reason": reason, "message": message}
    return {"status": {"conditions": [ready]}}


def test_a_secret_that_cannot_sync_fails_resources_ready_naming_it_and_why() -> None:
    verdict = resources_verdict(
        {
            "config": _external_secret("True"),
            "git-secret": _external_secret("False", "SecretSyncedError", "key git/x not found"),
        }
    )
    assert verdict.status == "False" and verdict.reason == "SecretSyncedError"
    assert verdict.message == "git-secret: SecretSyncedError: key git/x not found"


def test_resources_not_reported_yet_are_waited_for_then_ready() -> None:
    pending = resources_verdict({"git-secret": _external_secret(None), "other": None})
    assert pending.status == "Unknown" and pending.reason == RunReason.RESOURCES_SYNCING
    assert "git-secret" in pending.message and "other" in pending.message
    ready = resources_verdict({"git-secret": _external_secret("True")})
    assert ready.status == "True" and ready.reason == RunReason.RESOURCES_SYNCED


def test_only_external_secrets_are_followed() -> None:
    status = {
        "resources": [
            {"id": "git", "kind": "ExternalSecret", "name": "r-git"},
            {"id": "cfg", "kind": "ConfigMap", "name": "cfg"},
        ]
    }
    assert [r["id"] for r in synced_kinds(status)] == ["git"]
