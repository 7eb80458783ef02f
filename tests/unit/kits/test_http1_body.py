"""What the agent's HTTP client holds of an answer's body for a slow reader: about the body's
size however small the server's pieces (2-byte chunks held ~25 bytes per byte), while long
pieces go on as they came (no copy) and every piece as soon as it arrives."""

from __future__ import annotations

import asyncio
import tracemalloc

from workflowplane.kits.http1 import HEAD_LIMIT, HIGH_WATER, _Connection


class Transport:
    """Whether the socket is read."""

    def __init__(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: object) -> None: ...

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None: ...


async def test_tiny_chunks_held_for_a_slow_reader_hold_about_their_size() -> None:
    buffer = memoryview(bytearray(256 * 1024))
    connection = _Connection(buffer)
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", no_body=False)

    def read(data: bytes) -> None:  # as the transport reads: into the pool's shared buffer
        buffer[: len(data)] = data
        connection.buffer_updated(len(data))

    read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    response = connection.response
    assert response is not None
    wire = b"2\r\nxy\r\n" * 20_000  # 40 kB of body in 2-byte chunks per read
    tracemalloc.start()
    try:
        for _ in range(10):  # nobody reads the body yet (a slow reader)
            read(wire)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert transport.reading  # far below HIGH_WATER: the socket is still read
    assert response._held == 400_000 < HIGH_WATER
    assert held < 1.5 * response._held, f"{held} bytes held for {response._held} body bytes"

    long = b"z" * 64 * 1024
    response.feed(long)
    pieces = response.iter_any()
    got = bytearray()
    while len(got) < 400_000:
        piece = await anext(pieces)
        assert type(piece) is bytes
        got += piece
    assert got == b"xy" * 200_000
    assert await anext(pieces) is long  # a long piece goes on as it came: no copy
    waiting = asyncio.ensure_future(anext(pieces))
    await asyncio.sleep(0)
    response.feed(b"ab")
    assert await waiting == b"ab"  # handed on as soon as it arrives
    response.finish()


async def test_a_head_of_tiny_headers_is_refused_before_it_holds_many_times_its_size() -> None:
    """Each header kept costs two strings and a tuple: a megabyte of ``a:`` headers within
    the head's limit held 15 MB."""
    buffer = memoryview(bytearray(256 * 1024))
    connection = _Connection(buffer)
    connection.connection_made(Transport())  # type: ignore[arg-type]
    head = connection.begin(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", no_body=False)

    def read(data: bytes) -> None:
        buffer[: len(data)] = data
        connection.buffer_updated(len(data))

    read(b"HTTP/1.1 200 OK\r\n")
    tracemalloc.start()
    try:
        for _ in range(16):  # 1 MiB of headers, 64 KiB a read
            read(b"a:\r\n" * (16 * 1024))
            if head.done():
                break
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert head.done() and "response headers are larger than" in str(head.exception())
    assert held < 4 * HEAD_LIMIT, f"{held} bytes held for a head of at most {HEAD_LIMIT}"
