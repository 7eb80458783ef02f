"""A peer that reads nothing of what is written to it, told from one that reads slowly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


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


def guard_writes(
    protocol: Any,
    transport: asyncio.Transport,
    seconds: float,
    stalled: Callable[[], object],
) -> Callable[[], None]:
    """Watch a client connection's writes as :class:`StallWatch` does a server's: armed when
    the transport pauses ``protocol``'s writing, disarmed when it resumes, ``stalled`` once
    the peer read nothing for ``seconds``. Nothing runs while writes flow. Returns the undo
    (the protocol is the connection's alone: its methods are wrapped on the instance)."""
    loop = asyncio.get_running_loop()
    pause, resume = protocol.pause_writing, protocol.resume_writing
    watch = StallWatch(loop, transport, seconds)

    def paused() -> None:
        pause()
        watch.stop()
        watch.start(stalled, until=transport.is_closing)

    def resumed() -> None:
        watch.stop()
        resume()

    protocol.pause_writing, protocol.resume_writing = paused, resumed

    def undo() -> None:
        watch.stop()
        protocol.pause_writing, protocol.resume_writing = pause, resume

    return undo
