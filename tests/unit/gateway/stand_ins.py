"""Stand-ins shared by the gateway's unit tests: an agent's socket and one serving agent."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.http_websocket import WSMessage

from tests.unit.ws_stand_ins import FakeProtocol
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.frames import FrameGuard, MessageBudget
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol import TUNNEL_V3, Frame, StreamChunk
from workflowplane.protocol.binary import decode_binary

LEAF = issue_certificate(generate_ca("any"), "agent").certificate


def frame_guard(
    limit: int, deadline: float, budget: MessageBudget | None = None, owner: str = ""
) -> tuple[FrameGuard, Any]:
    """A frame guard in front of aiohttp's own reader, and the queue it delivers to."""
    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(FakeProtocol(), 2**30, loop=loop)  # type: ignore[arg-type]
    inner = WebSocketReader(queue, limit + 1, compress=False, decode_text=False)
    return FrameGuard(inner, queue, limit, timeout=deadline, budget=budget, owner=owner), queue


def drain(queue: Any) -> list[WSMessage]:
    """The messages queued so far, taken out."""
    messages = []
    while queue._buffer:
        messages.append(queue._buffer.popleft()[0])
    return messages


class AgentSocket:
    """An agent connection's socket: the frames sent to the agent, decoded."""

    closed = False

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.sent = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(decode_binary(data))
        self.sent.set()

    def closes(self, rid: str | None = None) -> int:
        """How many times the agent was told to stop ``rid`` (any request: None)."""
        return sum(
            isinstance(f, StreamChunk) and rid in (None, f.request_id) and f.is_close is True
            for f in self.frames
        )


class ScriptedAgent(AgentSocket):
    """The agent's side of the socket: answers each frame the gateway sends by ``script``,
    delivered by ``deliver`` a pass of the loop later (as read from the socket)."""

    def __init__(self, script: Callable[[Frame], list[Frame]]) -> None:
        super().__init__()
        self.script = script
        self.deliver: Callable[[Frame], object] = lambda frame: None

    async def send_bytes(self, data: bytes) -> None:
        await super().send_bytes(data)
        loop = asyncio.get_running_loop()
        for reply in self.script(self.frames[-1]):
            loop.call_soon(self.deliver, reply)


class OneAgent:
    """Connections that serve every CR, through one agent connection."""

    def __init__(self, conn: AgentConnection) -> None:
        self.conn = conn

    def serves(self, *_: Any) -> bool:
        return True

    def pick(self, *_: Any, **__: Any) -> AgentConnection:
        return self.conn


class Wired(NamedTuple):
    """A gateway's proxy and agent endpoint around one v3 agent connection of plane p1,
    serving CR team-a/build, whose socket records what the gateway sends it."""

    conn: AgentConnection
    socket: AgentSocket
    proxy: KubeProxy
    endpoint: AgentEndpoint
    connections: Any
    metrics: GatewayMetrics


def wired() -> Wired:
    metrics, socket, config = GatewayMetrics(), AgentSocket(), GatewayConfig()
    ws: Any = socket  # the part of a WebSocket the gateway uses to send
    conn = AgentConnection("workflowplane", "p1", ws, LEAF, {"team-a/build"}, v2=True, binary=True)
    connections: Any = OneAgent(conn)
    proxy = KubeProxy(connections, config, metrics)
    return Wired(
        conn, socket, proxy, AgentEndpoint(connections, config, metrics), connections, metrics
    )


class ReadSide:
    """The gateway's reading of the agent's WebSocket, as ``_read_frames`` iterates it."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def __aiter__(self) -> ReadSide:
        return self

    async def __anext__(self) -> WSMessage:
        message: WSMessage = await self._queue.read()
        return message

    async def pong(self, data: bytes) -> None: ...

    def exception(self) -> None:
        return None


def slow_reader(port: int) -> socket.socket:
    """An agent's raw socket to a local /ws, upgraded to v3, that reads little: a 4 KiB
    receive buffer, so what the gateway writes backs up at once."""
    agent = socket.socket()
    agent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    agent.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    agent.sendall(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {TUNNEL_V3}\r\n\r\n".encode()
    )
    return agent
