"""A tenant's run (or namespaced Workflow) nested deeper than Python's recursion limit: the
API server accepts it, and it must end as a clear RenderFailed on the run, never as an
exception on every pass, a run that cannot be cleaned up, or a worker lost from the pool."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.runs import test_run_reconciler as harness
from workflowplane.api.workflows import RUN_FINALIZER, WORKFLOW_RUN
from workflowplane.kits.clock import rfc3339, utcnow
from workflowplane.kits.workers import Budget
from workflowplane.runs.cache import json_copy
from workflowplane.runs.plan import PlaneTarget
from workflowplane.runs.planner import Planner
from workflowplane.runs.render import RenderError

PLANE = PlaneTarget(kind="ClusterWorkflowPlane", namespace=None, name="default", plane_id="p1")
DEPTH = 1500  # past the recursion limit (1000), well inside what the API server accepts


def nested(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    here = top
    for _ in range(depth):
        here["a"] = {}
        here = here["a"]
    return top


def a_run(name: str, parameters: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": name, "uid": f"uid-{name}"},
        "spec": {"workflow": {"name": "w", "parameters": parameters}},
    }


DEFINITION: dict[str, Any] = {
    "kind": "Workflow",
    "spec": {
        "parameters": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "runTemplate": {"spec": {"entrypoint": "main", "arguments": "${parameters}"}},
    },
}


@pytest.fixture
async def planner() -> AsyncIterator[Planner]:
    workers = Planner(workers=1, budget=Budget(seconds=10.0))
    yield workers
    await workers.close()


async def test_deep_parameters_are_a_render_error_and_the_worker_stays_in_the_pool(
    planner: Planner,
) -> None:
    with pytest.raises(RenderError, match="nested deeper than"):
        await planner.plan(a_run("deep", nested(DEPTH)), DEFINITION, PLANE)
    with pytest.raises(RenderError, match="nested deeper than"):
        await planner.plan(a_run("deep2", nested(DEPTH)), DEFINITION, PLANE)
    # Another tenant's ordinary run still renders (the one worker was not lost); the
    # wait_for only keeps a regression from hanging the suite.
    plan = await asyncio.wait_for(planner.plan(a_run("ok", {"n": 1}), DEFINITION, PLANE), 60)
    assert plan.workflow["metadata"]["name"] == "ok"


async def test_a_deep_definition_is_a_render_error(planner: Planner) -> None:
    definition: dict[str, Any] = copy.deepcopy(DEFINITION)
    definition["spec"]["runTemplate"]["spec"]["x"] = nested(DEPTH)
    with pytest.raises(RenderError, match="Workflow's spec: nested deeper than"):
        await planner.plan(a_run("r", {}), definition, PLANE)


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[harness.World]:
    # lightkube's to_dict is a shallow copy; the harness's deepcopy would itself overflow.
    monkeypatch.setattr(harness, "answer", lambda data: SimpleNamespace(to_dict=lambda: dict(data)))
    made = harness.World("r1")
    yield made
    await made.close()


async def test_a_deep_run_fails_with_a_message_instead_of_raising_on_every_pass(
    world: harness.World,
) -> None:
    run = world.run("r1")
    run["spec"]["workflow"]["parameters"] = {**harness.PARAMS, "x": nested(DEPTH)}
    world.reconciler.cache.remember(WORKFLOW_RUN, run)

    await world.reconciler.reconcile(("team", "r1"))

    conditions = {c["type"]: c for c in world.run("r1")["status"]["conditions"]}
    assert conditions["WorkflowCompleted"]["reason"] == "RenderFailed"


async def test_a_started_run_made_deep_afterwards_is_still_cleaned_up(
    world: harness.World,
) -> None:
    await world.reconciler.reconcile(("team", "r1"))
    run = world.run("r1")
    assert RUN_FINALIZER in run["metadata"]["finalizers"]
    run["spec"]["workflow"]["parameters"] = {**harness.PARAMS, "x": nested(DEPTH)}
    run["metadata"]["deletionTimestamp"] = rfc3339(utcnow())
    world.reconciler.cache.remember(WORKFLOW_RUN, run)

    await world.reconciler.reconcile(("team", "r1"))

    deletes = [r for r in world.plane.requests if r.startswith("DELETE")]
    assert any(r.endswith("/workflows/r1") for r in deletes)
    assert RUN_FINALIZER not in world.run("r1")["metadata"]["finalizers"]


def test_json_copy_is_deep_and_independent() -> None:
    source = {"a": [{"b": 1}, [2, {"c": "d"}]], "e": None, "deep": nested(DEPTH)}
    made = json_copy(source)
    assert made["a"] == source["a"] and made["e"] is None
    made["a"][0]["b"] = 9
    made["a"][1][1]["c"] = "x"
    assert source["a"] == [{"b": 1}, [2, {"c": "d"}]]
