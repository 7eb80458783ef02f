"""How many headers an agent's answer may carry: over the names, lines or bytes the gateway
relays, the caller gets a 502 naming the limit and nothing of the answer, on every path an
answer takes (aiohttp's: whole, chunked, a stream's head; the lean server's: whole, read in
the socket's callback or by the task, and chunked). Before, only the frame's 1 MiB of
metadata bounded them: 60,000 headers took ~90 ms of the shared loop, and all were relayed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.gateway.stand_ins import LEAF, ScriptedAgent
from workflowplane.gateway import kube_proxy
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.drain import InFlight
from workflowplane.gateway.fast_proxy import FastProxy
from workflowplane.gateway.kube_proxy import (
    ANSWER_HEADER_BYTES,
    ANSWER_HEADER_LINES,
    ANSWER_HEADER_NAMES,
    AnswerHeadersRefused,
    KubeProxy,
    reply_headers,
)
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.kits.http1_server import Limits, Request
from workflowplane.protocol import Frame, StreamChunk, StreamInit, TunnelRequest, TunnelResponse

KEY = "team-a/build"
PLAIN = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"
Headers = dict[str, list[str]]
FLOODS: dict[str, tuple[Headers, str]] = {
    "names": (
        {f"X-Flood-{i}": ["1"] for i in range(ANSWER_HEADER_NAMES + 1)},
        f"more than {ANSWER_HEADER_NAMES} header names",
    ),
    "lines": (
        {"X-Flood": ["1"] * (ANSWER_HEADER_LINES + 1)},
        f"more than {ANSWER_HEADER_LINES} header lines",
    ),
    "bytes": (
        {"X-Flood": ["v" * (ANSWER_HEADER_BYTES // 2), "v" * (ANSWER_HEADER_BYTES // 2)]},
        f"more than {ANSWER_HEADER_BYTES} bytes of headers",
    ),
}
flooded = pytest.mark.parametrize(("flood", "limit"), FLOODS.values(), ids=FLOODS.keys())


def test_the_bytes_bound_is_a_requests_head_bound() -> None:
    assert ANSWER_HEADER_BYTES == Limits().head_bytes == 64 * 1024


@pytest.mark.parametrize(
    "headers",
    [
        {f"X-H-{i}": ["1"] for i in range(ANSWER_HEADER_NAMES)},
        {f"X-H-{i}": ["1"] * 4 for i in range(ANSWER_HEADER_LINES // 4)},
        {"X-H": ["v" * (ANSWER_HEADER_BYTES - len("X-H"))]},
    ],
    ids=["names", "lines", "bytes"],
)
def test_an_answer_at_the_limits_is_relayed_whole(headers: Headers) -> None:
    assert reply_headers(headers) == [(k, v) for k, vs in headers.items() for v in vs]


class Counting:
    """Counts the calls of what it stands in for."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.inner(*args)


