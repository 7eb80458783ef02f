"""What a hostile agent sends on the stream and exec paths: heads that may carry no body, an
end with a huge reason, chunks faster than one per pass of the loop, exec probes it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from tests.unit.gateway.stand_ins import LEAF, ScriptedAgent
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.exec_proxy import Caller, ExecProxy
from workflowplane.gateway.kube_proxy import KubeProxy, Target
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.streams import PROBLEM_SHOWN, StreamBuffer, StreamEnd
from workflowplane.protocol import Frame, StreamChunk, StreamInit, TunnelRequest, TunnelResponse

pytestmark = pytest.mark.asyncio
KEY = "team-a/build"
BASE = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"
# What a hostile agent streams after a head that may carry no body: the caller's next answer.
SPLIT = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"
Script = Callable[[Frame], list[Frame]]


class _Connections:
    def __init__(self, conn: AgentConnection) -> None:
        self.conn = conn

    def serves(self, *_: Any) -> bool:
        return True

    def streams_of(self, *_: Any) -> int:
        return sum(stream.key == KEY for stream in self.conn.streams.values())

    def pick(self, *_: Any, stream_cap: int | None = None) -> AgentConnection | None:
        full = stream_cap is not None and len(self.conn.streams) >= stream_cap
        return None if full else self.conn


def _wired(
    script: Script, config: GatewayConfig
) -> tuple[AgentConnection, ScriptedAgent, KubeProxy]:
    metrics = GatewayMetrics()
    agent = ScriptedAgent(script)
    ws: Any = agent
    conn = AgentConnection("workflowplane", "p1", ws, LEAF, {KEY}, v2=True, binary=True)
    connections: Any = _Connections(conn)
    endpoint = AgentEndpoint(connections, config, metrics)
    agent.deliver = _dispatcher(endpoint, conn)
    return conn, agent, KubeProxy(connections, config, metrics)


def _dispatcher(endpoint: AgentEndpoint, conn: AgentConnection) -> Callable[[Frame], object]:
    return lambda frame: endpoint._dispatch(conn, frame)


def _bodyless_head(status: int) -> Script:
    """A head with ``status`` for any request or stream, then SPLIT as its body's chunk."""

    def script(frame: Frame) -> list[Frame]:
        if isinstance(frame, StreamChunk):
            return []
        rid = frame.request_id
        chunked = isinstance(frame, TunnelRequest)
        return [
            TunnelResponse(request_id=rid, status_code=status, chunked=chunked),
            StreamChunk(request_id=rid, data=SPLIT),
            StreamChunk(request_id=rid, is_close=True),
        ]

    return script


async def _raw(proxy: KubeProxy, method: str, target: str) -> bytes:
    """Everything the caller's connection receives for one request (then closed)."""
    app = web.Application()
    app.add_routes(proxy.routes())
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = await reader.read()
        writer.close()
    return received


@pytest.mark.parametrize(
    ("method", "query", "status"),
    [
        ("GET", "?watch=true", 204),
        ("GET", "?watch=true", 304),
        ("HEAD", "?watch=true", 200),
        ("GET", "", 204),
        ("GET", "", 304),
        ("HEAD", "", 200),
    ],
)
async def test_a_head_that_carries_no_body_never_relays_the_agents_chunks(
    method: str, query: str, status: int
) -> None:
    """Before: aiohttp wrote the chunks raw after a 204/304 or HEAD head, and the caller
    read them as its next answer (``HTTP/1.1 200 OK ... evil!``)."""
    conn, agent, proxy = _wired(_bodyless_head(status), GatewayConfig())
    received = await _raw(proxy, method, BASE + query)
    assert received.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"evil" not in received and received.count(b"HTTP/1.1") == 1
    rid = agent.frames[0].request_id
    assert any(isinstance(f, StreamChunk) and f.request_id == rid for f in agent.frames[1:])
    assert conn.streams == {} and conn.bodies == {}


