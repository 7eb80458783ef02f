"""The lean HTTP/1.1 server (kits.http1_server) on loopback, in front of a real aiohttp app:
what its router takes it serves, anything else reaches aiohttp whole with the connection,
and what a client sends is bounded in size and time, each refusal naming the problem."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import uvloop
from aiohttp import web

from tests.integration.harness import eventually
from workflowplane.kits.http1_server import (
    Abort,
    FrontServer,
    Handler,
    Headers,
    Limits,
    Request,
    Responder,
)
from workflowplane.pki import generate_ca, issue_certificate

pytestmark = pytest.mark.integration
SMALL = Limits(
    head_bytes=4096, header_count=20, body_bytes=1000, head_seconds=0.3, body_seconds=0.3
)


@dataclass
class Served:
    """Who served what: the lean handlers (their requests) and aiohttp (its paths)."""

    lean: list[Request] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def lean_router(served: Served):  # type: ignore[no-untyped-def]
    async def echo(request: Request, respond: Responder) -> None:
        served.lean.append(request)
        respond.whole(200, [("X-Served-By", "lean")], b"lean:" + request.body)

    async def streamed(request: Request, respond: Responder) -> None:
        served.lean.append(request)
        respond.stream(200, [("Content-Type", "text/plain")])
        for part in (b"one,", b"two,", b"three"):
            await respond.chunk(part)
        respond.end()

    async def cut(request: Request, respond: Responder) -> None:
        respond.stream(200, [])
        await respond.chunk(b"half")
        raise Abort("the upstream failed mid-way")

    async def hang(request: Request, respond: Responder) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            served.cancelled.set()

    async def slow(request: Request, respond: Responder) -> None:
        served.lean.append(request)
        await served.release.wait()
        respond.whole(200, [], b"slow")

    async def fail(request: Request, respond: Responder) -> None:
        raise RuntimeError("bug")

    routes: dict[str, Handler] = {
        "/lean": echo,
        "/stream": streamed,
        "/cut": cut,
        "/hang": hang,
        "/fail": fail,
        "/slow": slow,
    }

    def route(method: str, target: str, headers: Headers) -> Handler | None:
        return routes.get(target.partition("?")[0])

    return route


def fallback_app(served: Served) -> web.Application:
    async def any_path(request: web.Request) -> web.Response:
        served.fallback.append(request.path)
        body = await request.read()
        return web.Response(body=b"aiohttp:" + body, headers={"X-Served-By": "aiohttp"})

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        served.fallback.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str("echo:" + message.data)
        return ws

    app = web.Application()
    app.add_routes([web.get("/ws", websocket), web.route("*", "/{tail:.*}", any_path)])
    return app


@contextlib.asynccontextmanager
async def front(
    limits: Limits = SMALL, context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, Served, FrontServer]]:
    served = Served()
    runner = web.AppRunner(fallback_app(served))
    await runner.setup()
    assert runner.server is not None
    server = FrontServer(lean_router(served), runner.server, limits)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0, ssl=context)
    try:
        yield listener.sockets[0].getsockname()[1], served, server
    finally:
        server.close_all()
        listener.close()
        await runner.cleanup()


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``wait`` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


async def test_what_the_router_takes_is_served_lean_on_one_kept_alive_connection() -> None:
    async with (
        front() as (port, served, _),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
    ):
        for body in (b"a", b"bc"):
            async with session.post(f"http://127.0.0.1:{port}/lean?x=1", data=body) as resp:
                assert resp.headers["X-Served-By"] == "lean"
                assert await resp.read() == b"lean:" + body
        assert [r.target for r in served.lean] == ["/lean?x=1", "/lean?x=1"]
        assert served.fallback == []
        assert len(session.connector._conns) == 1  # type: ignore[union-attr]


async def test_a_declined_request_reaches_aiohttp_whole_with_its_connection() -> None:
    async with (
        front() as (port, served, _),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
    ):
        async with session.post(f"http://127.0.0.1:{port}/lean", data=b"1") as resp:
            assert resp.headers["X-Served-By"] == "lean"
        async with session.post(f"http://127.0.0.1:{port}/other", data=b"body") as resp:
            assert (resp.status, await resp.read()) == (200, b"aiohttp:body")
        # The connection is aiohttp's from here on: what the router would take still works.
        async with session.post(f"http://127.0.0.1:{port}/lean", data=b"2") as resp:
            assert await resp.read() == b"aiohttp:2"
        assert served.fallback == ["/other", "/lean"]


async def test_an_upgrade_is_handed_to_aiohttp_over_tls_on_uvloop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """uvloop's TLS transports (not asyncio.Transport subclasses) switch protocol too."""

    async def run() -> None:
        ca = generate_ca("front-test")
        leaf = issue_certificate(ca, "front", server=True, ip_addresses=["127.0.0.1"])
        (tmp_path / "c.pem").write_bytes(leaf.cert_pem)
        (tmp_path / "k.pem").write_bytes(leaf.key_pem)
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
        client_tls = ssl.create_default_context(cadata=ca.cert_pem.decode())
        async with (
            front(context=server_tls) as (port, served, _),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session,
        ):
            async with session.get(f"https://127.0.0.1:{port}/lean") as resp:
                assert await resp.read() == b"lean:"
            async with session.ws_connect(f"https://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "echo:hi"
            assert served.fallback == ["/ws"]

    await asyncio.to_thread(_in_uvloop, run)


def _in_uvloop(run) -> None:  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


async def test_a_streamed_answer_arrives_as_chunks_and_ends() -> None:
    async with (
        front() as (port, _, _),
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/stream") as resp,
    ):
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == b"one,two,three"


async def test_an_aborted_answer_cannot_look_complete() -> None:
    async with front() as (port, _, _), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(f"http://127.0.0.1:{port}/cut") as resp:
                await resp.read()


async def test_a_handler_that_fails_answers_500_and_the_connection_goes_on() -> None:
    async with (
        front() as (port, served, _),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
    ):
        async with session.get(f"http://127.0.0.1:{port}/fail") as resp:
            assert resp.status == 500
        async with session.get(f"http://127.0.0.1:{port}/lean") as resp:
            assert resp.status == 200
        assert len(served.lean) == 1


async def test_a_client_that_leaves_cancels_its_request() -> None:
    async with front() as (port, served, _):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0)
        writer.close()
        await asyncio.wait_for(served.cancelled.wait(), 5)


