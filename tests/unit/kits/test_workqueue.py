"""The work queue: one reconcile per key at a time, coalescing, requeue, backoff, close.

Every test runs on looptime's fake clock, so delays of seconds cost no real time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from workflowplane.kits import workqueue as queue_module
from workflowplane.kits.errors import PermanentError, TransientError
from workflowplane.kits.workqueue import BUG_BACKOFF, MAX_BACKOFF, WorkQueue

pytestmark = pytest.mark.looptime


def now() -> float:
    return asyncio.get_running_loop().time()


class Recorder:
    """A handler that records (key, loop time) per call and runs a per-call behaviour."""

    def __init__(self, *behaviours: Callable[[str], Awaitable[float | None]]) -> None:
        self.calls: list[tuple[str, float]] = []
        self._behaviours = list(behaviours)
        self.start = now()

    async def __call__(self, key: str) -> float | None:
        self.calls.append((key, round(now() - self.start, 6)))
        if self._behaviours:
            return await self._behaviours.pop(0)(key)
        return None

    def times(self, key: str = "k") -> list[float]:
        return [t for k, t in self.calls if k == key]


def returning(value: float | None) -> Callable[[str], Awaitable[float | None]]:
    async def behaviour(key: str) -> float | None:
        return value

    return behaviour


def raising(
    error: type[Exception] = TransientError,
) -> Callable[[str], Awaitable[float | None]]:
    async def behaviour(key: str) -> float | None:
        raise error(f"boom {key}")

    return behaviour


def waiting_for(event: asyncio.Event) -> Callable[[str], Awaitable[float | None]]:
    async def behaviour(key: str) -> float | None:
        await event.wait()
        return None

    return behaviour


async def one_slot_busy(first: str, second: str) -> tuple[asyncio.Event, Recorder, WorkQueue[str]]:
    """A queue of one slot whose first pass (``first``) holds it until the event is set,
    ``second`` added behind it; a second of the clock later."""
    release = asyncio.Event()
    handler = Recorder(waiting_for(release))
    queue: WorkQueue[str] = WorkQueue(handler, concurrency=1)
    queue.add(first)
    queue.add(second)
    await asyncio.sleep(1)
    return release, handler, queue


@pytest.fixture
def full_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the jitter out of the backoff: every delay is the full 2**failures."""
    monkeypatch.setattr(queue_module.random, "uniform", lambda low, high: high)


async def test_add_runs_the_handler_once() -> None:
    handler = Recorder()
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(1)
    assert handler.calls == [("k", 0)]
    await queue.close()


async def test_adds_for_a_busy_key_coalesce_into_exactly_one_more_pass() -> None:
    release = asyncio.Event()
    handler = Recorder(waiting_for(release))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(0)
    assert len(handler.calls) == 1
    for _ in range(5):
        queue.add("k")
    await asyncio.sleep(1)
    assert len(handler.calls) == 1, "a busy key must not run twice at once"
    release.set()
    await asyncio.sleep(1)
    assert len(handler.calls) == 2
    await asyncio.sleep(100)
    assert len(handler.calls) == 2
    await queue.close()


async def test_different_keys_run_concurrently() -> None:
    release = asyncio.Event()
    handler = Recorder(waiting_for(release), waiting_for(release))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("a")
    queue.add("b")
    await asyncio.sleep(1)
    assert sorted(k for k, _ in handler.calls) == ["a", "b"]
    release.set()
    await queue.close()


async def test_concurrency_limits_how_many_keys_run_at_once() -> None:
    release, handler, queue = await one_slot_busy("a", "b")
    assert [k for k, _ in handler.calls] == ["a"]
    release.set()
    await asyncio.sleep(1)
    assert [k for k, _ in handler.calls] == ["a", "b"]
    await queue.close()


