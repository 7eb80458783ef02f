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
from workflowplane.runs.plan import PlaneTarget, RunPlan, plan_run
from workflowplane.runs.render import RenderError

DEFAULT_BUDGET = Budget(seconds=2.0, memory_bytes=512 * 2**20, result_bytes=4 * 2**20)
# How deeply a run's spec or its definition's spec may nest (a real Argo Workflow nests about
# fifteen levels). Checked without recursion before anything is sent to a worker: a value
# nested deeper than Python's recursion limit cannot be pickled, and a send that fails that
# way used to keep the worker out of the pool for good (two such runs and no tenant's run
# rendered again).
MAX_NESTING = 100


def check_nesting(value: Any, where: str, limit: int = MAX_NESTING) -> None:
    """A :class:`RenderError` when ``value`` (JSON-like) nests deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise RenderError(f"{where}: nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


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
        check_nesting(run.get("spec"), "the WorkflowRun's spec")
        check_nesting(definition.get("spec"), f"the {definition.get('kind')}'s spec")
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
            except RecursionError as exc:  # a rendered value (CEL can build one) nested too deep
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
