"""Rendering in worker processes: a costly expression fails as RenderError within its budget
and holds no more than its own namespace's turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from workflowplane.kits.workers import Budget
from workflowplane.runs.plan import PlaneTarget, plan_run
from workflowplane.runs.planner import Planner
from workflowplane.runs.render import RenderError

PLANE = PlaneTarget(kind="ClusterWorkflowPlane", namespace=None, name="default", plane_id="p1")
HUNDRED = "[" + ",".join(str(n) for n in range(100)) + "]"
# A million evaluations: several seconds in the CEL interpreter, far over a 1 s budget.
BOMB = f"${{{HUNDRED}.map(a, {HUNDRED}.map(b, {HUNDRED}.map(c, a + b + c))).size()}}"


def run(namespace: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"}}


def definition(expression: str = "${metadata.workflowRunName}") -> dict[str, Any]:
    return {
        "kind": "Workflow",
        "spec": {"runTemplate": {"spec": {"entrypoint": "main", "arguments": expression}}},
    }


@pytest.fixture
async def planner() -> AsyncIterator[Planner]:
    workers = Planner(workers=2, budget=Budget(seconds=1.0))
    yield workers
    await workers.close()


async def test_a_plan_from_a_worker_is_the_plan(planner: Planner) -> None:
    planned = await planner.plan(run("team", "r1"), definition(), PLANE)
    assert planned == plan_run(run("team", "r1"), definition(), PLANE)
    assert planned.workflow["spec"]["arguments"] == "r1"


async def test_render_errors_keep_their_message(planner: Planner) -> None:
    with pytest.raises(RenderError, match=r"runTemplate\.spec\.arguments: \$\{nope\.x\}"):
        await planner.plan(run("team", "r1"), definition("${nope.x}"), PLANE)


async def test_a_costly_expression_is_stopped_as_a_render_error(planner: Planner) -> None:
    with pytest.raises(RenderError, match="took longer than 1s and was stopped"):
        await planner.plan(run("team", "bomb"), definition(BOMB), PLANE)
    assert (await planner.plan(run("team", "r2"), definition(), PLANE)).workflow


async def test_one_namespace_holds_one_worker_however_many_bombs_it_sends(
    planner: Planner,
) -> None:
    """Tenant A sends two bombs at once; tenant B's ordinary run is planned while A's first
    bomb still burns (A's second waits for A's turn, not for a worker)."""
    finished: list[str] = []

    async def plan(namespace: str, name: str, expression: str) -> None:
        with contextlib.suppress(RenderError):
            await planner.plan(run(namespace, name), definition(expression), PLANE)
        finished.append(name)

    bombs = [asyncio.create_task(plan("tenant-a", f"bomb{i}", BOMB)) for i in range(2)]
    await asyncio.sleep(0)  # both bombs queued first
    await plan("tenant-b", "ordinary", "${metadata.workflowRunName}")
    await asyncio.gather(*bombs)
    assert finished[0] == "ordinary", finished
