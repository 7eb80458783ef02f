"""Corked writes: what one pass of the loop writes leaves as one write, in order, and nothing
held is lost when the pass ends, when a large write comes, or when the transport closes."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp._websocket.writer import WebSocketWriter

from workflowplane.kits.corking import JOIN_BELOW, CorkedTransport, cork


class RecordingTransport:
    """Each call the transport gets, with what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, pieces: Any) -> None:
        self.calls.append(("writelines", [bytes(piece) for piece in pieces]))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def get_write_buffer_size(self) -> int:
        return 0


async def next_pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_small_writes_in_one_pass_leave_as_one_write_in_order() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"one")
    corked.writelines([b"two", b"three"])
    assert real.calls == [] and corked.get_write_buffer_size() == 11
    await next_pass()
    assert real.calls == [("write", b"onetwothree")]


async def test_a_large_write_goes_after_what_is_held_without_waiting() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    large = b"x" * JOIN_BELOW
    corked.write(b"head")
    corked.write(large)
    assert real.calls == [("writelines", [b"head", large])]
    await next_pass()
    assert real.calls == [("writelines", [b"head", large])]  # nothing left to flush


async def test_close_sends_what_is_held_first() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"last words")
    corked.close()
    assert real.calls == [("write", b"last words"), ("close", None)]


async def test_aiohttp_reader_gets_every_message_written_through_a_corked_writer() -> None:
    real = RecordingTransport()
    protocol: Any = type(
        "P", (), {"_paused": False, "_reading_paused": False, "pause_reading": print}
    )()
    writer = WebSocketWriter(protocol, real, use_mask=True)  # type: ignore[arg-type]
    cork(writer)
    messages = [b"a" * 10, b"b" * 300, b"c" * (JOIN_BELOW + 5), b"d"]
    for message in messages:
        await writer.send_frame(message, WSMsgType.BINARY)
    await next_pass()
    queue = WebSocketDataQueue(protocol, 1 << 30, loop=asyncio.get_running_loop())
    reader = WebSocketReader(queue, 1 << 30, compress=False, decode_text=True)
    reader.feed_data(b"".join(_pieces(real.calls)))
    received = [(await queue.read()).data for _ in messages]
    assert received == messages
    # a, b and c's header held and sent with c, unjoined; d alone at the end of the pass
    assert [kind for kind, _ in real.calls] == ["writelines", "write"]


def _pieces(calls: list[tuple[str, Any]]) -> list[bytes]:
    return [
        piece
        for kind, data in calls
        if kind != "close"
        for piece in (data if kind == "writelines" else [data])
    ]


async def test_a_close_frame_leaves_at_once_with_what_was_held_before_it() -> None:
    real = RecordingTransport()
    protocol: Any = type("P", (), {"_paused": False, "_reading_paused": False})()
    writer = WebSocketWriter(protocol, real, use_mask=False)  # type: ignore[arg-type]
    cork(writer)
    await writer.send_frame(b"answer", WSMsgType.BINARY)
    await writer.close(1001, b"going away")
    real.close()  # as aiohttp does, on the transport itself, before the loop's next pass
    written = b"".join(_pieces(real.calls))
    assert written.startswith(b"\x82\x06answer") and written.endswith(b"going away")
