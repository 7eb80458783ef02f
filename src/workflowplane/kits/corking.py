"""Writes made in one pass of the event loop leave a socket as one write.

A tunnel carries many requests on one connection. Under load the frames of several answers are
written in the same pass of the loop; written one by one, each is its own TLS record and its
own ``send`` system call (which on loopback also does the receiver's TCP work, and wakes it).
Held until the end of the pass and joined, they are one record run and one call. A large write
is never joined: what is held goes first, then it, as they came. A writer that knows its frame
is alone (nothing else in flight) flushes at once: the rest of the pass (the cleanup after an
answer, another trip through the loop) would only delay it.

Install on aiohttp's ``WebSocketWriter`` (its ``transport`` attribute, pinned with aiohttp).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

JOIN_BELOW: Final = 64 * 1024  # larger writes are not copied into a joined buffer
CONTROL_OPCODES: Final = 0x8  # and above: close, ping, pong


class CorkedTransport:
    """A transport whose small writes are held until the loop's next pass, then joined."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes | bytearray | memoryview] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= JOIN_BELOW:
            self._write_through([data])
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._held_bytes += len(data)

    def writelines(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        listed = list(parts)
        if sum(map(len, listed)) >= JOIN_BELOW:
            self._write_through(listed)
            return
        for part in listed:
            self.write(part)

    def _write_through(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """What is held, then ``parts``, unjoined (TLS transports take the pieces as they are)."""
        held, self._held, self._held_bytes = self._held, [], 0
        self._transport.writelines([*held, *parts])

    def flush(self) -> None:
        """Send what is held now (also before the transport is closed)."""
        if not self._held:
            return
        held, self._held, self._held_bytes = self._held, [], 0
        if self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def cork(writer: Any) -> CorkedTransport | None:
    """Make ``writer`` (aiohttp's ``WebSocketWriter``) write through a :class:`CorkedTransport`
    (returned, for :meth:`CorkedTransport.flush`; None when the writer has no transport).

    Control frames (close, ping, pong) leave at once, with what is held before them: aiohttp
    may close the transport itself right after a close frame, without passing through here.
    """
    transport = writer.transport
    if isinstance(transport, CorkedTransport) or transport is None:
        return transport
    corked = writer.transport = CorkedTransport(transport, asyncio.get_running_loop())
    send_frame = writer.send_frame

    async def send_frame_then_flush_control(
        message: bytes, opcode: int, compress: int | None = None
    ) -> None:
        await send_frame(message, opcode, compress)
        if opcode >= CONTROL_OPCODES:
            corked.flush()

    writer.send_frame = send_frame_then_flush_control
    return corked
