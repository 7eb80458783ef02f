"""A request's timeout covers its send to the agent: a request waiting for the connection
behind another's large frame on a slow agent link gets its timeout 502 at its deadline, and
its frame is never sent after it. A send cut while its frame drains leaves the frame whole
and the connection's other sends unharmed.

The stand-in link behaves as aiohttp's ``WebSocketWriter`` does (checked against the real
one in the last test): a frame goes whole into the transport, then a sender waits for the
transport to drain on the one future all senders share (``_drain_waiter``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tests.unit.gateway.stand_ins import LEAF, OneAgent, slow_reader
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.drain import InFlight
from workflowplane.gateway.fast_proxy import FastProxy
from workflowplane.gateway.frames import GuardedWebSocket
from workflowplane.gateway.kube_proxy import KubeProxy, Target, send_within
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.kits.eager import start_eagerly
from workflowplane.kits.http1_server import Request
from workflowplane.protocol import Frame, StreamChunk, TunnelRequest, TunnelResponse
from workflowplane.protocol.binary import decode_binary
from workflowplane.protocol.messages import TUNNEL_V3

BUFFER_LIMIT = 64 * 1024  # a frame over it waits for the link to drain (aiohttp's limit)
LARGE = b"x" * (4 << 20)  # tenant A's body
PLAIN = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"


class SlowLink:
    """An agent's socket on a slow link: what was written to its transport (each frame whole,
    at once), and one drain future shared by every waiting sender until ``catch_up``."""

    closed = False

    def __init__(self) -> None:
        self.written: list[Frame] = []
        self.drain: asyncio.Future[None] | None = None
        self.paused = False

    async def send_bytes(self, data: bytes) -> None:
        self.written.append(decode_binary(data))
        self.paused = self.paused or len(data) > BUFFER_LIMIT
        if self.paused:
            if self.drain is None:
                self.drain = asyncio.get_running_loop().create_future()
            await self.drain  # as aiohttp's ``_drain_helper``: not shielded, not replaced

    def catch_up(self) -> None:
        self.paused = False
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def ids(self) -> list[str]:
        return [frame.request_id for frame in self.written]


def proxy_for(conn: AgentConnection, timeout: float) -> KubeProxy:
    connections: Any = OneAgent(conn)
    return KubeProxy(connections, GatewayConfig(request_timeout_seconds=timeout), GatewayMetrics())


def on_link(link: Any) -> AgentConnection:
    return AgentConnection(
        "workflowplane", "p1", link, LEAF, {"team-a/build"}, v2=True, binary=True
    )


def request(rid: str, body: bytes = b"") -> TunnelRequest:
    return TunnelRequest(request_id=rid, method="POST" if body else "GET", path="/x", body=body)


def answer(conn: AgentConnection, rid: str) -> None:
    conn.pending[rid].set_result(TunnelResponse(request_id=rid, status_code=200))


@pytest.mark.looptime
async def test_a_request_behind_a_large_send_gets_its_502_at_its_deadline_and_is_never_sent() -> (
    None
):
    """The reviewer's case: A's 4 MiB to a slow agent holds the connection; B (1 s) had its
    502 only when A's send ended, and B's frame went to the agent after B had timed out."""
    loop = asyncio.get_running_loop()
    link = SlowLink()
    conn = on_link(link)
    a = asyncio.create_task(proxy_for(conn, 60).ask(conn, request("a", LARGE)))
    await asyncio.sleep(0)
    assert link.ids() == ["a"] and not a.done()  # A's frame written, its send draining
    started = loop.time()
    b = await asyncio.wait_for(proxy_for(conn, 1).ask(conn, request("b")), 30)
    assert isinstance(b, web.Response) and b.status == 502
    assert isinstance(b.body, bytes) and b"agent did not answer within 1s" in b.body
    assert loop.time() - started == pytest.approx(1, abs=0.01)  # looptime's clock
    assert not a.done() and link.ids() == ["a"] and "b" not in conn.pending

    link.catch_up()  # A's frame has left: the connection is free again, B stays unsent
    for _ in range(5):
        await asyncio.sleep(0)
    assert link.ids() == ["a"]
    answer(conn, "a")
    reply = await asyncio.wait_for(a, 5)
    assert isinstance(reply, TunnelResponse) and reply.status_code == 200
    c = asyncio.create_task(proxy_for(conn, 1).ask(conn, request("c")))
    await asyncio.sleep(0)
    assert link.ids() == ["a", "c"]
    answer(conn, "c")
    assert isinstance(await asyncio.wait_for(c, 5), TunnelResponse)


@pytest.mark.looptime
async def test_a_send_cut_while_draining_leaves_the_frame_whole_and_the_next_send_unharmed() -> (
    None
):
    """A's own deadline comes while its frame drains: its 502 at the deadline, the frame
    already whole in the transport, and the drain future the next sender shares is not
    cancelled (cancelled, every send after it would fail until the link caught up)."""
    link = SlowLink()
    conn = on_link(link)
    a = await asyncio.wait_for(proxy_for(conn, 1).ask(conn, request("a", LARGE)), 30)
    assert isinstance(a, web.Response) and a.status == 502
    assert link.ids() == ["a"] and "a" not in conn.pending
    assert link.drain is not None and not link.drain.cancelled()

    c = asyncio.create_task(proxy_for(conn, 60).ask(conn, request("c", LARGE)))
    await asyncio.sleep(0)
    assert link.ids() == ["a", "c"] and not c.done()  # it waits on the same drain
    link.catch_up()
    for _ in range(5):
        await asyncio.sleep(0)
    answer(conn, "c")
    reply = await asyncio.wait_for(c, 5)
    assert isinstance(reply, TunnelResponse) and reply.status_code == 200


class Answers:
    """The lean server's Responder, as far as a whole answer goes."""

    def __init__(self) -> None:
        self.written: list[tuple[int, list[tuple[str, str]], bytes]] = []

    def whole(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.written.append((status, headers, body))


@pytest.mark.looptime
async def test_the_lean_path_run_eagerly_gets_its_502_at_its_deadline_unsent() -> None:
    """The lean server begins a handler outside any task (``kits.eager``): the wait for the
    connection is cut all the same, and the 502 is written to the caller."""
    loop = asyncio.get_running_loop()
    link = SlowLink()
    conn = on_link(link)
    a = asyncio.create_task(proxy_for(conn, 60).ask(conn, request("a", LARGE)))
    await asyncio.sleep(0)
    metrics = GatewayMetrics()
    connections: Any = OneAgent(conn)
    lean = FastProxy(proxy_for(conn, 1), connections, InFlight(), AnswerLog(metrics))
    handler = lean.route("GET", PLAIN, [])
    assert handler is not None
    answers: Any = Answers()

    async def serve() -> None:  # as the lean server runs a handler
        await handler(Request("GET", PLAIN, [], b""), answers)

    rest = start_eagerly(loop, serve())
    assert rest is not None and answers.written == []  # waiting for the connection
    await asyncio.wait_for(rest, 30)
    ((status, _, body),) = answers.written
    assert status == 502 and b"agent did not answer within 1s" in body
    assert not a.done() and link.ids() == ["a"] and list(conn.pending) == ["a"]
    link.catch_up()
    answer(conn, "a")
    await asyncio.wait_for(a, 5)


# ---- the same against aiohttp's own WebSocket writer, on a real socket ----------------------


@pytest.fixture
async def unread_agent() -> AsyncIterator[tuple[GuardedWebSocket, socket.socket]]:
    """The gateway's side of an agent's WebSocket (aiohttp's, small buffers) whose agent
    reads nothing until the test reads its socket."""
    opened: asyncio.Future[GuardedWebSocket] = asyncio.get_running_loop().create_future()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = GuardedWebSocket(limit=1 << 26, protocols=(TUNNEL_V3,))
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        opened.set_result(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    agent = slow_reader(port)
    agent.setblocking(False)
    try:
        yield await opened, agent
    finally:
        agent.close()
        await runner.cleanup()


class AgentReader:
    """The agent's reading of its socket: the upgrade answer, then whole server frames."""

    def __init__(self, agent: socket.socket) -> None:
        self._agent = agent
        self._data = bytearray()
        self._head_done = False

    async def frames(self, count: int) -> list[Frame]:
        loop = asyncio.get_running_loop()
        found: list[Frame] = []
        while len(found) < count:
            message = self._take()
            if message is None:
                chunk = await loop.sock_recv(self._agent, 1 << 20)
                assert chunk, "the gateway closed the connection"
                self._data += chunk
            else:
                found.append(decode_binary(message))
        return found

    def _take(self) -> bytes | None:
        """One whole frame's payload off the front (RFC 6455, unmasked, no fragments)."""
        if not self._head_done:
            end = self._data.find(b"\r\n\r\n")
            if end < 0:
                return None
            del self._data[: end + 4]
            self._head_done = True
        if len(self._data) < 2:
            return None
        assert self._data[0] == 0x82, f"not a whole binary frame: {self._data[:2].hex()}"
        size, start = self._data[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(self._data[2:4]), 4
        elif size == 127:
            size, start = int.from_bytes(self._data[2:10]), 10
        if len(self._data) < start + size:
            return None
        message = bytes(self._data[start : start + size])
        del self._data[: start + size]
        return message


async def test_through_aiohttps_writer_the_stream_stays_whole_and_a_late_frame_is_never_sent(
    unread_agent: tuple[GuardedWebSocket, socket.socket],
) -> None:
    """A (deadline later) drains 4 MiB to an agent that reads nothing; B (deadline sooner)
    waits for the connection behind it: B's 502 comes while A's send still waits, and B is
    never written. Then A is cut while draining; C's large send waits on the same drain,
    unharmed. When the agent reads, it gets A and C whole, and nothing of B."""
    ws, agent = unread_agent
    conn = on_link(ws)
    a = asyncio.create_task(proxy_for(conn, 0.6).ask(conn, request("a", LARGE)))
    await asyncio.sleep(0)
    assert not a.done()
    b = await asyncio.wait_for(proxy_for(conn, 0.2).ask(conn, request("b")), 10)
    assert isinstance(b, web.Response) and b.status == 502
    assert not a.done()  # A's send still waits for the agent to read
    a_answer = await asyncio.wait_for(a, 10)
    assert isinstance(a_answer, web.Response) and a_answer.status == 502

    c = asyncio.create_task(proxy_for(conn, 60).ask(conn, request("c", LARGE)))
    await asyncio.sleep(0)
    assert not c.done()
    frames = await asyncio.wait_for(AgentReader(agent).frames(2), 30)
    assert [frame.request_id for frame in frames] == ["a", "c"]
    assert all(isinstance(f, TunnelRequest) and f.body == LARGE for f in frames)
    answer(conn, "c")
    reply = await asyncio.wait_for(c, 10)
    assert isinstance(reply, TunnelResponse) and reply.status_code == 200
    assert not ws.closed


class StreamingAgent(OneAgent):
    def streams_of(self, *_: Any) -> int:
        return len(self.conn.streams)


@pytest.mark.looptime
async def test_a_watch_behind_a_large_send_gets_its_502_at_its_deadline_and_is_closed_later() -> (
    None
):
    """A watch's wait for its head covered only the head: its send waited without bound.
    Cut, its init may be whole in the transport's buffer, so the agent is still told to
    stop, once the connection takes it, while the caller has had its 502."""
    link = SlowLink()
    conn = on_link(link)
    a = asyncio.create_task(proxy_for(conn, 60).ask(conn, request("a", LARGE)))
    await asyncio.sleep(0)
    connections: Any = StreamingAgent(conn)
    proxy = KubeProxy(connections, GatewayConfig(request_timeout_seconds=1), GatewayMetrics())
    target = Target("workflowplane", "p1", "team-a/build")
    watch = make_mocked_request("GET", PLAIN + "?watch=true")
    stream = proxy._stream(watch, target, "/api/v1/pods", "watch=true")
    answered = await asyncio.wait_for(stream, 30)
    assert isinstance(answered, web.Response) and answered.status == 502
    assert isinstance(answered.body, bytes) and b"did not start the stream in time" in answered.body
    assert link.ids() == ["a"] and not conn.streams and not a.done()
    link.catch_up()
    for _ in range(10):
        await asyncio.sleep(0)
    closes = [f for f in link.written[1:] if isinstance(f, StreamChunk) and f.is_close is True]
    assert [f.request_id for f in link.written[1:]] == [closes[0].request_id]
    answer(conn, "a")
    await asyncio.wait_for(a, 5)


class LockedSend:
    """A connection whose send waits for its lock, then writes (as ``AgentConnection``)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.written: list[Frame] = []

    async def send(self, frame: Frame) -> None:
        async with self.lock:
            self.written.append(frame)


async def test_a_send_handed_the_connection_after_its_deadline_writes_nothing() -> None:
    """The lock is handed over and the deadline comes in the same pass, before the send
    resumes: it must not write a frame whose caller has had its 502."""
    loop = asyncio.get_running_loop()
    conn: Any = LockedSend()
    await conn.lock.acquire()
    until: asyncio.Future[None] = loop.create_future()
    sending = asyncio.create_task(send_within(conn, request("b"), until))
    await asyncio.sleep(0)
    assert not sending.done()
    conn.lock.release()  # the waiting send's turn: its waiter is done, it has not resumed
    until.cancel()
    assert await asyncio.wait_for(sending, 5) is False
    assert conn.written == [] and not conn.lock.locked()
    assert await send_within(conn, request("c"), loop.create_future()) is True
    assert [frame.request_id for frame in conn.written] == ["c"]


async def test_cancelling_the_task_still_cancels_a_waiting_send() -> None:
    """A cancellation of the request's task (not its deadline) is not taken for a cut."""
    loop = asyncio.get_running_loop()
    conn: Any = LockedSend()
    await conn.lock.acquire()
    sending = asyncio.create_task(send_within(conn, request("b"), loop.create_future()))
    await asyncio.sleep(0)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    conn.lock.release()
    assert conn.written == [] and not conn.lock.locked()
