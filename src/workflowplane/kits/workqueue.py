"""A work queue in the manner of controller-runtime: at most one reconcile per key at a time,
events for a busy key coalesce into one more pass, and a reconcile says when to look again.

The one scheduling mechanism of every reconciler here: events (kopf, the gateway's push
channel, a resync tick) only ``add`` keys; this queue decides when work happens. Failures are
handled by kind (``kits.errors``): a transient one backs off per key and retries; a permanent
one is logged and waits for the next event; anything else is a bug, logged with its traceback
and retried with the longest backoff, so a bug is loud and never spins.

Optionally observed (``QueueMetrics``, on a registry the caller owns, since several queues of
several controllers may share one process) and watched: every finished pass tells the
queue's listeners, so a ``kits.health.ProgressWatch`` can tell "idle" from "stuck".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workflowplane.kits.errors import is_expected, is_transient
from workflowplane.kits.fair_slots import FairSlots
from workflowplane.kits.health import ProgressWatch

log = logging.getLogger(__name__)
Key = TypeVar("Key", bound=Hashable)
MAX_BACKOFF = 60.0
BUG_BACKOFF = 300.0
# What one pass came to: done, done but look again after a delay, or failed (by kind).
Result = Literal["success", "requeue", "transient", "permanent", "bug"]
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class QueueMetrics:
    """The series of every work queue of one process, labelled by queue name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "workflowplane_workqueue_depth",
            "Keys due now: running a pass or waiting for a worker slot",
            ["queue"],
            registry=registry,
        )
        self.delayed = Gauge(
            "workflowplane_workqueue_delayed",
            "Keys waiting for a requeue-after or a backoff to expire",
            ["queue"],
            registry=registry,
        )
        self.duration = Histogram(
            "workflowplane_reconcile_duration_seconds",
            "Duration of one reconcile pass, failed ones included",
            ["queue"],
            registry=registry,
            buckets=RECONCILE_BUCKETS,
        )
        self.results = Counter(
            "workflowplane_reconcile_total",
            "Reconcile passes by outcome: success, requeue (done, look again after), "
            "transient/permanent (a failure of the world), bug",
            ["queue", "result"],
            registry=registry,
        )

    def attach(self, name: str, queue: WorkQueue[Any]) -> None:
        """Depth gauges read the queue when scraped; results start at 0 so rates exist."""
        self.depth.labels(queue=name).set_function(queue.due)
        self.delayed.labels(queue=name).set_function(queue.delayed)
        for result in ("success", "requeue", "transient", "permanent", "bug"):
            self.results.labels(queue=name, result=result)

    def observe(self, name: str, seconds: float, result: Result) -> None:
        self.duration.labels(queue=name).observe(seconds)
        self.results.labels(queue=name, result=result).inc()


class WorkQueue(Generic[Key]):
    def __init__(
        self,
        handle: Callable[[Key], Awaitable[float | None]],
        *,
        concurrency: int = 16,
        name: str = "queue",
        metrics: QueueMetrics | None = None,
        fair_by: Callable[[Key], Hashable] = lambda _key: None,
    ) -> None:
        """``fair_by``: the group of a key (its tenant); keys waiting for a slot are served
        a group at a time in turn, so one group's many keys cannot hold back the others'."""
        self.name = name
        self._handle = handle
        self._metrics = metrics
        self._on_pass: list[Callable[[], None]] = []
        self._slots = FairSlots(concurrency)
        self._group_of = fair_by
        self._busy: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._paused = False
        self._held: set[Key] = set()  # added while paused: run on resume
        if metrics is not None:
            metrics.attach(name, self)

    def on_pass(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every finished pass, whatever its outcome."""
        self._on_pass.append(listener)

    def progress_watch(self, limit: float) -> ProgressWatch:
        """A health check: stuck when keys are due and no pass finished for ``limit`` s.

        Keys only waiting for a timer (resync, backoff, TTL) are not work pending: a queue
        whose every key sleeps for a day is idle, not stuck.
        """
        watch = ProgressWatch(self.name, self.due, limit=limit)
        self.on_pass(watch.progressed)
        return watch

    def pause(self) -> None:
        """Run no pass from now on (one running ends): what is added meanwhile waits, each
        key once, until :meth:`resume` (another replica leads meanwhile)."""
        self._paused = True

    def resume(self) -> None:
        """Run again, starting with every key added while paused."""
        if not self._paused:
            return
        self._paused = False
        held, self._held = self._held, set()
        for key in held:
            self.add(key)

    def add(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` now, or after ``delay`` seconds (the earliest request wins)."""
        if self._closed:
            return
        if delay > 0:
            self._add_later(key, delay)
            return
        if self._paused:
            self._held.add(key)
            return
        if key in self._busy:
            self._dirty.add(key)
            return
        self._busy.add(key)
        task = asyncio.create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _add_later(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _run(self, key: Key) -> None:
        requeue: float | None = None
        try:
            while True:
                self._dirty.discard(key)
                async with self._slots.slot(self._group_of(key)):
                    if self._paused:  # paused while it waited for a slot
                        self._held.add(key)
                        return
                    requeue = await self._attempt(key)
                if key not in self._dirty:
                    break
        finally:
            self._busy.discard(key)
        if requeue is not None:
            self.add(key, requeue)

    async def _attempt(self, key: Key) -> float | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        requeue, result = await self._outcome(key)
        if self._metrics is not None:
            self._metrics.observe(self.name, loop.time() - started, result)
        for listener in self._on_pass:
            listener()
        return requeue

    async def _outcome(self, key: Key) -> tuple[float | None, Result]:
        """One pass, and when to look again: its own answer, or the failure's backoff."""
        try:
            requeue = await self._handle(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_expected(exc) and not is_transient(exc):
                self._failures.pop(key, None)
                log.error("reconcile of %s failed permanently (until it changes): %s", key, exc)
                return None, "permanent"
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            if is_transient(exc):
                delay = self._backoff(failures, getattr(exc, "retry_after", None))
                log.info("reconcile of %s: %s; retry %d in %.1fs", key, exc, failures, delay)
                return delay, "transient"
            log.exception("bug: reconcile of %s raised; retrying in %.0fs", key, BUG_BACKOFF)
            return BUG_BACKOFF, "bug"
        self._failures.pop(key, None)
        return requeue, "success" if requeue is None else "requeue"

    @staticmethod
    def _backoff(failures: int, retry_after: float | None) -> float:
        """Capped exponential backoff with jitter; a peer's own retry-after wins if longer."""
        delay = min(2.0**failures, MAX_BACKOFF) * random.uniform(0.5, 1.0)
        return max(delay, retry_after or 0.0)

    def due(self) -> int:
        """Keys running a pass or waiting for a worker slot."""
        return len(self._busy)

    def delayed(self) -> int:
        """Keys waiting for their timer (requeue-after, backoff); a due key may have one too."""
        return len(self._timers)

    def __len__(self) -> int:
        """Keys running or waiting for a slot, plus keys with a timer (the queue's depth)."""
        return len(self._busy) + len(self._timers)

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
