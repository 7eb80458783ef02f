"""A run's spec may be as large as the API server takes (about 1.5 MB: a tenant's
parameters), and each reconcile pass and each Argo change of the run took a copy of the whole
run on the event loop every tenant shares: 0.6-0.8 s for a spec of 450,000 empty objects, on
every pass (and a tenant can make passes by annotating its run). The controller changes only
its copy's metadata and status; the spec is shared, and must never be changed."""

from __future__ import annotations

import copy
import json

import pytest

from tests.unit.runs import test_deep_input as deep
from tests.unit.runs import test_run_reconciler as harness
from workflowplane.api.workflows import WORKFLOW_RUN, WorkflowRunResource
from workflowplane.kits.clock import rfc3339, utcnow
from workflowplane.kits.workers import Budget
from workflowplane.runs import planner as planner_module
from workflowplane.runs.cache import ObjectCache
from workflowplane.runs.planner import Planner
from workflowplane.runs.render import RenderError


async def test_a_runs_copy_shares_its_spec_and_owns_its_metadata_and_status() -> None:
    cache = ObjectCache(None)  # type: ignore[arg-type]
    run = harness.a_run("r1")
    run["status"] = {"conditions": [{"type": "WorkflowCompleted", "status": "False"}]}
    cache.remember(WORKFLOW_RUN, run)
    held = await cache.get(WorkflowRunResource, "r1", "team")
    assert held is not None

    made = await cache.copy(WorkflowRunResource, "r1", "team")
    assert made is not None
    assert made["spec"] is held["spec"]  # not walked: O(1) whatever its size
    made["metadata"].setdefault("annotations", {})["a"] = "b"
    made["metadata"]["finalizers"] = ["f"]
    made["status"]["conditions"][0]["status"] = "True"
    made["status"]["tasks"] = []
    assert "annotations" not in held["metadata"] and "finalizers" not in held["metadata"]
    assert held["status"] == {"conditions": [{"type": "WorkflowCompleted", "status": "False"}]}


async def test_a_runs_life_never_changes_the_spec_the_cache_holds() -> None:
    world = harness.World("r1")
    try:
        key = ("team", "r1")
        held = await world.reconciler.cache.get(WorkflowRunResource, "r1", "team")
        assert held is not None
        before = json.dumps(held["spec"], sort_keys=True)
        spec = held["spec"]

        await world.reconciler.reconcile(key)
        argo = {
            "metadata": {"name": "r1"},
            "status": {"phase": "Running", "nodes": {"a": {"type": "Pod", "displayName": "a"}}},
        }
        await world.reconciler.observe(key, "MODIFIED", argo)
        await world.reconciler.reconcile(key)
        run = copy.deepcopy(world.run("r1"))
        run["metadata"]["deletionTimestamp"] = rfc3339(utcnow())
        run["spec"] = spec  # the same spec object, as the cache would share it
        world.reconciler.cache.remember(WORKFLOW_RUN, run)
        await world.reconciler.reconcile(key)

        assert json.dumps(spec, sort_keys=True) == before
    finally:
        await world.close()


async def test_the_planner_does_not_walk_a_runs_spec_on_the_shared_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every start attempt (every 5 s against an unreachable plane) walked the run's
    and the definition's specs on the loop, 0.5 s for a spec of 450,000 objects. The worker
    checks their depth now; the loop walks them only when one is too deep to send."""
    walked: list[str] = []
    monkeypatch.setattr(planner_module, "check_nesting", lambda _, where: walked.append(where))
    workers = Planner(workers=1, budget=Budget(seconds=30.0))
    try:
        plan = await workers.plan(deep.a_run("r", {"n": 1}), deep.DEFINITION, deep.PLANE)
        assert plan.workflow["metadata"]["name"] == "r"
        assert walked == []
        with pytest.raises(RenderError, match="nested deeper than 100"):  # in the worker
            await workers.plan(deep.a_run("r", deep.nested(150)), deep.DEFINITION, deep.PLANE)
        assert walked == []
    finally:
        await workers.close()
