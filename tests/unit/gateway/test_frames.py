"""The frame guard against the installed aiohttp: messages within the limit arrive as aiohttp
would deliver them, a bigger one becomes one OversizedMessage naming its request and the
connection carries on; control frames and protocol errors are aiohttp's, as before."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.http_websocket import WebSocketError

from tests.unit.ws_stand_ins import FakeProtocol, Flow
from tests.unit.ws_stand_ins import frame as ws_frame
from workflowplane.gateway.frames import (
    FRAMES_PER_PASS,
    HEAD_BYTES,
    FrameGuard,
    OversizedMessage,
    request_id_of,
)

MASK = b"\x11\x22\x33\x44"
LIMIT = 64 * 1024


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One client frame, masked as RFC 6455 wants from a client."""
    return ws_frame(opcode, payload, fin=fin, mask=MASK, rsv=rsv)


def fragments(payload: bytes, size: int = 4096, opcode: int = 1) -> bytes:
    """A message split the way gorilla/websocket writes one (4 KiB frames)."""
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    out = b""
    for index, piece in enumerate(pieces):
        out += frame(opcode if index == 0 else 0, piece, fin=index == len(pieces) - 1)
    return out


def response(request_id: str, body_bytes: int) -> bytes:
    answer = {"requestID": request_id, "statusCode": 200, "body": "A" * body_bytes}
    return json.dumps(answer).encode()


