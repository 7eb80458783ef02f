"""The agent's HTTP/1.1 client (kits.http1) against a scripted server on loopback: bodies of
every framing arrive whole, connections are reused and a stale one is retried only when that
is safe, one deadline covers the body, flow control bounds what is held, and nothing the caller
sends can split a request."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from tests.integration.harness import eventually
from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.tunnel import FrameServer
from workflowplane.agent.upstream import Upstream
from workflowplane.kits.http1 import HIGH_WATER, Http1Error, Http1Pool, InvalidRequest
from workflowplane.protocol import TunnelRequest, encode

pytestmark = pytest.mark.integration
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Script = Callable[["Seen", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    """What the server saw: each request's head, and on which connection."""

    heads: list[bytes] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    opened: int = 0

    async def next_head(self, reader: asyncio.StreamReader, connection: int) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        self.connections.append(connection)
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        if length:
            await reader.readexactly(length)
        return head


@contextlib.asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.opened += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await script(seen, reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()


async def answer_each(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
    connection = seen.opened
    while True:
        await seen.next_head(reader, connection)
        writer.write(OK)
        await writer.drain()


async def get(
    pool: Http1Pool, target: str = "/", headers: list[tuple[str, str]] | None = None, **kw: object
) -> tuple[int, bytes]:
    async with pool.request("GET", target, headers or [], **kw) as response:  # type: ignore[arg-type]
        return response.status, await response.read()


async def test_keep_alive_connections_are_reused() -> None:
    async with serving(answer_each) as (url, seen):
        pool = Http1Pool(url, None)
        assert [await get(pool) for _ in range(3)] == [(200, b"ok")] * 3
        await pool.close()
    assert seen.opened == 1 and seen.connections == [1, 1, 1]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef",
        b"HTTP/1.0 200 OK\r\n\r\nabcdef",  # a body that ends with the connection
    ],
    ids=["chunked", "content-length", "until-close"],
)
async def test_a_body_arrives_whole_whatever_its_framing(answer: bytes) -> None:
    async def once(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await seen.next_head(reader, 1)
        for index in range(0, len(answer), 5):  # in small pieces
            writer.write(answer[index : index + 5])
            await writer.drain()
        if answer.startswith(b"HTTP/1.0"):
            writer.close()

    async with serving(once) as (url, _):
        pool = Http1Pool(url, None)
        assert await get(pool) == (200, b"abcdef")
        await pool.close()


async def test_a_reused_connection_the_server_dropped_is_retried_for_a_get_only() -> None:
    async def one_answer_per_connection(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await seen.next_head(reader, seen.opened)
        writer.write(OK)
        await writer.drain()
        await seen.next_head(reader, seen.opened)  # the second request: dropped, unanswered

    async with serving(one_answer_per_connection) as (url, seen):
        pool = Http1Pool(url, None)
        assert await get(pool) == (200, b"ok")
        assert await get(pool) == (200, b"ok")  # retried on a new connection
        with pytest.raises(Http1Error, match="closed"):
            async with pool.request("POST", "/", [], b"{}"):
                pass  # a POST may have been acted on: never sent twice
        await pool.close()
    assert sum(head.startswith(b"POST") for head in seen.heads) == 1


async def test_one_deadline_covers_the_body_and_the_connection_is_not_reused() -> None:
    async def stall_in_body(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await seen.next_head(reader, seen.opened)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()  # until the client gives up

    async with serving(stall_in_body) as (url, seen):
        pool = Http1Pool(url, None)
        for _ in range(2):
            with pytest.raises(TimeoutError, match=r"within 0\.2s"):
                await get(pool, timeout=0.2)
        await pool.close()
    assert seen.opened == 2


async def test_a_slow_reader_holds_a_bounded_body_while_the_server_waits() -> None:
    sent = asyncio.Event()
    size = 4 * HIGH_WATER

    async def large(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await seen.next_head(reader, 1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()
        sent.set()

    async with serving(large) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", []) as response:
            await eventually(lambda: response._held > HIGH_WATER, interval=0.01)
            transport = response._connection.transport
            assert transport is not None and not transport.is_reading()  # the socket rests
            assert not sent.is_set()  # so the server cannot finish
            received = sum([len(chunk) async for chunk in response.iter_any()])
        await pool.close()
    assert received == size and sent.is_set()


async def test_nothing_a_caller_sends_can_split_the_request() -> None:
    async with serving(answer_each) as (url, seen):
        pool = Http1Pool(url, None)
        with pytest.raises(InvalidRequest, match="X-Evil has a CR, LF or NUL"):
            pool.request("GET", "/", [("X-Evil", "a\r\nGET /admin HTTP/1.1")])
        with pytest.raises(InvalidRequest, match="header name"):
            pool.request("GET", "/", [("X Evil", "a")])
        with pytest.raises(InvalidRequest, match="method"):
            pool.request("GET / HTTP/1.1\r\n", "/", [])
        assert await get(pool, "/a b\r\nGET /admin HTTP/1.1\r\n\r\nü") == (200, b"ok")
        await pool.close()
    assert len(seen.heads) == 1
    assert seen.heads[0].startswith(b"GET /a%20b%0D%0AGET%20/admin%20HTTP/1.1%0D%0A%0D%0A%C3%BC ")


async def test_a_head_request_ends_at_its_headers() -> None:
    async def head(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await seen.next_head(reader, 1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(head) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("HEAD", "/", [], timeout=5) as response:
            assert (response.status, response.content_length) == (200, 1000)
            assert await response.read() == b""
        await pool.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 21), "headers are larger than"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed HTTP response"),
    ],
    ids=["huge-headers", "garbage"],
)
async def test_a_bad_answer_fails_with_what_was_wrong(answer: bytes, error: str) -> None:
    async def bad(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await seen.next_head(reader, 1)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async with serving(bad) as (url, _):
        pool = Http1Pool(url, None)
        with pytest.raises(Http1Error, match=error):
            await get(pool, timeout=5)
        await pool.close()


async def test_header_values_travel_as_utf8_as_aiohttp_sent_them() -> None:
    async with serving(answer_each) as (url, seen):
        pool = Http1Pool(url, None)
        assert await get(pool, headers=[("X-Name", "Zoë")]) == (200, b"ok")
        await pool.close()
    assert b"X-Name: Zo\xc3\xab\r\n" in seen.heads[0]


async def test_an_agent_answers_a_frame_that_would_split_its_request_with_a_400() -> None:
    sent: list[bytes] = []

    async def send(data: bytes | bytearray) -> None:
        sent.append(bytes(data))

    async with serving(answer_each) as (url, seen):
        upstream = Upstream(KubeTarget.from_server(url), 1 << 20)
        server = FrameServer(upstream, send, timeout=5, max_concurrent=2, chunked=True)
        evil = {"X-Evil": ["a\r\nImpersonate-User: admin"]}
        server.dispatch(encode(TunnelRequest(request_id="r1", path="/api", headers=evil)))
        await server.idle()
        await upstream.close()
    answer = json.loads(sent[0])
    assert (
        answer["statusCode"] == 400 and "X-Evil has a CR, LF or NUL" in answer["error"]["message"]
    )
    assert seen.heads == []


async def test_waiting_for_a_free_connection_counts_against_the_deadline() -> None:
    async def stall(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await seen.next_head(reader, seen.opened)
        await reader.read()

    async with serving(stall) as (url, seen):
        pool = Http1Pool(url, None, limit=1)
        holder = asyncio.create_task(get(pool))  # takes the only slot, never answered
        await eventually(lambda: len(seen.heads) == 1, interval=0.01)
        with pytest.raises(TimeoutError, match=r"within 0\.2s"):
            await get(pool, timeout=0.2)
        holder.cancel()
        await pool.close()
    assert len(seen.heads) == 1  # the second request never went out
