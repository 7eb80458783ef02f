"""Stand-ins shared by the tests of WebSocket frame readers run against aiohttp's own."""

from __future__ import annotations

import struct
from typing import Any

from aiohttp._websocket.helpers import websocket_mask


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


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0
) -> bytes:
    """One frame as a server writes it (unmasked), or masked with ``mask``."""
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, bit | 127, length)
    if not mask:
        return header + payload
    masked = bytearray(payload)
    if masked:
        websocket_mask(mask, masked)  # aiohttp's: a large payload in no time
    return header + mask + bytes(masked)
