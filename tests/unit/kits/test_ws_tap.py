"""The frame tap against the installed aiohttp: once started, whole binary messages go to the
taker as they are read; everything else reaches aiohttp's reader byte for byte, so it is read,
refused or closed on as before, however the bytes are split."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.test_utils import TestServer

from tests.unit.ws_stand_ins import FakeProtocol, Flow, frame
from workflowplane.kits.ws_tap import FRAMES_PER_PASS, FrameTap, TappedWebSocket

LIMIT = 64 * 1024


def tapped(limit: int = LIMIT) -> tuple[FrameTap, Any]:
    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(FakeProtocol(), 2**30, loop=loop)  # type: ignore[arg-type]
    reader = WebSocketReader(queue, limit, compress=False, decode_text=True)
    return FrameTap(reader), queue


def drain(queue: Any) -> list[tuple[WSMsgType, Any]]:
    messages = []
    while queue._buffer:
        message = queue._buffer.popleft()[0]
        messages.append((message.type, message.data))
    return messages


def mixed_stream() -> tuple[bytes, list[bytes], list[tuple[WSMsgType, Any]]]:
    """Frames of every kind; what the taker gets, and what aiohttp's reader delivers."""
    taken = [b"", b"s" * 100, b"m" * 300, b"l" * 70_000, b"last"]
    fragmented = b"f" * 9000
    wire = b"".join(frame(2, payload) for payload in taken[:4])
    wire += frame(1, b"text") + frame(2, fragmented[:4000], fin=False) + frame(9, b"ping")
    wire += frame(0, fragmented[4000:]) + frame(2, b"masked", mask=b"\x01\x02\x03\x04")
    wire += frame(10, b"pong") + frame(2, taken[4])
    queued = [
        (WSMsgType.TEXT, "text"),
        (WSMsgType.PING, b"ping"),
        (WSMsgType.BINARY, fragmented),
        (WSMsgType.BINARY, b"masked"),
        (WSMsgType.PONG, b"pong"),
    ]
    return wire, taken, queued


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100, 4099, 1 << 20])
async def test_whole_binary_messages_are_taken_the_rest_read_by_aiohttp_however_split(
    step: int,
) -> None:
    wire, expected, queued = mixed_stream()
    tap, queue = tapped(limit=LIMIT * 2)
    taken: list[bytes] = []
    tap.start(taken.append, LIMIT * 2)
    for start in range(0, len(wire), step):
        assert tap.feed_data(wire[start : start + step]) == (False, b"")
    assert taken == expected
    assert drain(queue) == queued


async def test_before_the_start_every_message_goes_to_aiohttp_and_after_it_none_is_lost() -> None:
    tap, queue = tapped()
    early = frame(2, b"early") + frame(2, b"x" * 300)
    tap.feed_data(early + frame(2, b"y" * 300)[:7])  # a frame split as the tap starts
    taken: list[bytes] = []
    tap.start(taken.append, LIMIT)
    tap.feed_data(frame(2, b"y" * 300)[7:] + frame(2, b"later"))
    assert drain(queue) == [
        (WSMsgType.BINARY, b"early"),
        (WSMsgType.BINARY, b"x" * 300),
        (WSMsgType.BINARY, b"y" * 300),  # begun before the start: aiohttp's to finish
    ]
    assert taken == [b"later"]


@pytest.mark.parametrize("split", [False, True])
async def test_a_message_at_the_limit_is_aiohttps_to_refuse(split: bool) -> None:
    """The limit is aiohttp's ``max_msg_size``: a message of that size is refused, as before."""
    tap, queue = tapped(limit=1000)
    taken: list[bytes] = []
    tap.start(taken.append, 1000)
    assert tap.feed_data(frame(2, b"x" * 999)) == (False, b"")
    wire = frame(2, b"x" * 1000)
    broken = any(
        [tap.feed_data(wire[:3])[0], tap.feed_data(wire[3:])[0]]
        if split
        else [tap.feed_data(wire)[0]]
    )
    assert broken and taken == [b"x" * 999]  # aiohttp's reader ends the connection
    with pytest.raises(Exception, match="1000"):
        await queue.read()


@pytest.mark.parametrize(
    "wire",
    [
        frame(2, b"v3", rsv=0x40),  # compression was never negotiated
        frame(2, b"a", fin=False) + frame(2, b"b"),  # a whole message inside a message
    ],
)
async def test_what_aiohttp_refuses_it_still_refuses(wire: bytes) -> None:
    tap, queue = tapped()
    tap.start(lambda data: pytest.fail(f"taken: {data!r}"), LIMIT)
    assert tap.feed_data(wire) == (True, b"")
    with pytest.raises(Exception):  # noqa: B017 - aiohttp's WebSocketError, as without the tap
        await queue.read()


async def test_after_the_stop_binary_messages_are_dropped_and_the_rest_still_read() -> None:
    """Whoever took the messages is gone (the connection is closing): a request read now is
    not served, as aiohttp's close drops what it reads; a close frame still reaches aiohttp."""
    tap, queue = tapped()
    taken: list[bytes] = []
    tap.start(taken.append, LIMIT)
    split = frame(2, b"s" * 300)
    tap.feed_data(frame(2, b"before") + split[:10])
    tap.stop()
    tap.feed_data(split[10:] + frame(2, b"after") + frame(8, b"\x03\xe8bye"))
    assert taken == [b"before"]
    assert [kind for kind, _ in drain(queue)] == [WSMsgType.CLOSE]


async def test_a_session_with_tapped_websockets_taps_from_the_first_byte() -> None:
    """The server writes as soon as the handshake is done; the tap, in place from the first
    byte, knows where every frame begins when the taker starts."""
    sent = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"a" * 20_000)  # in flight while the client connects
        await sent.wait()
        await ws.send_bytes(b"taken")
        await ws.send_str("text")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession(ws_response_class=TappedWebSocket) as session,
        session.ws_connect(server.make_url("/ws")) as ws,
    ):
        assert isinstance(ws, TappedWebSocket) and ws.tap is not None
        taken: list[bytes] = []
        ws.tap.start(taken.append, LIMIT)
        first = await ws.receive()
        sent.set()
        second = await ws.receive()
        assert (first.type, len(first.data)) == (WSMsgType.BINARY, 20_000)
        assert (second.type, second.data) == (WSMsgType.TEXT, "text")
        assert taken == [b"taken"]


@pytest.mark.parametrize("kind", ["empty binary messages", "pings"])
async def test_a_read_of_thousands_of_tiny_frames_is_parsed_a_pass_of_the_loop_at_a_time(
    kind: str,
) -> None:
    """A gateway's read of 20,000 tiny frames, parsed at once in Python, would hold the
    agent's loop for a long while: a pass parses at most FRAMES_PER_PASS, reading held."""
    tap, queue = tapped()
    taken: list[bytes] = []
    flow = Flow()
    tap.start(taken.append, LIMIT, flow)
    one = frame(2, b"") if kind == "empty binary messages" else frame(9, b"")
    count = 20_000
    tap.feed_data(one * count)
    tap.feed_data(frame(2, b"after"))  # read before reading was held: after the rest

    def seen() -> int:
        return len(taken) + len(queue._buffer)

    assert seen() == FRAMES_PER_PASS and flow.holds == 1 and len(flow.deferred) == 1
    while flow.deferred:
        before = seen()
        flow.deferred.pop()()
        assert seen() - before <= FRAMES_PER_PASS
    assert seen() == count + 1 and taken[-1] == b"after"
    assert (flow.holds, flow.releases) == (1, 1)
