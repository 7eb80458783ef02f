"""Log lines that cannot flood: at most one per key per interval, with a count of the rest.

A peer that repeats a mistake once per frame would otherwise write one line per frame (a
flood of 17 MB in 10 s was seen), and the logging itself then slows every other peer down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    held_back: int = 0


class LogThrottle:
    """``log(key, level, msg, *args)`` writes at most one line per key per ``interval``
    seconds; lines held back are counted and the count is added to the next line written.

    Keys are whatever the caller repeats per source and kind (a connection and a problem);
    ``forget`` drops a source's keys when it goes away, so the table does not grow.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> bool:
        """Write the line unless one for ``key`` was written within the interval; whether
        it was written."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.started < self._interval:
            window.held_back += 1
            return False
        held_back = window.held_back if window is not None else 0
        self._windows[key] = _Window(now)
        if held_back:
            msg += " (and %d more like it in the previous %gs)"
            args = (*args, held_back, self._interval)
        self._logger.log(level, msg, *args)
        return True

    def forget(self, match: Callable[[Hashable], bool]) -> None:
        """Drop every key ``match`` accepts (a source that went away)."""
        for key in [k for k in self._windows if match(k)]:
            del self._windows[key]

    def __len__(self) -> int:
        return len(self._windows)
