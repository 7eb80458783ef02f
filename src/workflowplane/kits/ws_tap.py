"""Whole binary WebSocket messages handed over as the socket's bytes are read.

aiohttp's client reads a message into a queue, wakes the task waiting in ``receive()``, and that
task hands it on: a trip through the event loop and a message object for every frame. A
:class:`FrameTap` stands where aiohttp's WebSocket reader stands (fed the socket's bytes) and,
once started, gives each unfragmented, unmasked binary message within the limit straight to
``take``. Everything else (text, fragmented messages, control frames, masked or oversized
frames, and every frame before the start) goes to aiohttp's reader byte for byte, at frame
boundaries, so it is read, refused or closed on exactly as before.

The tap is in place from the connection's first byte (:class:`TappedWebSocket`, as a session's
``ws_response_class``): put in later, it could not know where aiohttp's reader is within a
frame. This uses aiohttp internals (the response's ``_parser``, which ``ws_connect`` hands to
the protocol), pinned with aiohttp; tests/unit/kits exercises them against the installed version.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, Final, Protocol

import aiohttp

# Frames read in one pass of the event loop; the rest of the read waits for the next pass
# (reading held meanwhile), so a read of thousands of tiny frames cannot hold the loop.
FRAMES_PER_PASS: Final = 1024
_FIN_BINARY: Final = 0x82  # FIN, no reserved bits, opcode 2
_FIN: Final = 0x80
_CONTROL: Final = 0x8  # opcodes from here on: close, ping, pong
_U16, _U64 = struct.Struct("!H"), struct.Struct("!Q")
_EXTENDED: Final = {126: 2, 127: 8}  # length flag -> bytes of extended length that follow


class FrameReader(Protocol):
    """aiohttp's WebSocket reader, as far as the tap delegates to it."""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]: ...

    def feed_eof(self) -> None: ...


class ReadFlow(Protocol):
    """How a reader holds its connection's reading while it has read bytes left to parse."""

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def later(self, callback: Callable[[], None]) -> None: ...


class ProtocolFlow:
    """A :class:`ReadFlow` over an aiohttp protocol: its buffer hold (the transport stays
    paused while the hold or its flow control wants it), the next pass of ``loop``."""

    def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._protocol = protocol
        self._loop = loop

    def hold(self) -> None:
        self._protocol._pause_reading_for_buffer()

    def release(self) -> None:
        self._protocol._resume_reading_for_buffer()

    def later(self, callback: Callable[[], None]) -> None:
        self._loop.call_soon(callback)


class HeldReads:
    """The bytes of a connection's reads its parser has not reached yet (it stops after a
    pass's frames and goes on later from here), and the hold on the connection's reading
    while there are any, so a flood is read no faster than it is parsed."""

    def __init__(self, flow: ReadFlow | None) -> None:
        self.flow = flow  # None: nothing is held back, every read is parsed at once
        self._data = b""
        self._from = 0
        self._holding = False

    def __bool__(self) -> bool:
        return len(self._data) > self._from

    def add(self, data: bytes) -> None:
        """A read that came before reading was held: after the bytes held."""
        self._data, self._from = self._data[self._from :] + data, 0

    def hold(self, data: bytes, pos: int) -> None:
        """``data`` from ``pos`` on waits (not copied: the read's own bytes)."""
        assert self.flow is not None  # without one, a parse never stops early
        self._data, self._from = data, pos
        if not self._holding:
            self._holding = True
            self.flow.hold()

    def take(self) -> tuple[bytes, int]:
        """What waits, and from where; nothing waits after."""
        data, pos = self._data, self._from
        self._data, self._from = b"", 0
        return data, pos

    def release_if_done(self) -> None:
        """Reading goes on once nothing waits any more."""
        if not self and self._holding and self.flow is not None:
            self._holding = False
            self.flow.release()

    def unpaced(self) -> None:
        """From now on nothing is held back (the end of the connection: all is parsed)."""
        self.flow = None


def header_length(header: bytes | bytearray) -> int:
    """Bytes a frame header needs, judged from what has arrived (at least 2)."""
    if len(header) < 2:
        return 2
    flag = header[1] & 0x7F
    return 2 + (2 if flag == 126 else 8 if flag == 127 else 0) + (4 if header[1] & 0x80 else 0)


def payload_length(header: bytes | bytearray | memoryview) -> int:
    """The payload length a whole frame header gives."""
    flag = header[1] & 0x7F
    if flag == 126:
        return int(_U16.unpack_from(header, 2)[0])
    if flag == 127:
        return int(_U64.unpack_from(header, 2)[0])
    return flag


def whole_binary_frame(
    data: memoryview, pos: int, *, masked: bool, below: int
) -> tuple[int, int] | None:
    """Where the payload of the unfragmented binary frame at ``pos`` lies (after its mask,
    when ``masked``), if ``data`` holds it whole and it is under ``below`` bytes; else None
    (another kind of frame, masked or not as asked, split, or too large)."""
    end = len(data)
    if end - pos < 2 or data[pos] != _FIN_BINARY or bool(data[pos + 1] & 0x80) != masked:
        return None
    extended = _EXTENDED.get(data[pos + 1] & 0x7F, 0)
    start = pos + 2 + extended + (4 if masked else 0)
    if start > end:
        return None
    length = payload_length(data[pos : pos + 2 + extended])
    if length >= below or start + length > end:
        return None
    return start, start + length