async def test_returned_delay_requeues_the_key_after_that_delay() -> None:
    handler = Recorder(returning(30.0), returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(29)
    assert handler.times() == [0]
    await asyncio.sleep(2)
    assert handler.times() == [0, 30]
    await asyncio.sleep(100)
    assert handler.times() == [0, 30], "returning None must not requeue"
    await queue.close()


async def test_delayed_add_waits_and_the_earliest_request_wins() -> None:
    handler = Recorder()
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k", 50)
    queue.add("k", 10)
    queue.add("k", 40)
    await asyncio.sleep(100)
    assert handler.times() == [10]
    await queue.close()


async def test_exception_backs_off_and_retries(full_backoff: None) -> None:
    handler = Recorder(raising(), raising(), raising(), returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(100)
    assert handler.times() == [0, 2, 6, 14]
    await queue.close()


async def test_backoff_is_jittered_down_to_half_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module.random, "uniform", lambda low, high: low)
    handler = Recorder(raising(), raising(), returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(100)
    assert handler.times() == [0, 1, 3]
    await queue.close()


async def test_success_resets_the_backoff(full_backoff: None) -> None:
    handler = Recorder(raising(), raising(), returning(50.0), raising(), returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(200)
    # fail → 2s, fail → 4s, succeed and ask for 50s, fail → 2s again (not 8s)
    assert handler.times() == [0, 2, 6, 56, 58]
    await queue.close()


async def test_backoff_is_capped(full_backoff: None) -> None:
    handler = Recorder(*[raising()] * 8, returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(1000)
    times = handler.times()
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps == [2, 4, 8, 16, 32, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    await queue.close()


async def test_failures_back_off_per_key(full_backoff: None) -> None:
    async def handler(key: str) -> float | None:
        calls.append((key, round(now() - start, 6)))  # the session loop's clock is large
        if key == "bad" and len([k for k, _ in calls if k == "bad"]) < 3:
            raise TransientError("bad")
        return None

    calls: list[tuple[str, float]] = []
    start = now()
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("bad")
    queue.add("good")
    await asyncio.sleep(3)
    queue.add("good")
    await asyncio.sleep(100)
    assert [t for k, t in calls if k == "good"] == [0, 3]
    assert [t for k, t in calls if k == "bad"] == [0, 2, 6]
    await queue.close()


async def test_close_cancels_pending_timers() -> None:
    handler = Recorder(returning(10.0))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    queue.add("other", 5)
    await asyncio.sleep(1)
    await queue.close()
    await asyncio.sleep(100)
    assert handler.calls == [("k", 0)]


async def test_close_cancels_running_reconciles() -> None:
    cancelled = asyncio.Event()

    async def handler(key: str) -> float | None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(1)
    await queue.close()
    assert cancelled.is_set()


async def test_adds_after_close_are_ignored() -> None:
    handler = Recorder()
    queue: WorkQueue[str] = WorkQueue(handler)
    await queue.close()
    queue.add("k")
    queue.add("k", delay=1)
    await asyncio.sleep(2)
    assert handler.calls == []


async def test_a_permanent_failure_waits_for_the_next_event() -> None:
    handler = Recorder(raising(PermanentError), returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(1000)
    assert handler.times() == [0], "a permanent failure must not be retried by itself"
    queue.add("k")
    await asyncio.sleep(1)
    assert handler.times() == [0, 1000]
    await queue.close()


async def test_a_bug_is_retried_only_after_the_longest_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Recorder(raising(KeyError), raising(KeyError), returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(1000)
    assert handler.times() == [0, BUG_BACKOFF, 2 * BUG_BACKOFF]
    assert any(r.exc_info and "bug" in r.getMessage() for r in caplog.records)
    await queue.close()


async def test_a_peers_retry_after_is_honoured(full_backoff: None) -> None:
    async def slow_down(key: str) -> float | None:
        raise TransientError("busy", status=429, retry_after=40.0)

    handler = Recorder(slow_down, returning(None))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(100)
    assert handler.times() == [0, 40]
    await queue.close()


async def test_len_counts_running_and_scheduled_keys() -> None:
    release = asyncio.Event()
    handler = Recorder(waiting_for(release))
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("running")
    queue.add("later", 50)
    await asyncio.sleep(0)
    assert len(queue) == 2
    release.set()
    await asyncio.sleep(100)
    assert len(queue) == 0
    await queue.close()


async def test_a_paused_queue_runs_nothing_and_resumes_with_each_key_added_meanwhile() -> None:
    """Another replica leads: kopf pauses its handlers, and this queue (its timers and the
    followers that feed it are the process's own) must not reconcile beside the leader."""
    handler = Recorder(returning(5.0))  # k is looked at again in 5 s
    queue: WorkQueue[str] = WorkQueue(handler)
    queue.add("k")
    await asyncio.sleep(1)
    queue.pause()
    queue.add("a")
    queue.add("a")
    await asyncio.sleep(60)  # k's requeue fired meanwhile
    assert [k for k, _ in handler.calls] == ["k"]
    queue.resume()
    await asyncio.sleep(1)
    assert sorted(k for k, _ in handler.calls) == ["a", "k", "k"]  # each key once
    await queue.close()


async def test_a_key_waiting_for_a_slot_when_paused_waits_for_the_resume() -> None:
    release, handler, queue = await one_slot_busy("busy", "next")  # next waits for the slot
    queue.pause()
    release.set()  # the running pass ends; the waiting one must not start
    await asyncio.sleep(1)
    assert [k for k, _ in handler.calls] == ["busy"]
    queue.resume()
    await asyncio.sleep(1)
    assert [k for k, _ in handler.calls] == ["busy", "next"]
    await queue.close()
