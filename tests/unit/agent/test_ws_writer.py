"""The agent's large WebSocket frames against the installed aiohttp: masked in place (the
bytearray handed over is what goes to the transport, not a copy of it), and aiohttp's own
reader gets back exactly the bytes sent; anything else takes aiohttp's path as before."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import WSMsgType
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp._websocket.writer import WebSocketWriter

from workflowplane.agent.ws_writer import IN_PLACE_FROM, mask_in_place


class RecordingTransport:
    """Takes what the writer writes, as the pieces it was given."""

    def __init__(self) -> None:
        self.pieces: list[Any] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: Any) -> None:
        self.pieces.append(data)

    def writelines(self, pieces: Any) -> None:
        self.pieces.extend(pieces)


class FakeProtocol:
    _paused = False
    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def client_writer() -> tuple[WebSocketWriter, RecordingTransport]:
    transport = RecordingTransport()
    writer = WebSocketWriter(FakeProtocol(), transport, use_mask=True)  # type: ignore[arg-type]
    mask_in_place(writer)
    return writer, transport


def read_back(wire: bytes) -> list[Any]:
    """The messages aiohttp's server-side reader makes of ``wire``."""
    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(FakeProtocol(), 2**26, loop=loop)  # type: ignore[arg-type]
    reader = WebSocketReader(queue, 2**26, compress=False, decode_text=True)
    reader.feed_data(wire)
    messages = []
    while queue._buffer:
        messages.append(queue._buffer.popleft()[0])
    return messages


async def test_a_large_bytearray_is_masked_in_place_and_read_back_exactly() -> None:
    original = os.urandom(3 * IN_PLACE_FROM + 5)
    message = bytearray(original)
    writer, transport = client_writer()
    await writer.send_frame(message, WSMsgType.BINARY)  # type: ignore[arg-type]
    assert any(piece is message for piece in transport.pieces)  # not copied
    (received,) = read_back(b"".join(bytes(piece) for piece in transport.pieces))
    assert received.type == WSMsgType.BINARY and received.data == original


async def test_bytes_and_small_messages_take_aiohttp_path_unchanged() -> None:
    writer, transport = client_writer()
    large = os.urandom(2 * IN_PLACE_FROM)
    await writer.send_frame(large, WSMsgType.BINARY)
    await writer.send_frame(bytearray(b"small"), WSMsgType.BINARY)  # type: ignore[arg-type]
    await writer.send_frame(b'{"a": 1}', WSMsgType.TEXT)
    received = read_back(b"".join(bytes(piece) for piece in transport.pieces))
    assert [m.data for m in received] == [large, b"small", '{"a": 1}']
