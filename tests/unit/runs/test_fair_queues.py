"""Each tenant's runs wait behind each other's, not behind another tenant's: a namespace that
creates thousands of runs (or whose runs change at once) does not delay another namespace's
next run or status by all of them."""

from __future__ import annotations

import asyncio
from typing import Any

from workflowplane.kits.workqueue import WorkQueue
from workflowplane.runs.run_handlers import RunsController
from workflowplane.runs.tracker import ArgoTracker


async def taken_in_order(queue: WorkQueue[Any], keys: list[Any]) -> list[Any]:
    """The order in which ``queue`` (at one pass at a time) takes ``keys``."""
    handled: list[Any] = []
    gate, done = asyncio.Event(), asyncio.Event()

    async def handle(key: Any) -> None:
        handled.append(key)
        if len(handled) == len(keys):
            done.set()
        await gate.wait()

    queue._handle = handle
    queue._slots = type(queue._slots)(1)
    for key in keys:
        queue.add(key)
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(done.wait(), 5)
    await queue.close()
    return handled


async def test_runs_are_started_a_namespace_at_a_time() -> None:
    runs = RunsController(None, None)  # type: ignore[arg-type]
    keys = [("busy", f"r{n}") for n in range(30)] + [("quiet", "r")]
    assert (await taken_in_order(runs.queue, keys)).index(("quiet", "r")) <= 2


async def test_run_statuses_are_written_a_namespace_at_a_time() -> None:
    tracker = ArgoTracker(None, None, None)  # type: ignore[arg-type]
    keys = [("busy", f"r{n}") for n in range(30)] + [("quiet", "r")]
    assert (await taken_in_order(tracker._writes, keys)).index(("quiet", "r")) <= 2
    await tracker.close()
