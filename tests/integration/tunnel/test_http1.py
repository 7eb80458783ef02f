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

import httpx2
import pytest

from tests.integration.harness import eventually
from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.tunnel import FrameServer
from workflowplane.agent.upstream import Upstream
from workflowplane.kits.http1 import HIGH_WATER, Http1Error, Http1Pool, InvalidRequest
from workflowplane.kits.http1_httpx import Http1Transport
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


def answering(answer: bytes) -> Script:
    """A server that answers the first request with ``answer`` and then only reads."""

    async def script(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await seen.next_head(reader, seen.opened)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    return script


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
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with serving(answering(head)) as (url, _):
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
    async with serving(answering(answer)) as (url, _):
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


async def test_bodies_read_at_once_on_connections_sharing_a_read_buffer_stay_apart() -> None:
    """A pool's connections read into one buffer: what each keeps is its own copy."""
    size, piece = 600_000, 50_000

    async def distinct(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        mark = bytes([seen.opened]) * piece  # each connection's body is its own byte
        await seen.next_head(reader, seen.opened)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // piece):  # in pieces, so the two connections' reads interleave
            writer.write(mark)
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()

    async with serving(distinct) as (url, seen):
        pool = Http1Pool(url, None)
        answers = await asyncio.gather(get(pool), get(pool))
        first, second = pool._idle  # both connections went back to the pool
        assert first.get_buffer(-1) is second.get_buffer(-1)  # and read into one buffer
        await pool.close()
    assert seen.opened == 2
    assert sorted(body for _, body in answers) == [bytes([n]) * size for n in (1, 2)]


@pytest.mark.parametrize("interim", [b"100 Continue", b"103 Early Hints\r\nLink: </a>"])
async def test_interim_answers_are_skipped_for_the_final_one(interim: bytes) -> None:
    answer = b"HTTP/1.1 " + interim + b"\r\n\r\n" + OK
    async with serving(answering(answer)) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", [], timeout=5) as response:
            assert (response.status, await response.read()) == (200, b"ok")
            assert response.headers == [("Content-Length", "2")]
        await pool.close()


async def test_trailers_are_not_headers_and_endless_ones_are_cut_off() -> None:
    trailers = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: t\r\n\r\n"
    )
    async with serving(answering(trailers)) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", [], timeout=5) as response:
            assert await response.read() == b"ok"
            assert response.headers == [("Transfer-Encoding", "chunked")]
        await pool.close()

    async def endless(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await seen.next_head(reader, 1)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(20_000):  # 20 MB of trailer lines, if nothing stops it
                writer.write(b"X-T: " + b"a" * 1000 + b"\r\n")
                await writer.drain()

    async with serving(endless) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", []) as response:  # a stream: no deadline
            with pytest.raises(Http1Error, match="larger than 1048576 bytes"):
                await response.read()
            assert len(response.headers) == 1
        await pool.close()


async def test_a_second_answer_to_one_request_fails_it_and_adds_nothing() -> None:
    injected = OK + b"HTTP/1.1 200 OK\r\nSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n"
    async with serving(answering(injected)) as (url, seen):
        pool = Http1Pool(url, None)
        with contextlib.suppress(Http1Error):
            async with pool.request("GET", "/", [], timeout=5) as response:
                await response.read()
        assert ("Set-Cookie", "injected=1") not in response.headers
        assert await get(pool, timeout=5) == (200, b"ok")  # on a new connection
        await pool.close()
    assert seen.opened == 2


async def test_a_connection_paused_for_an_unread_body_reads_again_when_reused() -> None:
    size = HIGH_WATER + 1  # the read that ends the body is the one that pauses the socket

    async def twice(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await seen.next_head(reader, 1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        await seen.next_head(reader, 1)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async with serving(twice) as (url, seen):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", [], timeout=5) as response:
            await eventually(lambda: response.complete, interval=0.01)  # arrived, left unread
        assert await get(pool, timeout=5) == (200, b"ok")
        await pool.close()
    assert seen.opened == 1


async def test_a_101_on_a_plain_request_fails_it() -> None:
    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with serving(answering(upgrade)) as (url, _):
        pool = Http1Pool(url, None)
        with pytest.raises(Http1Error, match="switched protocols"):
            await get(pool, timeout=5)
        await pool.close()


async def test_host_names_only_the_server_and_framing_headers_are_the_clients_own() -> None:
    async with serving(answer_each) as (url, seen):
        port = url.rsplit(":", 1)[1]
        pool = Http1Pool(f"http://user:secret@127.0.0.1:{port}", None)
        assert await get(pool, timeout=5) == (200, b"ok")
        for name in ("Transfer-Encoding", "content-length", "Host"):
            with pytest.raises(InvalidRequest, match=f"{name} is the client's own"):
                pool.request("POST", "/", [(name, "chunked")], b"{}")
        await pool.close()
    assert b"Host: 127.0.0.1:" + port.encode() + b"\r\n" in seen.heads[0]
    assert b"secret" not in seen.heads[0]


async def test_a_head_answer_is_not_refused_for_the_length_it_announces() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n"
    async with serving(answering(head)) as (url, _):
        upstream = Upstream(KubeTarget.from_server(url), 1 << 20)
        result = await upstream.request("HEAD", "/x", "", None, b"", 5)
        await upstream.close()
    assert (result.status, result.body) == (200, b"")


async def test_an_idle_deadline_lets_a_body_that_keeps_coming_finish() -> None:
    async def trickle(seen: Seen, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await seen.next_head(r, 1)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef"):  # 0.45 s in all, never silent for 0.3 s
            await asyncio.sleep(0.15)
            w.write(piece)
            await w.drain()
        await r.read()

    async with serving(trickle) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", [], timeout=0.3, idle=True) as response:
            assert await response.read() == b"abcdef"
        with pytest.raises(TimeoutError):  # the same body against a deadline for the whole
            async with pool.request("GET", "/", [], timeout=0.3) as response:
                await response.read()
        await pool.close()


async def test_response_headers_are_read_as_utf8() -> None:
    warning = '299 - "policy “no-latest”: pin the image"'
    answer = b"HTTP/1.1 200 OK\r\nWarning: " + warning.encode() + b"\r\nContent-Length: 0\r\n\r\n"
    async with serving(answering(answer)) as (url, _):
        pool = Http1Pool(url, None)
        async with pool.request("GET", "/", [], timeout=5) as response:
            assert ("Warning", warning) in response.headers
        await pool.close()


async def test_httpx_over_the_lean_client_carries_utf8_headers_and_frees_every_slot() -> None:
    warning = '299 - "policy “no-latest”"'
    answer = b"HTTP/1.1 200 OK\r\nWarning: " + warning.encode() + b"\r\nContent-Length: 2\r\n\r\nok"

    async def each(seen: Seen, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await seen.next_head(r, seen.opened)
            w.write(answer)
            await w.drain()

    async with serving(each) as (url, _):
        transport = Http1Transport(url, None, limit=4)
        async with httpx2.AsyncClient(base_url=url, transport=transport) as client:
            for _ in range(10):  # more than the pool's slots: each must come back
                reply = await client.get("/api/v1/namespaces", timeout=5)
                assert (reply.status_code, reply.text) == (200, "ok")
                assert reply.headers["warning"] == warning


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"NOT HTTP\r\n\r\n", httpx2.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", httpx2.ReadTimeout),
    ],
    ids=["garbage", "silent-body"],
)
async def test_httpx_gets_its_own_exception_types(answer: bytes, error: type[Exception]) -> None:
    async with serving(answering(answer)) as (url, _):
        client = httpx2.AsyncClient(base_url=url, transport=Http1Transport(url, None))
        with pytest.raises(error):
            await client.get("/", timeout=0.3)
        await client.aclose()
    async with httpx2.AsyncClient(transport=Http1Transport("http://127.0.0.1:9", None)) as c:
        with pytest.raises(httpx2.ConnectError):
            await c.get("http://127.0.0.1:9/")


async def test_a_header_that_is_not_utf8_reaches_the_caller_replaced_not_a_hang() -> None:
    sent: list[bytes] = []

    async def send(data: bytes | bytearray) -> None:
        sent.append(bytes(data))

    answer = b"HTTP/1.1 200 OK\r\nX-Odd: a\xffb\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answering(answer)) as (url, _):
        upstream = Upstream(KubeTarget.from_server(url), 1 << 20)
        server = FrameServer(upstream, send, timeout=5, max_concurrent=2, chunked=True)
        server.dispatch(encode(TunnelRequest(request_id="r1", path="/api")))
        await asyncio.wait_for(server.idle(), 10)
        await upstream.close()
    answer_frame = json.loads(sent[0])
    assert answer_frame["statusCode"] == 200
    assert answer_frame["headers"]["X-Odd"] == ["a\ufffdb"]  # as Go's agent sends it
