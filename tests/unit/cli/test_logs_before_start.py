"""``wpctl logs`` of a run with no Argo Workflow of its own yet says which step it is at."""

from __future__ import annotations

from typing import Any

import pytest

from workflowplane.api.workflows import PLANE_ANNOTATION
from workflowplane.cli.errors import CliError
from workflowplane.cli.runs import _plane_of


def a_run(annotations: dict[str, str], status: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "r1", "namespace": "team", "annotations": annotations}
    return {"metadata": meta, "status": status}


async def test_a_run_not_sent_anywhere_says_so() -> None:
    with pytest.raises(CliError, match="has not been sent to a plane yet"):
        await _plane_of(None, a_run({}, {}))  # type: ignore[arg-type]


async def test_a_run_sent_but_not_started_says_it_has_not_started() -> None:
    """Its plane is recorded, its start is not (it failed creating, or is creating now)."""
    run = a_run({PLANE_ANNOTATION: '{"kind": "ClusterWorkflowPlane", "name": "default"}'}, {})
    with pytest.raises(CliError, match="has not started on its plane yet"):
        await _plane_of(None, run)  # type: ignore[arg-type]


async def test_a_run_that_ended_before_it_started_says_why_not_that_it_may_yet() -> None:
    """A render failure (say) ends the run before anything is sent: "not sent yet" read as
    if it still might be."""
    failed = {
        "type": "WorkflowCompleted",
        "status": "True",
        "reason": "RenderFailed",
        "message": "unknown parameter 'nope'",
    }
    run = a_run({}, {"conditions": [failed]})
    with pytest.raises(CliError, match="ended before it ran any step: RenderFailed: unknown"):
        await _plane_of(None, run)  # type: ignore[arg-type]
