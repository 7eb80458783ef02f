"""A work queue in the manner of controller-runtime: at most one reconcile per key at a time,
events for a busy key coalesce into one more pass, and a reconcile says when to look again.

kopf delivers the events; this queue decides when work happens. Failures back off per key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Key = TypeVar("Key", bound=Hashable)
MAX_BACKOFF = 60.0


class WorkQueue(Generic[Key]):
    def __init__(
        self, handle: Callable[[Key], Awaitable[float | None]], *, concurrency: int = 16
    ) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(concurrency)
        self._busy: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def add(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` now, or after ``delay`` seconds (the earliest request wins)."""
        if self._closed:
            return
        if delay > 0:
            self._add_later(key, delay)
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
                async with self._slots:
                    requeue = await self._attempt(key)
                if key not in self._dirty:
                    break
        finally:
            self._busy.discard(key)
        if requeue is not None:
            self.add(key, requeue)

    async def _attempt(self, key: Key) -> float | None:
        try:
            requeue = await self._handle(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = min(2.0**failures, MAX_BACKOFF) * random.uniform(0.5, 1.0)
            log.exception(
                "reconcile of %s failed (attempt %d); retrying in %.0fs", key, failures, delay
            )
            return delay
        self._failures.pop(key, None)
        return requeue

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
