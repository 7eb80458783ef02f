"""Stand-ins for the agent's unit tests: its API server, and a wait for what a test asserts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from multidict import CIMultiDictProxy

from workflowplane.agent.metrics import AgentMetrics
from workflowplane.agent.replicas import Discovery, ListedReplicas, ReplicaAddress, TunnelFleet
from workflowplane.agent.tunnel import AgentTunnel
from workflowplane.agent.upstream import UpstreamResult


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait for ``check`` to hold (what the test asserts next)."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


class Upstream:
    """The plane's API server as the agent sees it: answers once ``gate`` is set."""

    def __init__(self, status: int = 200) -> None:
        self.gate = asyncio.Event()
        self.status = status
        self.asked = 0
        self.traces: list[aiohttp.TraceConfig] = []

    def observe(self, trace: aiohttp.TraceConfig) -> None:
        self.traces.append(trace)

    async def request(self, *_: Any, **__: Any) -> UpstreamResult:
        self.asked += 1
        await self.gate.wait()
        return UpstreamResult(self.status, {}, b"not ready" if self.status != 200 else b"ok")

    async def stream(self, *_: Any) -> AsyncIterator[UpstreamResult | bytes]:
        await self.gate.wait()
        yield UpstreamResult(200, {}, b"")
        await asyncio.Event().wait()  # a watch: until cancelled


@dataclass
class Gateway:
    """A WebSocket server in the gateway's place; each connection does what ``script`` says.
    ``upgrades`` keeps the headers of every upgrade request it took."""

    script: Callable[[web.WebSocketResponse], Any]
    server: BaseTestServer | None = None
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    upgrades: list[CIMultiDictProxy[str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.upgrades.append(request.headers)
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.sockets.append(ws)
        await self.script(ws)
        return ws

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def serving(*gateways: Gateway) -> AsyncIterator[None]:
    """Each gateway listening on a free loopback port (its ``url``) until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        for gateway in gateways:
            app = web.Application()
            app.router.add_get("/ws", gateway.handle)
            gateway.server = await stack.enter_async_context(TestServer(app))
        yield


async def plain() -> Any:
    return False  # ws://: no TLS


def plain_tunnel(url: str, **options: Any) -> AgentTunnel:
    """A tunnel over plain ws:// with short backoffs; ``options`` override its settings."""
    settings: dict[str, Any] = {
        "initial_backoff": 0.01,
        "max_backoff": 0.05,
        "stable_after": 30.0,
        "dead_after": 30.0,
        "max_frame": 1 << 20,
        "timeout": 5.0,
        "max_concurrent": 4,
        **options,
    }
    upstream = settings.pop("upstream", None) or Upstream()
    return AgentTunnel(url, "workflowplane", "p", plain, upstream, **settings)


def plain_fleet(discovery: Discovery | tuple[str, ...], **options: Any) -> TunnelFleet:
    """A fleet of ``plain_tunnel`` s, one per replica ``discovery`` (or that list of URLs)
    finds; ``options`` go to each tunnel."""
    if isinstance(discovery, tuple):
        discovery = ListedReplicas(discovery)
    metrics = AgentMetrics()

    def dial(address: ReplicaAddress, on_change: Callable[[], None]) -> AgentTunnel:
        return plain_tunnel(address.url, metrics=metrics, on_change=on_change, **options)

    return TunnelFleet(discovery, dial, metrics, resolve_every=0.05)