class FrameTap:
    """Feeds aiohttp's reader all but the messages ``take`` gets; see the module docstring."""

    def __init__(self, inner: FrameReader) -> None:
        self._inner = inner
        self._take: Callable[[bytes], None] = _untaken
        self._limit = 0  # nothing is taken before the start
        self._header = bytearray()  # of the frame begun, until it is whole
        self._passing = 0  # bytes of the current frame still to go to the inner reader
        self._taking: bytearray | None = None  # the payload of a message being taken
        self._wanted = 0  # bytes of that payload still to come
        self._inner_message = False  # a fragmented message is with the inner reader
        self._broken = False
        self._held = HeldReads(None)  # paced once started with a flow

    def start(
        self, take: Callable[[bytes], None], limit: int, flow: ReadFlow | None = None
    ) -> None:
        """From the next message on, give ``take`` the binary messages under ``limit`` bytes
        (aiohttp's ``max_msg_size``: its reader refuses a message of that size or more);
        with ``flow``, parse at most FRAMES_PER_PASS frames per pass of the loop."""
        self._take, self._limit = take, limit
        self._held.flow = flow

    def stop(self) -> None:
        """Drop the binary messages ``take`` would get from now on (whoever took them is
        gone; aiohttp's close drops what it reads too); the rest goes on to aiohttp's reader."""
        self._take = _dropped

    def feed_eof(self) -> None:
        if self._held:  # the last bytes still count: all parsed now
            self._held.unpaced()
            self._parse_held()
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._broken:
            return self._inner.feed_data(data)
        if self._held:
            self._held.add(data)
        else:
            self._parse(data, 0)
        return self._broken, b""

    def _parse_held(self) -> None:
        self._parse(*self._held.take())
        self._held.release_if_done()

    def _parse(self, data: bytes, pos: int) -> None:
        """Frames from ``pos`` until the data ends or, with a flow, a pass's frames are
        spent (at a frame's start): the rest is held for the next pass."""
        view, end, left = memoryview(data), len(data), FRAMES_PER_PASS
        while pos < end and not self._broken:
            if not (self._passing or self._taking is not None or self._header):  # a new frame
                if left <= 0 and (flow := self._held.flow) is not None:
                    self._held.hold(data, pos)
                    flow.later(self._parse_held)
                    return
                left -= 1
            if self._passing:
                pos = self._pass(view, pos, min(self._passing, end - pos))
            elif self._taking is not None:
                pos = self._collect(view, pos)
            elif not self._header and (whole := self._whole_at(view, pos)) is not None:
                start, stop = whole
                self._take(bytes(view[start:stop]))
                pos = stop
            else:
                pos = self._read_header(view, pos)

    def _whole_at(self, data: memoryview, pos: int) -> tuple[int, int] | None:
        """Where the payload of a message to take lies, when it is whole in ``data``."""
        if self._inner_message:
            return None
        return whole_binary_frame(data, pos, masked=False, below=self._limit)

    def _read_header(self, data: memoryview, pos: int) -> int:
        missing = header_length(self._header) - len(self._header)
        while missing > 0 and pos < len(data):
            piece = data[pos : pos + missing]
            self._header += piece
            pos += len(piece)
            missing = header_length(self._header) - len(self._header)
        if missing > 0:
            return pos  # the rest of the header comes with the next read
        header, self._header = bytes(self._header), bytearray()
        length = payload_length(header)
        unmasked = not header[1] & 0x80
        if (
            header[0] == _FIN_BINARY
            and unmasked
            and not self._inner_message
            and length < self._limit
        ):
            self._taking, self._wanted = bytearray(), length
            if not length:
                self._collect(data, pos)
            return pos
        opcode = header[0] & 0x0F
        if opcode < _CONTROL:  # data: a fragmented message stays with the inner reader
            self._inner_message = not header[0] & _FIN
        self._passing = length
        self._forward(header)
        return pos

    def _collect(self, data: memoryview, pos: int) -> int:
        assert self._taking is not None
        piece = data[pos : pos + self._wanted]
        self._taking += piece
        self._wanted -= len(piece)
        if not self._wanted:
            payload, self._taking = bytes(self._taking), None
            self._take(payload)
        return pos + len(piece)

    def _pass(self, data: memoryview, pos: int, size: int) -> int:
        self._passing -= size
        self._forward(bytes(data[pos : pos + size]))
        return pos + size

    def _forward(self, data: bytes) -> None:
        broken, _ = self._inner.feed_data(data)
        self._broken = self._broken or broken


def _untaken(_: bytes) -> None:
    raise AssertionError("a message was taken before the tap started")


def _dropped(_: bytes) -> None:
    """A message read after the tap stopped."""


class TappedWebSocket(aiohttp.ClientWebSocketResponse):
    """aiohttp's client WebSocket with a :class:`FrameTap` (``tap``) in front of its reader:
    ``ws_connect`` hands the reader it sets here to the protocol, so the tap reads every byte."""

    tap: FrameTap | None = None

    @property  # type: ignore[override]
    def _parser(self) -> FrameTap | None:
        return self.tap

    @_parser.setter
    def _parser(self, reader: FrameReader | None) -> None:
        self.tap = None if reader is None else FrameTap(reader)
