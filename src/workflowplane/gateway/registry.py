"""Open agent connections, what each is authorized for, and who wants to hear of changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509

from workflowplane.kits.clock import utcnow
from workflowplane.protocol import Frame, TunnelResponse, encode

log = logging.getLogger(__name__)
StreamItem = TunnelResponse | bytes | None  # None: the stream ended


@dataclass(eq=False)
class AgentConnection:
    plane_type: str
    plane_id: str
    ws: web.WebSocketResponse
    leaf: x509.Certificate
    authorized: set[str]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    connected_at: dt.datetime = field(default_factory=utcnow)
    last_seen: dt.datetime = field(default_factory=utcnow)
    pending: dict[str, asyncio.Future[TunnelResponse]] = field(default_factory=dict)
    streams: dict[str, asyncio.Queue[StreamItem]] = field(default_factory=dict)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def seen(self) -> None:
        self.last_seen = utcnow()

    async def send(self, frame: Frame) -> None:
        async with self._send_lock:
            await self.ws.send_str(encode(frame).decode())

    def fail_all(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        for queue in self.streams.values():
            queue.put_nowait(None)


class Registry:
    def __init__(self) -> None:
        self.connections: dict[str, AgentConnection] = {}
        self._turns: defaultdict[tuple[str, str], itertools.count[int]] = defaultdict(
            itertools.count
        )
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def add(self, conn: AgentConnection) -> None:
        self.connections[conn.id] = conn
        self.publish("connected", conn)

    def remove(self, conn: AgentConnection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            conn.fail_all("agent disconnected")
            self.publish("disconnected", conn)

    def for_plane(self, plane_type: str, plane_id: str) -> list[AgentConnection]:
        return [
            c
            for c in self.connections.values()
            if c.plane_id == plane_id and c.plane_type == plane_type
        ]

    def authorized(self, plane_type: str, plane_id: str, key: str) -> list[AgentConnection]:
        return [c for c in self.for_plane(plane_type, plane_id) if key in c.authorized]

    def pick(self, plane_type: str, plane_id: str, key: str) -> AgentConnection | None:
        """Round-robin over the connections authorized for one CR."""
        candidates = sorted(self.authorized(plane_type, plane_id, key), key=lambda c: c.id)
        if not candidates:
            return None
        return candidates[next(self._turns[(plane_id, key)]) % len(candidates)]

    def status(self, plane_type: str, plane_id: str, key: str | None) -> dict[str, Any]:
        conns = (
            self.authorized(plane_type, plane_id, key)
            if key is not None
            else self.for_plane(plane_type, plane_id)
        )
        last_seen = max((c.last_seen for c in conns), default=None)
        return {
            "planeType": plane_type,
            "planeID": plane_id,
            "connected": bool(conns),
            "connectedAgents": len(conns),
            "lastSeen": last_seen.isoformat() if last_seen else None,
        }

    def all_status(self) -> list[dict[str, Any]]:
        planes = sorted({(c.plane_type, c.plane_id) for c in self.connections.values()})
        result = []
        for plane_type, plane_id in planes:
            entry = self.status(plane_type, plane_id, None)
            entry["crs"] = sorted(
                {k for c in self.for_plane(plane_type, plane_id) for k in c.authorized}
            )
            result.append(entry)
        return result

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def publish(self, kind: str, conn: AgentConnection) -> None:
        event = {
            "type": kind,
            "planeType": conn.plane_type,
            "planeID": conn.plane_id,
            "crKeys": sorted(conn.authorized),
            "agentID": conn.id,
            "connectedAgents": len(self.for_plane(conn.plane_type, conn.plane_id)),
            "lastSeen": conn.last_seen.isoformat(),
        }
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("an event subscriber is not reading; dropping it")
                self._subscribers.discard(queue)
