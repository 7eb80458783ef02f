"""A work queue in the manner of controller-runtime: at most one reconcile per key at a time,
events for a busy key coalesce into one more pass, and a reconcile says when to look again.

The one scheduling mechanism of every reconciler here: events (kopf, the gateway's push
channel, a resync tick) only ``add`` keys; this queue decides when work happens. Failures are
handled by kind (``kits.errors``): a transient one backs off per key and retries; a permanent
one is logged and waits for the next event; anything else is a bug, logged with its traceback
and retried with the longest backoff, so a bug is loud and never spins.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from workflowplane.kits.errors import is_expected, is_transient

log = logging.getLogger(__name__)
Key = TypeVar("Key", bound=Hashable)
MAX_BACKOFF = 60.0
BUG_BACKOFF = 300.0


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
        except Exception as exc:
            if is_expected(exc) and not is_transient(exc):
                self._failures.pop(key, None)
                log.error("reconcile of %s failed permanently (until it changes): %s", key, exc)
                return None
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            if is_transient(exc):
                delay = self._backoff(failures, getattr(exc, "retry_after", None))
                log.info("reconcile of %s: %s; retry %d in %.1fs", key, exc, failures, delay)
                return delay
            log.exception("bug: reconcile of %s raised; retrying in %.0fs", key, BUG_BACKOFF)
            return BUG_BACKOFF
        self._failures.pop(key, None)
        return requeue

    @staticmethod
    def _backoff(failures: int, retry_after: float | None) -> float:
        """Capped exponential backoff with jitter; a peer's own retry-after wins if longer."""
        delay = min(2.0**failures, MAX_BACKOFF) * random.uniform(0.5, 1.0)
        return max(delay, retry_after or 0.0)

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
