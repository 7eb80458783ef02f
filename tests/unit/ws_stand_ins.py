"""Stand-ins shared by the tests of WebSocket frame readers run against aiohttp's own."""

from __future__ import annotations

from typing import Any


class FakeProtocol:
    """What aiohttp's data queue asks of the HTTP protocol: pause and resume reading."""

    def __init__(self) -> None:
        self._reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False


class Flow:
    """The connection's reading as a test sees it: holds, releases and deferred calls."""

    def __init__(self) -> None:
        self.holds = self.releases = 0
        self.deferred: list[Any] = []

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.releases += 1

    def later(self, callback: Any) -> None:
        self.deferred.append(callback)
