"""What the lean server holds of a request body while it arrives: about the body's size, however
small the pieces it is sent in (a caller's 2-byte chunks held ~25 bytes per byte carried)."""

from __future__ import annotations

import asyncio
import tracemalloc

from tests.unit.transports import RecordingTransport
from workflowplane.kits.http1_server import FrontServer, Limits, Request, Responder


async def test_a_chunked_body_of_tiny_chunks_holds_about_its_own_size() -> None:
    """200,000 chunks of 2 bytes (within the body limit) hold about 400 kB, not 11 MB; the
    handler still gets the body whole, as bytes."""
    bodies: list[bytes] = []

    async def handler(request: Request, respond: Responder) -> None:
        bodies.append(request.body)
        respond.whole(200, [], b"")

    server = FrontServer(lambda m, t, h: handler, asyncio.Protocol, Limits(body_bytes=1 << 20))
    protocol = server()
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    read = b"2\r\nxy\r\n" * 20_000  # 2-byte chunks (1-byte ones are Python's cached objects)
    reads = 10
    tracemalloc.start()
    try:
        for _ in range(reads):
            protocol.data_received(read)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    carried = reads * 40_000
    assert held < 1.5 * carried, f"{held} bytes held for a {carried}-byte body"
    protocol.data_received(b"4000\r\n" + b"z" * 0x4000 + b"\r\n0\r\n\r\n")  # and a long one
    await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    (body,) = bodies
    assert type(body) is bytes
    assert body == b"xy" * (carried // 2) + b"z" * 0x4000
