"""Ordinary requests served without a task (agent/quick.py), against a real HTTP upstream on
loopback: a small answer leaves through ``send_now`` in the read that completes it; a large
one is handed to a task and relayed in chunks; a reused connection the server closed is
tried again by a task (safe methods) or fails with a 502; the deadline is a 504; the
gateway's isClose cancels it without an answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.tunnel import CHUNK_BYTES, FrameServer
from workflowplane.agent.upstream import Upstream
from workflowplane.protocol import StreamChunk, TunnelRequest, TunnelResponse
from workflowplane.protocol.binary import decode_binary, encode_binary

BIG = 3 * CHUNK_BYTES + 123


class Plane:
    """A loopback API server: small and large answers, one that never answers, and a
    switch that closes each connection after its answer (without saying so)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/hang":
            await self.release.wait()
        if request.path == "/big":
            return web.Response(body=b"b" * BIG)
        if request.path == "/chunked-big":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(4):
                await response.write(b"c" * CHUNK_BYTES)
            await response.write_eof()
            return response
        return web.json_response({"path": request.path, "method": request.method})


class Wire:
    """The frames the server sent, by the way it sent them."""

    def __init__(self) -> None:
        self.now: list[Any] = []  # through send_now
        self.later: list[Any] = []  # through send (a task's way)
        self.refuse_now = False

    async def send(self, data: bytes | bytearray) -> None:
        self.later.append(decode_binary(bytes(data)))

    def send_now(self, data: bytes | bytearray) -> bool:
        if self.refuse_now:
            return False
        self.now.append(decode_binary(bytes(data)))
        return True

    def of(self, rid: str) -> list[Any]:
        return [f for f in (*self.now, *self.later) if f.request_id == rid]


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Plane, Upstream, web.AppRunner]]:
    fake = Plane()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = Upstream(
        KubeTarget.from_server(f"http://127.0.0.1:{runner.addresses[0][1]}"), 1 << 24
    )
    try:
        yield fake, upstream, runner
    finally:
        fake.release.set()
        await upstream.close()
        await runner.cleanup()


def _server(upstream: Upstream, wire: Wire, **options: Any) -> FrameServer:
    settings: dict[str, Any] = {"timeout": 5, "max_concurrent": 8, "chunked": True, **options}
    return FrameServer(
        upstream,
        wire.send,
        encoder=encode_binary,
        send_now=wire.send_now,
        **settings,
    )


def _ask(server: FrameServer, rid: str, path: str, method: str = "GET") -> None:
    server.dispatch(
        encode_binary(TunnelRequest(request_id=rid, method=method, path=path)), binary=True
    )


async def _until(check: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
    """For what no event announces (frames written by the server's callbacks)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def _warm(server: FrameServer, wire: Wire) -> None:
    """The first request makes the pool's connection (a task's way); it is idle after."""
    _ask(server, "warm", "/warm")
    await _until(lambda: bool(wire.of("warm")))
    await _until(lambda: server.requests_in_flight == 0)
    await asyncio.sleep(0)  # the connection goes back to the pool a pass after the answer


async def _warmed(plane: Any, **options: Any) -> tuple[Upstream, Wire, FrameServer]:
    """The plane's upstream, and a frame server over it with an idle connection."""
    _, upstream, _ = plane
    wire = Wire()
    server = _server(upstream, wire, **options)
    await _warm(server, wire)
    return upstream, wire, server


async def test_a_small_answer_leaves_at_once_without_a_task(plane: Any) -> None:
    _upstream, wire, server = await _warmed(plane)
    assert [f.request_id for f in wire.later] == ["warm"]
    _ask(server, "q1", "/api/v1/namespaces/default")
    assert server.requests_in_flight == 1 and not server._tasks  # no task for it
    await _until(lambda: bool(wire.of("q1")))
    (answer,) = wire.now
    assert isinstance(answer, TunnelResponse) and answer.status_code == 200
    assert b'"/api/v1/namespaces/default"' in answer.body
    assert answer.headers["Content-Type"] == ["application/json; charset=utf-8"]
    assert server.requests_in_flight == 0
    await server.close()


@pytest.mark.parametrize("path", ["/big", "/chunked-big"])
async def test_a_large_answer_is_handed_to_a_task_and_relayed_in_chunks(
    plane: Any, path: str
) -> None:
    _upstream, wire, server = await _warmed(plane)
    _ask(server, "big", path)
    assert not server._tasks
    await _until(lambda: any(isinstance(f, StreamChunk) and f.is_close for f in wire.of("big")))
    head, *chunks = wire.of("big")
    assert isinstance(head, TunnelResponse) and head.chunked and head.status_code == 200
    data = b"".join(bytes(c.data) for c in chunks if isinstance(c, StreamChunk) and c.data)
    assert data == (b"b" * BIG if path == "/big" else b"c" * 4 * CHUNK_BYTES)
    assert not wire.now  # the task's way
    await _until(lambda: server.requests_in_flight == 0)
    _ask(server, "after", "/small")  # the connection went back to the pool, reusable
    await _until(lambda: bool(wire.of("after")))
    assert wire.of("after")[0].status_code == 200
    await server.close()


