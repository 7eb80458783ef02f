"""A stream's buffer is bounded in what it holds, not only in body bytes: tiny chunks count
their overhead, and a response for a stream that has its head is useless (never queued)."""

from __future__ import annotations

import asyncio
import tracemalloc
from functools import partial
from typing import Any

import pytest
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from tests.unit.gateway.stand_ins import LEAF
from tests.unit.ws_stand_ins import FakeProtocol, frame
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.frames import FrameGuard
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.streams import ITEM_OVERHEAD, StreamBuffer, StreamEnd
from workflowplane.protocol import StreamChunk, TunnelResponse
from workflowplane.protocol.binary import encode_binary, encode_chunk

pytestmark = pytest.mark.asyncio
LIMIT = 64 * 1024  # the stream's bound (--max-stream-buffer-bytes)
RID = "gw-1"
DROPPED = "workflowplane_gateway_dropped_frames_total"


class _Socket:
    closed = False

    async def send_bytes(self, data: bytes) -> None: ...


def _frame(payload: bytes | bytearray) -> bytes:
    """A binary WebSocket frame as an agent sends it (masked: a zero mask)."""
    return frame(2, bytes(payload), mask=b"\x00\x00\x00\x00")


def _endpoint() -> tuple[AgentEndpoint, AgentConnection, GatewayMetrics]:
    metrics = GatewayMetrics()
    socket: Any = _Socket()  # sends nothing back
    conn = AgentConnection("workflowplane", "p1", socket, LEAF, {"ns/cr"}, v2=True, binary=True)
    manager: Any = None  # the endpoint's frame routing uses the connection only
    return AgentEndpoint(manager, GatewayConfig(), metrics), conn, metrics


