"""A peer that reads nothing of what is written to it, told from one that reads slowly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StallWatch:
    """Calls ``stalled`` once a transport's write buffer has not shrunk for ``seconds``
    (its peer read nothing of it), unless ``until`` holds first. A deadline would cut off a
    slow reader of a large answer that is reading all along."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, seconds: float
    ) -> None:
        self._loop, self._transport, self._seconds = loop, transport, seconds
        self._timer: asyncio.TimerHandle | None = None

    def start(self, stalled: Callable[[], object], *, until: Callable[[], bool]) -> None:
        self._arm(self._transport.get_write_buffer_size(), stalled, until)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, unsent: int, stalled: Callable[[], object], until: Callable[[], bool]) -> None:
        self._timer = self._loop.call_later(self._seconds, self._check, unsent, stalled, until)

    def _check(self, unsent: int, stalled: Callable[[], object], until: Callable[[], bool]) -> None:
        self._timer = None
        if until():
            return
        now = self._transport.get_write_buffer_size()
        if now < unsent:
            self._arm(now, stalled, until)  # it read some: slow, not stalled
        else:
            stalled()
