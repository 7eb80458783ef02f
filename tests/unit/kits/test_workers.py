"""The worker pool: results and errors come back, overruns and memory bombs are contained,
and the event loop stays free while a worker is busy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from workflowplane.kits.workers import (
    Budget,
    ResultTooLarge,
    WorkerCrashed,
    WorkerPool,
    WorkerTimeout,
)


def double(value: int) -> int:
    return value * 2


def fail(message: str) -> None:
    raise ValueError(message)


def spin(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "done"


def hog_memory(megabytes: int) -> int:
    return len(bytearray(megabytes * 2**20))


def big_result(megabytes: int) -> bytes:
    return b"x" * (megabytes * 2**20)


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(
        size=2, budget=Budget(seconds=1.0, memory_bytes=256 * 2**20, result_bytes=2**20)
    )
    yield workers
    await workers.close()


async def test_results_and_errors_come_back(pool: WorkerPool) -> None:
    assert await pool.run(double, 21) == 42
    with pytest.raises(ValueError, match="named problem"):
        await pool.run(fail, "named problem")
    assert await pool.run(double, 2) == 4, "a failed call leaves its worker usable"


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


async def test_a_call_that_does_not_pickle_leaves_no_worker_lost() -> None:
    """Arguments nested past the recursion limit cannot be sent; each such call must not
    take a worker out of the pool (a pool of one would never run anything again)."""
    workers = WorkerPool(size=1, budget=Budget(seconds=5.0))
    try:
        for _ in range(3):  # a lost worker: the next call waits for one for ever
            with pytest.raises(RecursionError):
                await asyncio.wait_for(workers.run(len, nested(100_000)), 30)
        assert await asyncio.wait_for(workers.run(double, 4), 30) == 8
    finally:
        await workers.close()


async def test_an_overrun_is_killed_and_the_pool_recovers(pool: WorkerPool) -> None:
    with pytest.raises(WorkerTimeout, match="longer than 1s"):
        await pool.run(spin, 30.0)
    assert await pool.run(double, 5) == 10


async def test_the_loop_stays_responsive_while_workers_spin() -> None:
    """Ticks of 10 ms keep coming while both workers burn CPU (in the loop, they would stop)."""
    pool = WorkerPool(size=2, budget=Budget(seconds=30.0), preload=[__name__])
    spinning = [asyncio.create_task(pool.run(spin, 2.0)) for _ in range(2)]
    gaps: list[float] = []
    last = time.monotonic()
    while not all(task.done() for task in spinning):
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert [task.result() for task in spinning] == ["done", "done"]
    await pool.close()
    # In the loop, one gap would be at least the 2 s spin; 1 s leaves room for a busy machine.
    assert len(gaps) > 10 and max(gaps) < 1.0


async def test_a_memory_bomb_kills_only_its_worker(pool: WorkerPool) -> None:
    with pytest.raises((WorkerCrashed, MemoryError)):
        await pool.run(hog_memory, 1024)
    assert await pool.run(double, 1) == 2


async def test_an_oversized_result_is_refused(pool: WorkerPool) -> None:
    with pytest.raises(ResultTooLarge, match="over the limit"):
        await pool.run(big_result, 4)
    assert await pool.run(double, 3) == 6
