"""Stand-ins shared by the tests of WebSocket frame readers run against aiohttp's own."""

from __future__ import annotations


class FakeProtocol:
    """What aiohttp's data queue asks of the HTTP protocol: pause and resume reading."""

    def __init__(self) -> None:
        self._reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
