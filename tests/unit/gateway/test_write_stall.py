"""An agent that stops reading what the gateway sends it: its writes stall, and it is cut off
after the stall limit, so a request's send cannot outlive its timeout and a close cannot wait
for it without end (each close waited, one after another, at shutdown)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.unit.gateway.stand_ins import LEAF, OneAgent, slow_reader
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.frames import GuardedWebSocket
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.server import BoundedSite
from workflowplane.protocol import TunnelRequest
from workflowplane.protocol.messages import TUNNEL_V3

STALL = 0.3
CONNECTIONS: list[AgentConnection] = []


@pytest.fixture
async def silent_agent() -> AsyncIterator[tuple[GuardedWebSocket, socket.socket]]:
    """A gateway's agent socket (the real WebSocket, its stall limit short) whose agent
    completed the upgrade and then reads nothing (unless the test reads its socket)."""
    opened: asyncio.Future[GuardedWebSocket] = asyncio.get_running_loop().create_future()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = GuardedWebSocket(limit=1 << 26, protocols=(TUNNEL_V3,))
        await ws.prepare(request)
        assert request.transport is not None  # the kernel buffers little: the transport holds it
        request.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        opened.set_result(ws)
        async for _ in ws:
            pass
        for conn in CONNECTIONS:  # what the agent endpoint does as a connection ends
            conn.fail_all("agent disconnected")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    site = BoundedSite(
        runner, "127.0.0.1", 0, ssl_context=None, handshake_timeout=5, stall_seconds=STALL
    )
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    agent = slow_reader(port)
    try:
        yield await opened, agent
    finally:
        agent.close()
        await runner.cleanup()


async def test_requests_to_an_agent_that_reads_nothing_end_in_502s_not_hangs(
    silent_agent: tuple[GuardedWebSocket, socket.socket],
) -> None:
    """Requests of 1 MiB: the first two had their 502 at the request timeout, the next
    waited on the send lock past it, without end."""
    ws, _ = silent_agent
    conn = AgentConnection("workflowplane", "p1", ws, LEAF, {"t/b"}, v2=True, binary=True)
    CONNECTIONS[:] = [conn]
    proxy = KubeProxy(OneAgent(conn), GatewayConfig(request_timeout_seconds=60), GatewayMetrics())
    body = b"x" * (1 << 20)
    started = time.monotonic()
    asks = [
        proxy.ask(conn, TunnelRequest(request_id=f"r{n}", method="POST", path="/a", body=body))
        for n in range(4)
    ]
    async with asyncio.timeout(10):
        answers: list[Any] = await asyncio.gather(*asks)
    assert [answer.status for answer in answers] == [502] * 4
    assert time.monotonic() - started < 10
    assert ws.write_stalled


async def test_closing_an_agent_that_reads_nothing_ends(
    silent_agent: tuple[GuardedWebSocket, socket.socket],
) -> None:
    """aiohttp's close waits for the close frame to be written: it waited without end."""
    ws, _ = silent_agent
    conn = AgentConnection("workflowplane", "p1", ws, LEAF, {"t/b"}, v2=True, binary=True)
    manager = ConnectionManager(PlaneCache(None), GatewayMetrics())  # type: ignore[arg-type]
    manager.connect(conn)
    async with asyncio.timeout(10):
        await ws.send_bytes(b"x" * (4 << 20))  # its buffer full: writes are paused
        await manager.close_all(b"shutting down")
    assert ws.write_stalled


async def test_an_agent_that_reads_slowly_is_not_cut_off(
    silent_agent: tuple[GuardedWebSocket, socket.socket],
) -> None:
    """A body taken bit by bit keeps the writes paused longer than the limit; the buffer
    shrinking in each window is what tells slow from stalled."""
    ws, agent = silent_agent
    stop = threading.Event()

    def read_slowly() -> None:
        while not stop.is_set():
            agent.recv(4096)
            time.sleep(0.01)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    try:
        async with asyncio.timeout(20):
            await ws.send_bytes(b"x" * (512 << 10))  # over a second at this pace: windows
        assert not ws.write_stalled and not ws.closed
    finally:
        stop.set()
