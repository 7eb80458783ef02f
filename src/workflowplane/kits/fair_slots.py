"""A semaphore that hands its free slots to groups of waiters in turn, not in arrival order.

With one first-come queue, whoever adds the most work waits in front of everyone else: a
tenant that creates 10,000 runs would put each other tenant's next run behind all of them.
Here each group (a namespace, say) waits in its own line, and a freed slot goes to the group
at the front of the round, which then goes to the back: a group with one waiter waits for at
most one slot of each other group that is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Hashable


class FairSlots:
    """At most ``slots`` holders at once; waiting groups served round-robin, each in order."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        # Insertion order is the round: the group at the front is served next.
        self._lines: dict[Hashable, deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, group: Hashable) -> AsyncIterator[None]:
        await self.acquire(group)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, group: Hashable) -> None:
        if self._free > 0 and not self._lines:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines.setdefault(group, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same pass it was cancelled: pass it on
            else:
                self._leave(group, waiter)
            raise

    def release(self) -> None:
        while self._lines:
            group = next(iter(self._lines))
            line = self._lines.pop(group)
            waiter = line.popleft()
            if line:
                self._lines[group] = line  # to the back of the round
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _leave(self, group: Hashable, waiter: asyncio.Future[None]) -> None:
        line = self._lines.get(group)
        if line is None:
            return
        with contextlib.suppress(ValueError):
            line.remove(waiter)
        if not line:
            del self._lines[group]

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())