def guard(limit: int = LIMIT) -> tuple[FrameGuard, Any]:
    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(FakeProtocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    inner = WebSocketReader(queue, limit + 1, compress=False, decode_text=True)
    return FrameGuard(inner, queue, limit), queue


def drain(queue: Any) -> list[Any]:
    messages = []
    while queue._buffer:
        messages.append(queue._buffer.popleft()[0])
    return messages


async def test_a_message_within_the_limit_arrives_whole_one_frame_or_many() -> None:
    small, fragmented = response("a", 100), response("b", 20_000)
    frames_guard, queue = guard()
    frames_guard.feed_data(frame(1, small) + fragments(fragmented))
    got = drain(queue)
    assert [(m.type, m.data) for m in got] == [
        (WSMsgType.TEXT, small),
        (WSMsgType.TEXT, fragmented),
    ]


@pytest.mark.parametrize("step", [1, 3, 7, 4099])
async def test_any_split_of_the_bytes_gives_the_same_messages(step: int) -> None:
    wire = frame(1, response("a", 300)) + fragments(response("b", 9000)) + frame(9, b"hi")
    frames_guard, queue = guard()
    for start in range(0, len(wire), step):
        assert frames_guard.feed_data(wire[start : start + step]) == (False, b"")
    got = drain(queue)
    assert [m.type for m in got] == [WSMsgType.TEXT, WSMsgType.TEXT, WSMsgType.PING]
    assert json.loads(got[1].data)["requestID"] == "b" and got[2].data == b"hi"


async def test_an_oversized_single_frame_fails_its_request_and_the_next_one_arrives() -> None:
    frames_guard, queue = guard()
    big = response("too-big", LIMIT)
    wire = frame(1, big)
    # The report comes as soon as the head is in, before the rest of the frame.
    frames_guard.feed_data(wire[: 14 + HEAD_BYTES])
    (report,) = drain(queue)
    assert report.type is WSMsgType.BINARY and isinstance(report.data, OversizedMessage)
    assert report.data.request_id == "too-big" and report.data.limit == LIMIT
    assert "frame limit of 65536 bytes" in report.data.describe()
    frames_guard.feed_data(wire[14 + HEAD_BYTES :] + frame(1, response("next", 10)))
    (after,) = drain(queue)
    assert json.loads(after.data)["requestID"] == "next"


async def test_an_oversized_fragmented_message_is_dropped_as_it_crosses_the_limit() -> None:
    frames_guard, queue = guard()
    frames_guard.feed_data(fragments(response("frag", 3 * LIMIT)) + frame(1, response("ok", 5)))
    report, after = drain(queue)
    assert isinstance(report.data, OversizedMessage) and report.data.request_id == "frag"
    assert report.data.at_least > LIMIT
    assert json.loads(after.data)["requestID"] == "ok"


async def test_a_ping_between_fragments_passes_and_the_message_stays_whole() -> None:
    payload = response("p", 10_000)
    wire = fragments(payload)
    first_frame_end = 8 + 4096  # 126-length header (4) + mask (4) + 4 KiB
    frames_guard, queue = guard()
    frames_guard.feed_data(wire[:first_frame_end] + frame(9, b"ping") + wire[first_frame_end:])
    ping, message = drain(queue)
    assert ping.type is WSMsgType.PING and message.data == payload


async def test_a_close_frame_reaches_aiohttp() -> None:
    frames_guard, queue = guard()
    frames_guard.feed_data(frame(8, struct.pack("!H", 1000) + b"bye"))
    (closing,) = drain(queue)
    assert closing.type is WSMsgType.CLOSE and closing.data == 1000


@pytest.mark.parametrize(
    "wire",
    [
        frame(0, b"orphan continuation"),
        frame(1, b"a", fin=False) + frame(1, b"b"),  # a new message inside a message
        frame(1, b"{}", rsv=0x40),  # compression was never negotiated
        frame(2, b"\x03v3", rsv=0x40),  # ...nor in a binary message read whole
        frame(2, b"a", fin=False) + frame(2, b"b"),  # nor a whole one inside a message
        frame(9, b"x" * 200),  # control frames are at most 125 bytes
    ],
)
async def test_protocol_errors_end_the_connection_as_before(wire: bytes) -> None:
    frames_guard, queue = guard()
    assert frames_guard.feed_data(wire) == (True, b"")
    with pytest.raises(WebSocketError):
        await queue.read()


def test_the_request_id_is_read_from_the_head_only_when_complete() -> None:
    assert request_id_of(b'{"requestID": "abc-1", "statusCode": 200') == "abc-1"
    assert request_id_of(b'{"statusCode":200,"requestID":"x"') == "x"
    assert request_id_of(b'{"requestID":"trunc') is None
    assert request_id_of(b"\xff\xfe garbage") is None


async def test_a_binary_message_the_direct_taker_wants_is_not_queued_the_rest_is() -> None:
    """The agent endpoint takes v3 answers somebody waits for as they are read (no hop through
    aiohttp's queue and its reader task); what it declines is queued as before."""
    frames_guard, queue = guard()
    taken: list[bytes] = []
    frames_guard.direct = lambda data: (
        bytes(data).startswith(b"mine") and not taken.append(bytes(data))
    )
    frames_guard.feed_data(frame(2, b"mine-1") + frame(2, b"other") + frame(1, b"text"))
    assert taken == [b"mine-1"]
    assert [(m.type, bytes(m.data)) for m in drain(queue)] == [
        (WSMsgType.BINARY, b"other"),
        (WSMsgType.TEXT, b"text"),
    ]


def binary_stream() -> tuple[bytes, list[bytes]]:
    """Binary messages of each header size (7-bit, 16-bit, 64-bit length; empty), single
    frames and one fragmented, with a ping among them, and what each delivers."""
    payloads = [b"", b"s" * 100, b"m" * 300, b"l" * 70_000]
    wire = b"".join(frame(2, payload) for payload in payloads)
    fragmented = b"f" * 9000
    wire += fragments(fragmented, opcode=2) + frame(9, b"hi") + frame(2, b"last")
    return wire, [*payloads, fragmented, b"last"]


@pytest.mark.parametrize("step", [1, 5, 6, 106, 4099, 200_000])
async def test_binary_messages_read_whole_or_split_anywhere_arrive_alike(step: int) -> None:
    """Whole single-frame binary messages are taken straight from the read; split ones (or any
    other) go the general way, and the two hand over anywhere without losing a byte."""
    wire, expected = binary_stream()
    frames_guard, queue = guard(limit=LIMIT * 2)
    taken: list[bytes] = []
    frames_guard.direct = lambda data: not taken.append(bytes(data))
    for start in range(0, len(wire), step):
        assert frames_guard.feed_data(wire[start : start + step]) == (False, b"")
    assert taken == expected
    assert [(m.type, m.data) for m in drain(queue)] == [(WSMsgType.PING, b"hi")]


async def test_a_whole_binary_message_over_the_limit_is_still_refused() -> None:
    frames_guard, queue = guard(limit=1000)
    frames_guard.direct = lambda data: True
    frames_guard.feed_data(frame(2, b"x" * 1001) + frame(2, b"next"))
    got = drain(queue)
    assert isinstance(got[0].data, OversizedMessage) and got[0].data.at_least == 1001
    assert len(got) == 1  # "next" went to the direct taker


async def test_a_frame_trickled_a_byte_per_read_holds_about_its_own_size() -> None:
    """An agent that sends an unfinished frame in tiny reads must not make the gateway hold
    many times what it sent (a view kept per read would cost hundreds of bytes per byte)."""
    import tracemalloc  # noqa: PLC0415

    checker, _ = guard(limit=4 * 1024 * 1024)
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 2 * 1024 * 1024) + MASK
    sent = 100_000
    tracemalloc.start()
    try:
        checker.feed_data(header)
        for _ in range(sent):
            checker.feed_data(b"\x00")  # a fresh bytes object per read, as a socket gives
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 * sent


