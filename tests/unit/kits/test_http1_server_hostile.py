"""The lean server against callers that do not play along: a chunked body that is all
framing or a trailer without end, a caller that never reads its answers, and a connection
handed to aiohttp while its writes were paused. Each is bounded, named or passed on."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tests.unit.transports import RecordingTransport
from workflowplane.kits.http1_server import FrontServer, Limits, Request, Responder

CHUNKED_POST = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
READ = 4096


class Answered:
    """A handler that answers each request whole, and counts them."""

    def __init__(self, body: bytes = b"ok") -> None:
        self.body = body
        self.requests: list[Request] = []

    async def __call__(self, request: Request, respond: Responder) -> None:
        self.requests.append(request)
        respond.whole(200, [], self.body)


class Buffering(RecordingTransport):
    """A transport with bytes the client has not read yet; abort is told from close."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return 1 << 20

    def abort(self) -> None:
        super().abort()
        self.aborted = True


def connect(handler: Any, limits: Limits, transport: RecordingTransport | None = None) -> Any:
    server = FrontServer(lambda method, target, headers: handler, Fallback, limits)
    protocol = server()
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def until(check: Any, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("opening", "filler"),
    [
        (b"1\r\na\r\n0\r\nX-Trailer: ", b"a"),  # a trailer's value that never ends
        (b"1\r\na\r\n0\r\n", b"t"),  # a trailer's name that never ends
        (b"1;", b"e"),  # a chunk extension that never ends
    ],
    ids=["trailer-value", "trailer-name", "extension"],
)
async def test_a_chunked_body_that_is_all_framing_is_refused_near_the_head_limit(
    opening: bytes, filler: bytes
) -> None:
    """The parser builds a header up (joining it again on every read) before it reports it,
    and reports no extension at all: without a bound the server held 50 MiB, and spent
    71 ms of the shared loop on one read, for a trailer under the body limit."""
    limits = Limits(head_bytes=64 * 1024, body_bytes=10 << 20)
    handler = Answered()
    protocol, transport = connect(handler, limits)
    protocol.data_received(CHUNKED_POST + opening)
    sent = 0
    while not transport.written and sent < limits.body_bytes:
        protocol.data_received(filler * READ)
        sent += READ
    assert transport.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"chunked encoding contains too much non-data" in transport.written
    assert sent <= limits.head_bytes + 2 * READ
    assert handler.requests == []


async def test_a_large_body_earns_no_room_for_an_endless_trailer_after_it() -> None:
    """What a read's data earns is spent in that read or lost (as Go's net/http counts)."""
    limits = Limits(head_bytes=64 * 1024, body_bytes=10 << 20)
    protocol, transport = connect(Answered(), limits)
    protocol.data_received(CHUNKED_POST)
    protocol.data_received(b"100000\r\n" + b"d" * 0x100000 + b"\r\n")  # 1 MiB of data
    protocol.data_received(b"0\r\nX-Trailer: ")
    sent = 0
    while not transport.written and sent < limits.body_bytes:
        protocol.data_received(b"a" * READ)
        sent += READ
    assert b"too much non-data" in transport.written
    assert sent <= limits.head_bytes + 2 * READ


async def test_chunks_of_a_byte_and_a_short_trailer_are_still_served() -> None:
    handler = Answered()
    protocol, transport = connect(handler, Limits())
    protocol.data_received(CHUNKED_POST + b"1\r\nx\r\n" * 20_000 + b"0\r\nX-Sum: 1\r\n\r\n")
    await until(lambda: transport.written)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert handler.requests[0].body == b"x" * 20_000


async def test_the_next_request_is_not_read_until_the_client_reads_its_answer() -> None:
    """A caller that asks again and again and reads nothing had every answer piled up in
    the write buffer (77 MiB of 4 MiB answers): now the next request waits for the last
    answer to drain, and a caller that reads nothing for the body timeout is cut off."""
    handler = Answered(b"x" * 1000)
    protocol, transport = connect(handler, Limits(body_seconds=0.2))
    real_write = protocol.write

    def write_past_the_high_water_mark(data: bytes) -> None:
        real_write(data)
        protocol.pause_writing()  # as the transport does when its buffer is full

    protocol.write = write_past_the_high_water_mark
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.data_received(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")  # sent on the answer
    await until(lambda: transport.closed)
    assert [r.target for r in handler.requests] == ["/a"]


async def test_a_drained_answer_lets_the_next_request_in() -> None:
    handler = Answered()
    protocol, transport = connect(handler, Limits(body_seconds=5.0))
    protocol.pause_writing()
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.data_received(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0)
    assert [r.target for r in handler.requests] == ["/a"]
    protocol.resume_writing()  # the client read it
    await until(lambda: len(handler.requests) == 2)
    assert transport.written.count(b"HTTP/1.1 200 OK") == 2 and not transport.closed


async def test_a_last_answer_the_client_never_reads_ends_in_an_abort() -> None:
    """A close waits for the written bytes to leave, without end: the connection and its
    buffer were held as long as the client kept the socket open and read nothing."""
    transport = Buffering()
    protocol, _ = connect(Answered(), Limits(body_seconds=0.1), transport)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await until(lambda: transport.closed)
    assert not transport.aborted
    await until(lambda: transport.aborted)


class Fallback(asyncio.Protocol):
    """aiohttp's place: what it is told of the connection."""

    last: Fallback | None = None

    def __init__(self) -> None:
        self.paused = False
        self.data = b""
        Fallback.last = self

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self.data += data


class Handing(RecordingTransport):
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


async def test_a_connection_handed_off_while_its_writes_are_paused_stays_paused() -> None:
    """The transport tells a protocol of a full buffer once: aiohttp, handed the connection
    after the lean server was told, wrote 66 MiB to a client that read nothing."""
    server = FrontServer(lambda method, target, headers: None, Fallback, Limits())
    protocol = server()
    protocol.connection_made(Handing())
    protocol.pause_writing()  # the lean answer before this request is still unread
    protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    fallback = Fallback.last
    assert fallback is not None and fallback.data.startswith(b"GET /stream")
    assert fallback.paused


async def test_a_slow_reader_of_a_large_answer_gets_all_of_it() -> None:
    """What cuts off a reader of nothing must not cut off a slow one: with a deadline to
    drain a whole 8 MiB answer, a client reading 4 MiB/s lost the connection mid-body."""
    loop = asyncio.get_running_loop()
    body = b"x" * (8 << 20)

    async def handler(_: Request, respond: Responder) -> None:
        respond.whole(200, [("Content-Type", "text/plain")], body)

    front = FrontServer(lambda method, target, headers: handler, Fallback, Limits(body_seconds=0.5))
    server = await loop.create_server(front, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    try:
        client.connect(server.sockets[0].getsockname())
        client.setblocking(False)
        await loop.sock_sendall(client, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        received = 0
        async with asyncio.timeout(20):
            while data := await loop.sock_recv(client, 65536):
                received += len(data)
                await asyncio.sleep(len(data) / (4 << 20))  # about 2 s for the whole answer
        assert received > len(body)  # the head and all of the body
    finally:
        client.close()
        server.close()
