"""The agent's v3 connections take requests straight from the socket (kits.ws_tap): what they
read counts as traffic, and nothing read once the connection's server closed is served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.unit.agent.stand_ins import Gateway, plain_tunnel, serving, until
from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.upstream import Upstream
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.protocol import TUNNEL_V3, StreamChunk, TunnelRequest
from workflowplane.protocol.binary import encode_binary

DISCONNECTIONS = "workflowplane_agent_disconnections_total"


class V3Gateway(Gateway):
    """A gateway stand-in that selects the binary tunnel (so the agent's tap is on)."""

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False, protocols=[TUNNEL_V3])
        await ws.prepare(request)
        self.sockets.append(ws)
        await self.script(ws)
        return ws


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Upstream, list[str]]]:
    """The plane's API server (every request it gets, by method and path) and an upstream."""
    asked: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        asked.append(f"{request.method} {request.path}")
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", anything)
    async with TestServer(app) as server:
        upstream = Upstream(KubeTarget.from_server(f"http://127.0.0.1:{server.port}"), 1 << 20)
        yield upstream, asked
        await upstream.close()


def counted(tunnel: Any, reason: str) -> Callable[[], float]:
    def value() -> float:
        sample = tunnel.metrics.registry.get_sample_value(DISCONNECTIONS, {"reason": reason})
        return sample or 0.0

    return value


async def test_a_request_read_while_the_agent_closes_is_not_served(
    plane: tuple[Upstream, list[str]],
) -> None:
    """The gateway's request crosses the agent's close frame: before the tap, aiohttp's close
    dropped it; taken from the socket it must be dropped too, not sent to the API server."""
    upstream, asked = plane
    crossed = asyncio.Event()

    async def request_after_the_agents_close(ws: web.WebSocketResponse) -> None:
        if len(asked) == 0 and not crossed.is_set():
            late = TunnelRequest(request_id="served", method="GET", path="/api/v1/namespaces")
            await ws.send_bytes(encode_binary(late))
            assert (await ws.receive()).type == WSMsgType.BINARY  # its answer
            message = await ws.receive()  # the agent's close (a reconnect was requested)
            assert message.type == WSMsgType.CLOSE, message
            late = TunnelRequest(request_id="late", method="DELETE", path="/api/v1/pods/x")
            await ws.send_bytes(encode_binary(late))
            crossed.set()
        await ws.close()

    gateway = V3Gateway(request_after_the_agents_close)
    async with serving(gateway):
        tunnel = plain_tunnel(gateway.url, upstream=upstream)
        task = asyncio.create_task(tunnel.run())
        try:
            await until(lambda: asked == ["GET /api/v1/namespaces"])
            tunnel.reconnect_requested.set()
            await until(lambda: crossed.is_set() and len(gateway.sockets) >= 2)
        finally:
            await cancel_and_wait([task])
    assert asked == ["GET /api/v1/namespaces"]  # the late DELETE never reached the plane


async def test_binary_traffic_taken_from_the_socket_keeps_the_connection_alive(
    plane: tuple[Upstream, list[str]],
) -> None:
    """Messages the tap takes never pass ``receive()``; they must count as traffic too."""
    upstream, _ = plane
    sent = asyncio.Event()

    async def talk_then_fall_silent(ws: web.WebSocketResponse) -> None:
        for _ in range(20):  # five times the dead-after, in messages the tap takes
            await ws.send_bytes(encode_binary(StreamChunk(request_id="none", is_close=True)))
            await asyncio.sleep(0.05)
        sent.set()
        async for _ in ws:
            pass

    gateway = V3Gateway(talk_then_fall_silent)
    async with serving(gateway):
        tunnel = plain_tunnel(gateway.url, upstream=upstream, dead_after=0.2)
        task = asyncio.create_task(tunnel.run())
        timeouts = counted(tunnel, "timeout")
        try:
            await until(lambda: sent.is_set() or timeouts() >= 1)
            assert sent.is_set() and timeouts() == 0
            await until(lambda: timeouts() >= 1)  # and silence still ends it
        finally:
            await cancel_and_wait([task])
