"""What comes back from the plane (an Argo Workflow's status) and what a render error says
are written into the run's status, which the API server validates (the CRD) and etcd caps at
1.5 MB. A status the API server refuses is refused on every retry: the run would never
complete, never expire and never be cleaned up by TTL. So whatever the input, the status the
controller writes is valid for the CRD and bounded in size.

The Argo Workflow's status is not only Argo's: its CRD has no status subresource, so a
tenant's ``runTemplate`` may carry any ``status`` at creation, and a step's termination
message becomes its node's message."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from tests.unit.runs import test_run_reconciler as harness
from workflowplane.api.workflows import WORKFLOW_RUN
from workflowplane.kits.clock import parse_rfc3339
from workflowplane.runs.progress import (
    resources_verdict,
    status_from_argo,
    tasks_of,
    with_verdicts,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CONDITION_MESSAGE_MAX = 32768  # the CRD's maxLength (metav1.Condition's)
STATUS_BUDGET = 512 * 1024  # well inside etcd's 1.5 MB, with room for spec and metadata


def assert_valid_status(status: dict[str, Any]) -> None:
    """What the WorkflowRun CRD (deploy/crds) would accept, and a size etcd takes."""
    assert len(json.dumps(status)) < STATUS_BUDGET
    for condition in status.get("conditions") or []:
        assert isinstance(condition["message"], str)
        assert len(condition["message"]) <= CONDITION_MESSAGE_MAX
        assert isinstance(condition["reason"], str)
        assert 1 <= len(condition["reason"]) <= 1024
    for field in ("startedAt", "completedAt", "submittedAt"):
        if field in status:
            assert parse_rfc3339(status[field]).tzinfo is not None
    for task in status.get("tasks") or []:
        assert isinstance(task["name"], str)
        assert isinstance(task["phase"], str)
        assert isinstance(task.get("message", ""), str)
        for field in ("startedAt", "completedAt"):
            if field in task:
                assert parse_rfc3339(task[field]).tzinfo is not None


def pod(index: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"n{index}", "type": "Pod", "displayName": f"step-{index}", **fields}


# -- the shape of Argo's status ----------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes",
    [
        [pod(1, phase="Running")],  # a list, not a map
        {"a": "not a node", "b": None, "c": [1, 2]},
        "nodes",
        7,
    ],
)
def test_nodes_of_any_shape_give_tasks_without_raising(nodes: Any) -> None:
    tasks = tasks_of({"nodes": nodes})
    assert_valid_status({"tasks": tasks})


def test_start_times_of_mixed_types_sort_without_raising() -> None:
    nodes = {
        "a": pod(1, startedAt="2026-03-01T10:00:00Z"),
        "b": pod(2, startedAt=12345),
        "c": pod(3, startedAt={"when": "now"}),
    }
    tasks = tasks_of({"nodes": nodes})
    assert tasks[0]["name"] == "step-1"
    assert_valid_status({"tasks": tasks})


def test_node_fields_that_are_not_strings_are_not_written_as_they_are() -> None:
    nodes = {
        "a": pod(
            1,
            displayName={"x": 1},
            phase=3,
            message=["a", "b"],
            startedAt="yesterday",
            finishedAt="2026-03-01T10:00:00",  # no time zone: parsed as local time later
        )
    }
    (task,) = tasks_of({"nodes": nodes})
    assert_valid_status({"tasks": [task]})


def test_a_status_that_is_not_an_object_is_pending() -> None:
    update = status_from_argo({}, {"status": ["Succeeded"]}, 1, NOW)
    assert_valid_status(update)
    assert update["tasks"] == []


def test_argos_times_that_are_not_timestamps_do_not_reach_the_status() -> None:
    argo = {"status": {"phase": "Succeeded", "startedAt": 17, "finishedAt": "not a time"}}
    update = status_from_argo({}, argo, 1, NOW)
    assert_valid_status(update)
    assert "startedAt" not in update
    assert update["completedAt"] == "2026-03-01T12:00:00Z"  # when we saw it end


def test_argos_valid_times_are_kept() -> None:
    argo = {
        "status": {
            "phase": "Failed",
            "startedAt": "2026-03-01T10:00:00Z",
            "finishedAt": "2026-03-01T11:00:00Z",
        }
    }
    update = status_from_argo({}, argo, 1, NOW)
    assert (update["startedAt"], update["completedAt"]) == (
        "2026-03-01T10:00:00Z",
        "2026-03-01T11:00:00Z",
    )


# -- sizes -------------------------------------------------------------------------------------


def test_a_huge_argo_message_is_bounded_in_every_condition() -> None:
    argo = {"status": {"phase": "Failed", "message": "x" * 2_000_000}}
    update = status_from_argo({}, argo, 1, NOW)
    assert_valid_status(update)
    assert all(c["message"].startswith("xxx") for c in update["conditions"])
    assert all(c["message"].endswith("(2000000 characters)") for c in update["conditions"])


def test_many_pod_nodes_with_long_messages_give_a_bounded_task_list() -> None:
    """Before: 5,000 nodes with 2 KB messages gave 10.6 MB of tasks, refused on every write."""
    nodes = {
        f"n{i}": pod(
            i,
            displayName=f"step-{i}-" + "d" * 300,
            phase="Failed",
            startedAt=f"2026-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
            message="m" * 2000,
        )
        for i in range(5000)
    }
    tasks = tasks_of({"nodes": nodes})
    assert_valid_status({"tasks": tasks})
    assert tasks[0]["name"].startswith("step-0-")  # still in start order


# -- through the reconciler --------------------------------------------------------------------


async def test_a_run_whose_argo_workflow_reports_garbage_gets_a_valid_bounded_status() -> None:
    world = harness.World("r1")
    try:
        await world.reconciler.reconcile(("team", "r1"))
        argo = {
            "metadata": {"name": "r1"},
            "status": {
                "phase": "Failed",
                "message": {"not": "a string"},
                "finishedAt": "2026-03-01T10:00:00",
                "nodes": {f"n{i}": pod(i, message="m" * 4096) for i in range(3000)},
            },
        }
        await world.reconciler.observe(("team", "r1"), "MODIFIED", argo)
        status = world.run("r1")["status"]
        assert_valid_status(status)
        assert status["completedAt"]
    finally:
        await world.close()


async def test_a_render_error_naming_a_huge_value_is_written_bounded() -> None:
    """Before: the message quoted the whole 1 MB parameter three times (once per condition):
    the API server refused it (maxLength 32768) on every retry, and the run never failed."""
    world = harness.World("r1")
    try:
        run = world.run("r1")
        parameters = {**harness.PARAMS, "image": {"name": ["y" * 1_000_000]}}  # a new dict:
        run["spec"]["workflow"]["parameters"] = parameters  # the harness shares PARAMS
        world.reconciler.cache.remember(WORKFLOW_RUN, copy.deepcopy(run))
        await world.reconciler.reconcile(("team", "r1"))
        status = world.run("r1")["status"]
        assert_valid_status(status)
        completed = next(c for c in status["conditions"] if c["type"] == "WorkflowCompleted")
        assert completed["reason"] == "RenderFailed"
        assert "parameters.image.name" in completed["message"]
    finally:
        await world.close()


@pytest.mark.parametrize(
    "external_secret",
    [
        {"status": "Ready"},
        {"status": {"conditions": {"type": "Ready"}}},
        {"status": {"conditions": ["Ready", None]}},
        {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": 7}]}},
    ],
)
def test_a_synced_resources_status_of_any_shape_gives_a_verdict(
    external_secret: dict[str, Any],
) -> None:
    verdict = resources_verdict({"git": external_secret})
    assert isinstance(verdict.reason, str) and verdict.reason


def test_a_planes_reason_over_the_crds_length_is_cut_within_it() -> None:
    """Before: cut to 1,024 characters and then a note added, past the CRD's maxLength."""
    secret = {
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "R" * 5000}]}
    }
    verdict = resources_verdict({"creds": secret})
    conditions = with_verdicts({}, {"ResourcesReady": verdict}, 1, NOW)
    assert len(conditions[0]["reason"]) <= 1024
    assert conditions[0]["reason"].endswith("(5000 characters)")