def _read_by_the_guard(endpoint: AgentEndpoint, conn: AgentConnection) -> FrameGuard:
    """The agent's v3 socket as the gateway reads it: the frame guard, direct delivery."""
    queue = WebSocketDataQueue(FakeProtocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    guard = FrameGuard(WebSocketReader(queue, 2**26 + 1, False, False), queue, 2**26)
    guard.direct = partial(endpoint._direct, conn)
    return guard


async def test_one_byte_chunks_overflow_the_bound_instead_of_holding_66_times_it() -> None:
    """Each 1-byte chunk is a bytearray of its own (~100 bytes held): counted with its
    overhead, a caller this far behind is cut off as for large chunks, with the same error."""
    endpoint, conn, _ = _endpoint()
    conn.streams[RID] = stream = StreamBuffer("ns/cr", LIMIT)
    cut: list[bool] = []
    stream.on_overflow = lambda: cut.append(True)
    guard = _read_by_the_guard(endpoint, conn)
    read = _frame(encode_chunk(RID, [b"x"])) * 4096
    tracemalloc.start()
    try:
        for _ in range(LIMIT // 2 // 4096):  # half the bound in body bytes
            guard.feed_data(read)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.overflowed and cut == [True]
    assert peak < 4 * LIMIT, f"a stream bounded at {LIMIT} bytes held {peak}"
    end = await stream.get()
    assert isinstance(end, StreamEnd) and f"fell more than {LIMIT} bytes behind" in str(end.problem)


async def test_each_item_counts_its_bytes_metadata_and_overhead() -> None:
    stream = StreamBuffer("ns/cr", LIMIT)
    head = TunnelResponse(request_id=RID, status_code=200, headers={"Content-Type": ["a/b"]})
    assert stream.put(head)
    assert stream.buffered == ITEM_OVERHEAD + len(RID) + len("Content-Type") + len("a/b")
    assert stream.put(b"")
    assert stream.put(b"xyz")
    assert stream.buffered == ITEM_OVERHEAD * 3 + len(RID) + 15 + 3
    assert await stream.get() is head and await stream.get() == b"" and await stream.get() == b"xyz"
    assert stream.buffered == 0


async def test_a_large_chunk_is_held_as_the_one_message_it_came_in() -> None:
    """The fast path is unchanged: a 256 KiB chunk is its message's bytearray, uncopied,
    counted as its bytes and one item's overhead."""
    endpoint, conn, _ = _endpoint()
    conn.bodies[RID] = body = StreamBuffer(RID, 64 * 1024 * 1024, headed=True)
    message = bytearray(encode_chunk(RID, [b"y" * 256 * 1024]))
    assert endpoint._direct(conn, message)
    assert body.buffered == 256 * 1024 + ITEM_OVERHEAD
    assert await body.get() is message and len(message) == 256 * 1024


async def test_a_second_head_for_a_stream_is_useless_and_not_queued() -> None:
    """The first response is the stream's head; any later one (60 of 110 kB headers each
    held 17 MB, counted as nothing) is declined by direct delivery, and the queued way
    counts it as a useless frame (throttled), once."""
    endpoint, conn, metrics = _endpoint()
    conn.streams[RID] = stream = StreamBuffer("ns/cr", LIMIT)
    head = TunnelResponse(request_id=RID, status_code=200)
    assert endpoint._direct(conn, bytearray(encode_binary(head)))
    assert endpoint._direct(conn, encode_chunk(RID, [b"{}"]))
    headers = {f"X-H{i}": ["v" * 100] for i in range(1000)}
    again = encode_binary(TunnelResponse(request_id=RID, status_code=200, headers=headers))
    assert not endpoint._direct(conn, bytearray(again))
    assert metrics.registry.get_sample_value(DROPPED) == 0  # declined: not counted yet
    assert not endpoint._route_frame(conn, again, binary=True)  # the queued way
    assert metrics.registry.get_sample_value(DROPPED) == 1
    assert len(stream._items) == 2 and await stream.get() == head


@pytest.mark.parametrize("whole_chunks", [False, True], ids=["watch", "exec"])
async def test_a_response_after_a_streams_first_chunk_is_useless(whole_chunks: bool) -> None:
    endpoint, conn, _ = _endpoint()
    conn.streams[RID] = stream = StreamBuffer("ns/cr", LIMIT, whole_chunks=whole_chunks)
    assert endpoint._dispatch(conn, StreamChunk(request_id=RID, data=b"\x01started"))
    assert not endpoint._dispatch(conn, TunnelResponse(request_id=RID, status_code=200))
    assert len(stream._items) == 1


async def test_a_response_for_a_chunked_answers_body_is_useless() -> None:
    """A chunked answer's head came through its request's future: its body takes chunks."""
    endpoint, conn, _ = _endpoint()
    conn.pending[RID] = waiting = asyncio.get_running_loop().create_future()
    head = TunnelResponse(request_id=RID, status_code=200, chunked=True)
    assert endpoint._dispatch(conn, head)
    assert waiting.result() == head
    assert not endpoint._dispatch(conn, TunnelResponse(request_id=RID, status_code=200))
    assert conn.bodies[RID].buffered == 0


@pytest.mark.parametrize("whole_chunks", [False, True], ids=["watch", "exec"])
async def test_a_chunk_that_carries_nothing_is_useless_and_counted_once(whole_chunks: bool) -> None:
    """No data, no close: nothing for anybody. While a stream was open an agent could send
    them without end, each taken as of use, past the useless-frame budget."""
    endpoint, conn, metrics = _endpoint()
    conn.streams[RID] = stream = StreamBuffer("ns/cr", LIMIT, whole_chunks=whole_chunks)
    empty = encode_chunk(RID, [])
    assert not endpoint._direct(conn, bytearray(empty))
    assert metrics.registry.get_sample_value(DROPPED) == 0  # declined: not counted yet
    assert not endpoint._route_frame(conn, bytes(empty), binary=True)  # the queued way
    assert metrics.registry.get_sample_value(DROPPED) == 1
    assert stream.buffered == 0
    assert endpoint._direct(conn, encode_chunk(RID, [b"{}"]))  # one with data still goes
    closing = encode_binary(StreamChunk(request_id=RID, is_close=True))
    assert endpoint._direct(conn, bytearray(closing))  # and so does the close