@pytest.mark.parametrize(
    "flood",
    [
        {f"X-Flood-{i}": ["1"] for i in range(60_000)},
        {"X-Flood": ["1"] * 60_000},
        {"X-Flood": ["v" * (1 << 20)]},
    ],
    ids=["names", "lines", "one-huge-value"],
)
def test_a_flood_is_refused_before_its_headers_are_looked_at(
    flood: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is done with its headers (names checked, values scanned) stops at the limits:
    the refusal costs what an answer at the limits would, not what the flood would (before:
    60,000 of each)."""
    names = Counting(kube_proxy._relayed_name)
    scans = Counting(kube_proxy._BAD_VALUE.search)
    bad_value: Any = type("BadValue", (), {"search": staticmethod(scans)})
    monkeypatch.setattr(kube_proxy, "_relayed_name", names)
    monkeypatch.setattr(kube_proxy, "_BAD_VALUE", bad_value)
    with pytest.raises(AnswerHeadersRefused):
        reply_headers(flood)
    assert names.calls <= ANSWER_HEADER_LINES and scans.calls <= ANSWER_HEADER_LINES


# ---- aiohttp's path -------------------------------------------------------------------------


class Serving:
    def __init__(self, conn: AgentConnection) -> None:
        self.conn = conn

    def serves(self, *_: Any) -> bool:
        return True

    def streams_of(self, *_: Any) -> int:
        return len(self.conn.streams)

    def pick(self, *_: Any, **__: Any) -> AgentConnection:
        return self.conn


def answering(headers: Headers, *, chunked: bool) -> Callable[[Frame], list[Frame]]:
    """Every request and stream answered 200 with ``headers``, a body after a chunked head
    or a stream's head, and a whole body otherwise."""

    def script(frame: Frame) -> list[Frame]:
        if isinstance(frame, StreamChunk):
            return []
        rid = frame.request_id
        if isinstance(frame, TunnelRequest) and not chunked:
            return [TunnelResponse(request_id=rid, status_code=200, headers=headers, body=b"{}")]
        head = TunnelResponse(
            request_id=rid,
            status_code=200,
            headers=headers,
            chunked=not isinstance(frame, StreamInit),
        )
        return [
            head,
            StreamChunk(request_id=rid, data=b'{"leaked": true}'),
            StreamChunk(request_id=rid, is_close=True),
        ]

    return script


def wired(
    headers: Headers, *, chunked: bool
) -> tuple[AgentConnection, ScriptedAgent, KubeProxy, AgentEndpoint, GatewayMetrics]:
    metrics, config = GatewayMetrics(), GatewayConfig()
    agent = ScriptedAgent(answering(headers, chunked=chunked))
    ws: Any = agent
    conn = AgentConnection("workflowplane", "p1", ws, LEAF, {KEY}, v2=True, binary=True)
    connections: Any = Serving(conn)
    endpoint = AgentEndpoint(connections, config, metrics)
    agent.deliver = lambda frame: endpoint._dispatch(conn, frame)
    return conn, agent, KubeProxy(connections, config, metrics), endpoint, metrics


async def raw(proxy: KubeProxy, target: str) -> bytes:
    """Everything the caller's connection receives for one GET (then closed)."""
    app = web.Application()
    app.add_routes(proxy.routes())
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    return received


@flooded
@pytest.mark.parametrize(
    ("query", "chunked"),
    [("", False), ("", True), ("?watch=true", False)],
    ids=["whole", "chunked", "watch"],
)
async def test_aiohttps_path_answers_502_naming_the_limit_and_relays_nothing(
    flood: Headers, limit: str, query: str, chunked: bool
) -> None:
    conn, agent, proxy, _, _ = wired(flood, chunked=chunked)
    received = await raw(proxy, PLAIN + query)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ")
    assert limit.encode() in body
    assert b"X-Flood" not in received and b"leaked" not in received
    assert conn.pending == {} and conn.bodies == {} and conn.streams == {}
    if chunked or query:
        assert agent.closes() == 1  # the agent is told to stop the body it would send


# ---- the lean server's path -----------------------------------------------------------------


class Responder:
    """The lean server's Responder: what was written to the caller."""

    def __init__(self) -> None:
        self.written: list[tuple[int, list[tuple[str, str]], bytes]] = []
        self.streamed: list[object] = []

    def whole(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.written.append((status, headers, body))

    def stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.streamed.append((status, headers))

    async def chunk(self, data: bytes | bytearray) -> None:
        self.streamed.append(bytes(data))

    def end(self) -> None:
        self.streamed.append("end")


@flooded
@pytest.mark.parametrize(
    ("chunked", "early"),
    [(False, True), (False, False), (True, False)],
    ids=["whole-in-the-read", "whole-by-the-task", "chunked"],
)
async def test_the_lean_path_answers_502_naming_the_limit_and_relays_nothing(
    flood: Headers, limit: str, chunked: bool, early: bool
) -> None:
    """``early``: the agent's answer as the frame guard hands it over in the socket's read
    callback (``answer_now``); else as the waiting task takes it."""
    conn, agent, proxy, endpoint, metrics = wired(flood, chunked=chunked)
    if not early:
        agent.deliver = lambda frame: _without_answer_now(endpoint, conn, frame)
    connections: Any = Serving(conn)
    lean = FastProxy(proxy, connections, InFlight(), AnswerLog(metrics))
    handler = lean.route("GET", PLAIN, [])
    assert handler is not None
    responder: Any = Responder()
    await asyncio.wait_for(handler(Request("GET", PLAIN, [], b""), responder), 30)
    ((status, headers, body),) = responder.written
    assert status == 502 and limit.encode() in body
    assert not any(name.startswith("X-Flood") for name, _ in headers)
    assert responder.streamed == []
    assert conn.pending == {} and conn.bodies == {} and conn.answer_now == {}
    if chunked:
        assert agent.closes() == 1


def _without_answer_now(endpoint: AgentEndpoint, conn: AgentConnection, frame: Frame) -> None:
    """Deliver as for a request with nobody to answer it in the read: the task takes it."""
    held = dict(conn.answer_now)
    conn.answer_now.clear()
    try:
        endpoint._dispatch(conn, frame)
    finally:
        conn.answer_now.update(held)
