"""Plan runs off the event loop: tenant-written CEL is rendered in worker processes.

The controller shares its loop with the gateway in ``wpctl control-plane``; a costly
expression evaluated there froze every tenant's requests (17.8 s in the isolation report).
Here each render runs in a ``kits.workers`` pool with a wall-time and memory budget, and one
namespace renders one run at a time, so one tenant can hold at most one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from workflowplane.kits.workers import (
    Budget,
    ResultTooLarge,
    WorkerCrashed,
    WorkerPool,
    WorkerTimeout,
)
from workflowplane.runs.plan import PlaneTarget, RunPlan, check_nesting, plan_run
from workflowplane.runs.render import RenderError

DEFAULT_BUDGET = Budget(seconds=2.0, memory_bytes=512 * 2**20, result_bytes=4 * 2**20)


class Planner:
    """``await planner.plan(run, definition, target)``: :func:`plan_run` in a worker; a
    render over budget is a :class:`RenderError` that says which budget."""

    def __init__(self, *, workers: int = 2, budget: Budget = DEFAULT_BUDGET) -> None:
        self._pool = WorkerPool(size=workers, budget=budget, preload=["workflowplane.runs.plan"])
        self._busy: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    async def plan(
        self, run: Mapping[str, Any], definition: Mapping[str, Any], target: PlaneTarget
    ) -> RunPlan:
        budget = self._pool.budget
        async with self._one_per_namespace(str(run["metadata"].get("namespace", ""))):
            try:
                return await self._pool.run(plan_run, dict(run), dict(definition), target)
            except WorkerTimeout as exc:
                raise RenderError(
                    f"rendering took longer than {budget.seconds:g}s and was stopped "
                    "(an expression too costly to evaluate?)"
                ) from exc
            except (WorkerCrashed, MemoryError) as exc:
                raise RenderError(
                    f"rendering needed more than {budget.memory_bytes // 2**20} MiB and was "
                    "stopped (an expression that builds a huge value?)"
                ) from exc
            except ResultTooLarge as exc:
                raise RenderError(f"the rendered objects are too large: {exc}") from exc
            except RecursionError as exc:
                # The run or definition nested too deeply to be sent to a worker (which checks
                # the depth of both, in ``plan_run``): walked here only then, for the message.
                # Walking every run here, on the shared loop, took 0.5 s for a spec of
                # 450,000 objects, on every retry of its start.
                check_nesting(run.get("spec"), "the WorkflowRun's spec")
                check_nesting(definition.get("spec"), f"the {definition.get('kind')}'s spec")
                # or a rendered value (CEL can build one) nested too deeply to come back
                raise RenderError(f"a rendered value is nested too deeply ({exc})") from exc

    @contextlib.asynccontextmanager
    async def _one_per_namespace(self, namespace: str) -> AsyncIterator[None]:
        """A lock per namespace that exists only while someone holds or waits for it."""
        lock = self._busy.setdefault(namespace, asyncio.Lock())
        self._waiting[namespace] = self._waiting.get(namespace, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[namespace] -= 1
            if self._waiting[namespace] == 0:
                del self._waiting[namespace], self._busy[namespace]

    async def close(self) -> None:
        await self._pool.close()