async def test_a_huge_end_reason_is_bounded_in_the_callers_answer() -> None:
    """An isClose with 1 MB of data for a watch: before, all of it was the 502's message."""

    def script(frame: Frame) -> list[Frame]:
        if not isinstance(frame, StreamInit):
            return []
        return [StreamChunk(request_id=frame.request_id, data=b"e" * 1_000_000, is_close=True)]

    _, _, proxy = _wired(script, GatewayConfig())
    received = await _raw(proxy, "GET", BASE + "?watch=true")
    assert received.startswith(b"HTTP/1.1 502 ")
    assert b"eee" in received and b"(1000000 bytes)" in received
    assert len(received) < 2 * PROBLEM_SHOWN + 1024


async def test_an_end_keeps_at_most_problem_shown_characters_of_its_reason() -> None:
    buffer = StreamBuffer(KEY, 1024)
    buffer.end(StreamEnd("x" * 100_000))
    end = buffer.get_nowait()
    assert isinstance(end, StreamEnd) and end.problem is not None
    assert end.problem.startswith("x" * PROBLEM_SHOWN)
    assert len(end.problem) < PROBLEM_SHOWN + 40


async def test_a_chunked_answers_waiting_chunks_are_relayed_in_one_pass() -> None:
    """Before: one ``asyncio.wait_for`` per chunk (a task each), one chunk per pass of the
    loop, so a relay of small chunks fell behind however fast its caller read."""
    _, _, proxy = _wired(lambda frame: [], GatewayConfig())
    buffer = StreamBuffer(KEY, 10_000_000, headed=True)
    for _ in range(1000):
        assert buffer.put(b"x")
    buffer.end()
    written: list[bytes | bytearray] = []

    async def write(data: bytes | bytearray) -> None:
        written.append(data)

    pump = asyncio.create_task(proxy._pump_body(buffer, write))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(written) == 1000 and pump.done() and pump.result() is None


async def test_an_exec_probe_in_flight_holds_its_stream_slot() -> None:
    """The caps were checked before the probe and the slot taken after it: every exec sent
    while the agent held its probes passed the caps (here 2 streams for a cap of 1)."""
    config = GatewayConfig(max_streams_per_cr=1)
    conn, agent, proxy = _wired(lambda frame: [], config)
    execs = ExecProxy(proxy, config)
    target = Target("workflowplane", "p1", KEY)
    path, query = "/api/v1/namespaces/x/pods/p/exec", "command=sh&stdout=true"

    def serve() -> asyncio.Task[web.StreamResponse]:
        request = make_mocked_request("GET", "/exec")
        return asyncio.create_task(execs._serve(request, target, path, query, Caller.K8S))

    first = serve()
    await agent.sent.wait()
    second = await serve()
    assert second.status == 429
    assert [type(f) for f in agent.frames] == [TunnelRequest]  # one probe, for the first
    probe = agent.frames[0].request_id
    agent.deliver(TunnelResponse(request_id=probe, status_code=403, body=b"forbidden"))
    answer = await first
    assert answer.status == 403
    assert conn.streams == {} and conn.pending == {}


@pytest.mark.parametrize("status", [204, 304])
async def test_a_chunked_bodyless_answer_is_whole_for_every_server(status: int) -> None:
    """``answer_of`` decides for both servers (the lean one too): no body buffer to relay
    after a 204/304 head, the buffer dropped and the agent told to stop."""
    conn, agent, proxy = _wired(lambda frame: [], GatewayConfig())
    conn.bodies["r-1"] = StreamBuffer("r-1", 1024, headed=True)
    head = TunnelResponse(request_id="r-1", status_code=status, chunked=True)
    answer = await proxy.answer_of(conn, head, "a request")
    assert isinstance(answer, tuple) and answer[0] == status and answer[2] == b""
    assert conn.bodies == {}
    assert [f for f in agent.frames if isinstance(f, StreamChunk) and f.is_close is True]
