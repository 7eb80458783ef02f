"""A counting semaphore whose free slot can also be taken without waiting.

asyncio's ``Semaphore`` can only be acquired by awaiting it, so a caller that serves a
request inside a read callback (no task: see ``kits.http1.QuickExchange``) cannot take a slot
there. ``Slots.try_take`` can, and only when nobody waits for one: the callbacks never jump
the line of callers that wait. A freed slot goes straight to the first waiter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class Slots:
    """At most ``count`` holders at once; waiters served in arrival order."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """Whether ``acquire`` would wait."""
        return self._free <= 0 or any(not waiter.done() for waiter in self._waiters)

    def try_take(self) -> bool:
        """Take a free slot now, if there is one and nobody waits for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self.release()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
