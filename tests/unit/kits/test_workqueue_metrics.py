"""The work queue observed: reconcile results and durations, depth, and the progress watch
that tells a stuck queue from an idle one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from workflowplane.kits.errors import PermanentError, TransientError
from workflowplane.kits.workqueue import QueueMetrics, WorkQueue


async def _wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polls a plain predicate
            await asyncio.sleep(0.01)


def _sampler(registry: CollectorRegistry) -> Callable[..., float]:
    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"queue": "q", **labels}) or 0.0

    return sample


async def test_each_outcome_is_counted_and_timed_under_its_queue_name() -> None:
    outcomes: dict[str, object] = {
        "done": None,
        "later": 30.0,
        "busy": TransientError("503"),
        "bad": PermanentError("422"),
        "oops": KeyError("bug"),
    }

    async def handle(key: str) -> float | None:
        outcome = outcomes[key]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome if isinstance(outcome, float) else None

    registry = CollectorRegistry()
    queue: WorkQueue[str] = WorkQueue(handle, name="q", metrics=QueueMetrics(registry))
    sample = _sampler(registry)
    assert sample("workflowplane_reconcile_total", result="bug") == 0, "exported from the start"
    for key in outcomes:
        queue.add(key)
    await _wait_for(lambda: sample("workflowplane_reconcile_duration_seconds_count") == 5)
    for result in ("success", "requeue", "transient", "permanent", "bug"):
        assert sample("workflowplane_reconcile_total", result=result) == 1, result
    assert sample("workflowplane_workqueue_depth") == 0
    assert sample("workflowplane_workqueue_delayed") == 3, "requeue-after, backoff, bug backoff"
    await queue.close()
    assert sample("workflowplane_workqueue_delayed") == 0


async def test_depth_counts_keys_due_including_those_waiting_for_a_slot() -> None:
    release = asyncio.Event()

    async def handle(key: str) -> None:
        await release.wait()

    registry = CollectorRegistry()
    queue: WorkQueue[str] = WorkQueue(
        handle, concurrency=1, name="q", metrics=QueueMetrics(registry)
    )
    sample = _sampler(registry)
    queue.add("a")
    queue.add("b")
    assert sample("workflowplane_workqueue_depth") == 2
    release.set()
    await _wait_for(lambda: sample("workflowplane_workqueue_depth") == 0)
    await queue.close()


async def test_the_progress_watch_fails_while_a_pass_is_stuck_and_heals_when_it_ends() -> None:
    release = asyncio.Event()

    async def handle(key: str) -> None:
        if key == "stuck":
            await release.wait()

    queue: WorkQueue[str] = WorkQueue(handle, name="q")
    watch = queue.progress_watch(limit=0.1)
    queue.add("later", delay=3600)  # a key only waiting for its timer is not work pending
    await asyncio.sleep(0.2)
    assert watch.verdict().ok, "idle (a timer only) is healthy"
    queue.add("stuck")
    await _wait_for(lambda: not watch.verdict().ok)
    assert watch.verdict().detail.startswith("q: 1 pending, no progress")
    release.set()
    await _wait_for(lambda: watch.verdict().ok)
    await queue.close()
