"""A ``ttlAfterCompletion`` the CRD's pattern lets through but time cannot hold (``\\d+`` days
without bound): before, every pass of the completed run raised (OverflowError past year
9999, ValueError past Python's 4,300 digits), so the run was retried as a bug for ever."""

from __future__ import annotations

import copy

import pytest

from tests.unit.runs import test_run_reconciler as harness
from workflowplane.api.workflows import WORKFLOW_RUN
from workflowplane.runs.ttl import parse_ttl


@pytest.mark.parametrize("ttl", ["9999999d", "99999999999999d", "1" * 5000 + "s", "999999d"])
async def test_a_completed_runs_ttl_of_any_length_never_fails_its_pass(ttl: str) -> None:
    world = harness.World("r1")
    try:
        run = world.run("r1")
        run["spec"] = {**run["spec"], "ttlAfterCompletion": ttl}
        run["status"] = {
            "completedAt": "2026-03-01T12:00:00Z",
            "conditions": [
                {
                    "type": "WorkflowCompleted",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": "done",
                    "lastTransitionTime": "2026-03-01T12:00:00Z",
                }
            ],
        }
        world.reconciler.cache.remember(WORKFLOW_RUN, copy.deepcopy(run))
        again = await world.reconciler.reconcile(("team", "r1"))
        assert again is None or again > 0
    finally:
        await world.close()


@pytest.mark.parametrize("text", ["9999999999d", "1" * 5000 + "s"])
def test_a_ttl_too_long_for_time_is_a_value_error_quoting_it(text: str) -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_ttl(text)