class OneAnswerPerConnection(asyncio.Protocol):
    """A server that answers each connection's first request (keep-alive) and closes the
    connection, unanswered, on its second: what a client sees when the server had closed an
    idle connection just as it was reused."""

    served: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.count = transport, 0

    def data_received(self, data: bytes) -> None:
        self.count += 1
        if self.count > 1:
            self.transport.close()
            return
        OneAnswerPerConnection.served.append(data.split(b" ", 2)[0])
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("POST", 502)])
async def test_a_reused_connection_the_server_closed_is_tried_again_only_when_safe(
    method: str, status: int
) -> None:
    OneAnswerPerConnection.served = []
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(OneAnswerPerConnection, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    upstream = Upstream(KubeTarget.from_server(f"http://127.0.0.1:{port}"), 1 << 20)
    wire = Wire()
    server = _server(upstream, wire)
    heard: list[str] = []
    upstream.observe(lambda method, path, query, code, seconds: heard.append(code))
    try:
        await _warm(server, wire)
        _ask(server, "again", "/x", method=method)
        assert not server._tasks  # begun without a task, on the reused connection
        await _until(lambda: bool(wire.of("again")))
        (answer,) = wire.of("again")
        assert answer.status_code == status
        assert OneAnswerPerConnection.served == [b"GET"] + ([b"GET"] if method == "GET" else [])
        await _until(lambda: len(heard) == 2)
        assert heard == ["200", "200" if method == "GET" else "error"]  # a retry is not told
    finally:
        await server.close()
        await upstream.close()
        listener.close()


async def test_the_deadline_is_a_504_and_the_gateway_may_give_up_first(plane: Any) -> None:
    _, upstream, _ = plane
    wire = Wire()
    server = _server(upstream, wire, timeout=0.3)
    await _warm(server, wire)
    _ask(server, "late", "/hang")
    assert not server._tasks
    await _until(lambda: bool(wire.of("late")))
    (answer,) = wire.of("late")
    assert answer.status_code == 504 and "within 0.3s" in answer.error.message
    await _until(lambda: server.requests_in_flight == 0)
    await _warm(server, wire)  # a connection again (the late one was closed)
    _ask(server, "dropped", "/hang")
    assert server.requests_in_flight == 1
    server.dispatch(encode_binary(StreamChunk(request_id="dropped", is_close=True)), binary=True)
    assert server.requests_in_flight == 0
    await asyncio.sleep(0.5)  # past the deadline: nothing is said of it
    assert not wire.of("dropped")
    _ask(server, "next", "/small")
    await _until(lambda: bool(wire.of("next")))
    assert wire.of("next")[0].status_code == 200
    await server.close()


async def test_a_busy_socket_sends_the_answer_in_turn(plane: Any) -> None:
    _upstream, wire, server = await _warmed(plane)
    wire.refuse_now = True
    _ask(server, "busy", "/small")
    await _until(lambda: bool(wire.of("busy")))
    assert [f.request_id for f in wire.later] == ["warm", "busy"] and not wire.now
    await server.close()


async def test_a_duplicate_request_id_in_flight_is_refused(plane: Any) -> None:
    _upstream, wire, server = await _warmed(plane)
    _ask(server, "twice", "/hang")
    _ask(server, "twice", "/hang")
    await _until(lambda: bool(wire.of("twice")))
    assert wire.of("twice")[0].status_code == 409
    await server.close()


def _pool_free(upstream: Upstream) -> int:
    return upstream._requests.slots._free


async def test_a_hand_over_cancelled_before_its_task_began_gives_its_connection_back(
    plane: Any,
) -> None:
    """The gateway's isClose read in the pass that handed a large answer over: the task is
    cancelled before its first step, so its own ``finally`` never runs."""
    upstream, wire, server = await _warmed(plane)
    free = _pool_free(upstream)
    handed = server.hand_over

    def hand_over_then_cancel(quick: Any) -> None:
        handed(quick)
        server._tasks[quick.frame.request_id].cancel()

    server.hand_over = hand_over_then_cancel  # type: ignore[method-assign]
    for n in range(3):
        _ask(server, f"big{n}", "/big")
        await _until(lambda: server.requests_in_flight == 0)
        await _warm(server, wire)
    assert _pool_free(upstream) == free
    await server.close()


class SlowGateway(Wire):
    """A gateway that reads nothing: every send waits until ``reads`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = asyncio.Event()
        self.waiting = 0

    async def send(self, data: bytes | bytearray) -> None:
        self.waiting += 1
        await self.reads.wait()
        self.waiting -= 1
        await super().send(data)


async def test_answers_waiting_for_a_gateway_that_does_not_read_keep_their_slots(
    plane: Any,
) -> None:
    fake, upstream, _ = plane
    wire = SlowGateway()
    wire.reads.set()
    server = _server(upstream, wire, max_concurrent=2)
    await _warm(server, wire)
    wire.reads.clear()
    wire.refuse_now = True  # the socket is paused
    asked = len(fake.requests)
    for n in range(6):
        _ask(server, f"r{n}", "/small")
        await _until(
            lambda n=n: wire.waiting == min(n + 1, 2) and server.requests_in_flight == n + 1
        )
    assert wire.waiting == 2  # two answers wait; the rest wait for their slots
    assert len(fake.requests) - asked == 2  # and were not even asked of the API server
    wire.reads.set()
    await _until(lambda: all(wire.of(f"r{n}") for n in range(6)))
    await _until(lambda: server.requests_in_flight == 0)
    assert server._slots.try_take()
    await server.close()


async def test_an_unreadable_token_file_is_a_502_and_costs_no_slot(
    plane: Any, tmp_path: Any
) -> None:
    _, served, _ = plane
    token = tmp_path / "token"
    token.write_text("t")
    target = KubeTarget(server=served._server, token_file=token)
    upstream = Upstream(target, 1 << 20)
    wire = Wire()
    server = _server(upstream, wire, max_concurrent=1)
    try:
        await _warm(server, wire)
        token.unlink()
        upstream._token_read_at = 0.0  # due to be read again
        _ask(server, "no-token", "/small")
        await _until(lambda: bool(wire.of("no-token")))
        assert wire.of("no-token")[0].status_code == 502
        await _until(lambda: server.requests_in_flight == 0)
        assert server._slots.try_take()
    finally:
        await server.close()
        await upstream.close()


async def test_upstream_observers_hear_of_each_request_once(plane: Any) -> None:
    _, upstream, _ = plane
    heard: list[tuple[str, str]] = []
    upstream.observe(lambda method, path, query, code, seconds: heard.append((path, code)))
    wire = Wire()
    server = _server(upstream, wire)
    await _warm(server, wire)
    _ask(server, "ok", "/small")
    await _until(lambda: bool(wire.of("ok")))
    _ask(server, "gone", "/hang")
    server.dispatch(encode_binary(StreamChunk(request_id="gone", is_close=True)), binary=True)
    await _until(lambda: len(heard) == 3)
    await asyncio.sleep(0)
    assert heard == [("/warm", "200"), ("/small", "200"), ("/hang", "cancelled")]
    await server.close()


async def test_an_answer_that_cannot_be_encoded_is_a_500_and_costs_no_slot(plane: Any) -> None:
    """A bug while answering (here: the encoder fails once) is said to the gateway, and the
    request's slot and gauge are given back: nothing escapes into the HTTP parser."""
    _upstream, wire, server = await _warmed(plane, max_concurrent=1)
    encode = server._encode
    failed: list[bool] = []

    def encode_once_failing(frame: Any) -> bytes:
        if not failed and isinstance(frame, TunnelResponse) and frame.status_code == 200:
            failed.append(True)
            raise ValueError("cannot encode")
        return encode(frame)

    server._encode = encode_once_failing
    _ask(server, "bug", "/small")
    await _until(lambda: bool(wire.of("bug")))
    (answer,) = wire.of("bug")
    assert answer.status_code == 500 and "cannot encode" in answer.error.message
    assert server.requests_in_flight == 0 and server._slots.try_take()
    await server.close()


async def test_an_is_close_for_a_finished_or_unknown_request_changes_nothing(plane: Any) -> None:
    """A gateway repeating isClose after the answer, or naming requests it never sent: no
    frame, no slot, no count moves, and the next request is served as before."""
    _, wire, server = await _warmed(plane, max_concurrent=1)
    _ask(server, "done", "/small")
    await _until(lambda: bool(wire.of("done")))
    sent = len(wire.now) + len(wire.later)
    for rid in ("done", "never-sent"):
        server.dispatch(encode_binary(StreamChunk(request_id=rid, is_close=True)), binary=True)
    assert len(wire.now) + len(wire.later) == sent
    assert server.requests_in_flight == 0
    assert server._slots._free == 1  # still one slot: none given back twice
    _ask(server, "after", "/small")
    assert server.requests_in_flight == 1 and not server._tasks  # the one slot was free
    await _until(lambda: bool(wire.of("after")))
    assert wire.of("after")[0].status_code == 200
    await server.close()