async def test_a_head_answer_has_no_body() -> None:
    async with front() as (port, _, _):
        answer = await exchange(
            port, b"HEAD /lean HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n")  # the head, and nothing after it
    assert b"Content-Length: 5" in answer


async def test_pipelined_requests_get_the_first_answer_then_a_400_saying_why() -> None:
    two = b"GET /lean HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    async with front() as (port, served, _):
        answer = await exchange(port, two)
    first, _, rest = answer.partition(b"lean:")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"pipelined" in rest
    assert len(served.lean) == 1


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (
            b"GET /lean HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
            431,
            b"over 4096",
        ),
        (
            b"GET /lean HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n",
            431,
            b"more than 20 request headers",
        ),
        (
            b"POST /lean HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000,
            413,
            b"over 1000",
        ),
        (
            b"POST /lean HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n"
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n0\r\n\r\n",
            413,
            b"over 1000",
        ),
        (
            b"GET /lean HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            b"malformed",
        ),
        (b"GET /lean\x00 HTTP/1.1\r\n\r\n", 400, b"malformed"),
    ],
    ids=["head-bytes", "header-count", "body-length", "body-chunked", "smuggling", "garbage"],
)
async def test_bad_or_oversized_requests_get_a_status_that_names_the_problem(
    request_bytes: bytes, status: int, says: bytes
) -> None:
    async with front() as (port, served, _):
        answer = await exchange(port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert says in answer
    assert b"Connection: close" in answer
    assert served.lean == [] and served.fallback == []


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /lean HTTP/1.1\r\nHost: x\r\n",
        b"POST /lean HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    ],
    ids=["head", "body"],
)
async def test_a_request_that_stalls_gets_a_408_and_the_connection_closes(partial: bytes) -> None:
    async with front() as (port, served, _):
        answer = await exchange(port, partial)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive in time" in answer
    assert served.lean == []


async def test_an_idle_connection_is_closed_after_the_head_timeout() -> None:
    async with front() as (port, _, server):
        assert await exchange(port, b"") == b""
        await eventually(lambda: not server.connections)


async def test_a_client_that_does_not_read_holds_back_the_handler_then_is_cut_off() -> None:
    """Back-pressure: a streamed answer waits for the client instead of piling up in memory,
    and a client that reads nothing for the body timeout is cut off (the handler ends)."""
    sent: list[int] = []
    ended: list[BaseException] = []

    async def flood(request: Request, respond: Responder) -> None:
        respond.stream(200, [])
        try:
            for _ in range(200):
                await respond.chunk(b"x" * 1024 * 1024)
                sent.append(1)
        except Abort as exc:
            ended.append(exc)
            raise

    async with front() as (port, _, server):
        server.router = lambda method, target, headers: flood
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: len(sent) > 0)
        settled = len(sent)
        for _ in range(20):  # the count stops growing while nothing is read
            await asyncio.sleep(0.05)
            if len(sent) == settled:
                break
            settled = len(sent)
        assert len(sent) < 64, f"{len(sent)} MiB were written to a client that read nothing"
        await eventually(lambda: ended)
        assert "read nothing for 0.3s" in str(ended[0])
        writer.close()


@pytest.mark.parametrize("begun", [b"G", b"GET /other HTTP/1.1\r\nX-Pad: "])
async def test_a_request_begun_before_the_previous_answer_is_refused_not_handed_on_cut(
    begun: bytes,
) -> None:
    """Its first bytes came while another request was served: handing the rest to aiohttp
    would let the two parsers read different requests, so it gets the pipelining 400."""
    async with front() as (port, served, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: served.lean)
        writer.write(begun)
        await writer.drain()
        await asyncio.sleep(0.05)  # the partial request is read before the answer goes out
        served.release.set()
        writer.write(b"ET /secret HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"slow" in answer
    assert b"HTTP/1.1 400 Bad Request" in answer and b"pipelined" in answer
    assert served.fallback == []


@pytest.mark.parametrize("padding", [b"\r\n", b" "], ids=["blank-lines", "spaces"])
async def test_padding_no_parser_callback_reports_still_counts_against_the_head_limit(
    padding: bytes,
) -> None:
    request = {
        b"\r\n": b"\r\n" * 100_000 + b"GET /lean HTTP/1.1\r\n\r\n",
        b" ": b"GET /lean HTTP/1.1\r\nX-A:" + b" " * 200_000 + b"1\r\n\r\n",
    }[padding]
    async with front() as (port, served, _):
        answer = await exchange(port, request)
    assert answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), answer[:100]
    assert b"over 4096" in answer or b"malformed" in answer
    assert served.lean == []


async def test_trailers_of_a_chunked_body_are_not_request_headers() -> None:
    chunked = (
        b"POST /lean HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: smuggled\r\n\r\n"
    )
    async with front() as (port, served, _):
        answer = await exchange(port, chunked)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"lean:hi")
    assert [name for name, _ in served.lean[0].headers] == [
        "Host",
        "Transfer-Encoding",
        "Connection",
    ]