async def test_a_message_split_into_many_empty_or_tiny_frames_ends_the_connection() -> None:
    """Fragments that carry little or nothing cost the parser and never make the message
    bigger: past 64 of them a message must carry a KiB per frame (gorilla writes 4 KiB)."""
    checker, queue = guard(limit=4 * 1024 * 1024)
    checker.feed_data(frame(1, b'{"requestID":"r"', fin=False))
    tiny = [frame(0, b"", fin=False), frame(0, b" ", fin=False)]
    fed = 0
    while fed < 100_000 and not checker.feed_data(tiny[fed % 2])[0]:
        fed += 1
    assert fed == 63  # the message's 65th frame
    with pytest.raises(WebSocketError, match=r"split into 65 frames for 48 bytes"):
        await queue.read()


async def test_a_message_in_4_kib_frames_is_not_too_fragmented() -> None:
    checker, queue = guard(limit=4 * 1024 * 1024)
    payload = response("r", 3 * 1024 * 1024)
    checker.feed_data(fragments(payload))
    [message] = drain(queue)
    assert message.data == payload


def paced_guard(queue_limit: int) -> tuple[FrameGuard, Any, Flow]:
    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(FakeProtocol(), queue_limit, loop=loop)  # type: ignore[arg-type]
    inner = WebSocketReader(queue, LIMIT + 1, compress=False, decode_text=True)
    flow = Flow()
    return FrameGuard(inner, queue, LIMIT, flow), queue, flow


TINY_FRAMES = {
    "pongs": frame(0xA, b""),  # control frames: aiohttp's parser reads them
    "empty binary messages": frame(2, b""),  # whole messages: the guard's fast path
    "one-byte text messages": frame(1, b"x"),  # the guard's general parser
}


@pytest.mark.parametrize("kind", list(TINY_FRAMES))
async def test_a_read_of_thousands_of_tiny_frames_is_parsed_a_pass_of_the_loop_at_a_time(
    kind: str,
) -> None:
    """One socket read may hold 40,000 frames; parsed at once, in Python, they would hold
    the event loop every agent and caller shares for a long while. A pass parses at most
    FRAMES_PER_PASS, the connection's reading is held, the rest waits for the next pass."""
    checker, queue, flow = paced_guard(queue_limit=2**30)  # the queue never fills here
    count = 20_000
    checker.feed_data(TINY_FRAMES[kind] * count)
    assert checker.holding and flow.holds == 1 and len(flow.deferred) == 1
    assert len(queue._buffer) == FRAMES_PER_PASS
    passes = 1
    while flow.deferred:
        before = len(queue._buffer)
        flow.deferred.pop()()
        assert len(queue._buffer) - before <= FRAMES_PER_PASS
        passes += 1
    assert len(queue._buffer) == count and not checker.holding
    assert passes == -(-count // FRAMES_PER_PASS)
    assert (flow.holds, flow.releases) == (1, 1)


async def test_while_aiohttps_queue_is_full_the_guard_waits_for_it_to_drain() -> None:
    """As aiohttp's own reader does: past the queue's high-water mark nothing more is parsed
    (the connection's reading held) until the reader task has drained it."""
    checker, queue, flow = paced_guard(queue_limit=16 * 1024)
    messages = [frame(2, bytes([n % 256]) * 1000) for n in range(200)]
    checker.feed_data(b"".join(messages[:100]))
    checker.feed_data(b"".join(messages[100:]))  # read before reading was held: queued behind
    assert checker.holding and not flow.deferred and flow.holds == 1
    got: list[bytes] = []
    while checker.holding:
        queued = len(queue._buffer)
        assert queued * 1000 <= 2 * 16 * 1024 + 1000  # aiohttp's limit is twice its argument
        got += [bytes(message.data) for message in drain(queue)]
        checker.queue_drained()
        while flow.deferred:
            flow.deferred.pop()()
    got += [bytes(message.data) for message in drain(queue)]
    assert got == [bytes([n % 256]) * 1000 for n in range(200)]  # all, in order
    assert flow.releases == 1
