"""The public listener's one route, ``GET /ws``: admit an agent, then carry its frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import msgspec
from aiohttp import WSMsgType, web
from cryptography import x509

from workflowplane.api import PLANE_TYPE
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.kits.clock import utcnow
from workflowplane.kits.tasks import TaskSet, cancel_and_wait
from workflowplane.protocol import StreamChunk, TunnelResponse, classify_gateway_frame

log = logging.getLogger(__name__)
KNOWN_PLANE_TYPES = frozenset({PLANE_TYPE})


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return x509.load_der_x509_certificate(der) if der else None


class AgentEndpoint:
    """Serves ``/ws`` for agents: the HTTP side of admission (400/401 with the reason, before
    the upgrade), then one connection's frame loop and heartbeat.

    Whether a certificate is admitted, and for which CRs, is the connection manager's call;
    this class turns its answer into a response, registers the connection while it lasts,
    and hands each response frame to the request waiting for it. It owns the heartbeat tasks.
    """

    def __init__(
        self, connections: ConnectionManager, config: GatewayConfig, metrics: GatewayMetrics
    ) -> None:
        self._connections = connections
        self._config = config
        self._metrics = metrics
        self._heartbeats = TaskSet("heartbeat")

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws", self.handle)]

    async def close(self) -> None:
        """Stop every heartbeat still running (their connections are closing)."""
        await self._heartbeats.close()

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        self._metrics.rejected.labels(reason).inc()
        log.warning("agent refused (%d %s): %s", status, reason, message)
        return web.json_response({"error": message, "reason": reason}, status=status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /ws?planeType=&planeID=: 400/401 before the upgrade, with the reason."""
        plane_type = request.query.get("planeType", "")
        plane_id = request.query.get("planeID", "")
        if not plane_type or not plane_id:
            return self._refuse(400, "missing-params", "planeType and planeID are required")
        if plane_type not in KNOWN_PLANE_TYPES:
            return self._refuse(400, "unknown-plane-type", f"unknown planeType {plane_type!r}")
        leaf = peer_certificate(request)
        if leaf is None:
            return self._refuse(401, "no-certificate", "a client certificate is required")
        admission = self._connections.admit(plane_id, leaf)
        if not admission.granted:
            return self._refuse(
                401,
                "not-authorized",
                f"certificate {leaf.subject.rfc4514_string()} for planeID {plane_id!r} "
                f"verifies against no CR's CA ({admission.why_refused()})",
            )
        ws = web.WebSocketResponse(autoping=False, max_msg_size=self._config.max_frame_bytes)
        await ws.prepare(request)
        conn = AgentConnection(plane_type, plane_id, ws, leaf, set(admission.granted))
        self._connections.connect(conn)
        log.info(
            "agent %s connected for planeID %s, authorized for %s",
            conn.id,
            plane_id,
            sorted(admission.granted),
        )
        heartbeat = self._heartbeats.spawn(self._heartbeat(conn, ws), conn.id)
        try:
            await self._read_frames(conn, ws)
        finally:
            await cancel_and_wait([heartbeat])
            self._connections.disconnect(conn)
            log.info("agent %s (planeID %s) disconnected", conn.id, plane_id)
        return ws

    async def _heartbeat(self, conn: AgentConnection, ws: web.WebSocketResponse) -> None:
        """Ping periodically; close a connection silent for longer than ``dead_after``."""
        dead_after = dt.timedelta(seconds=self._config.dead_after_seconds)
        while not ws.closed:
            await asyncio.sleep(self._config.ping_interval_seconds)
            if utcnow() - conn.last_seen > dead_after:
                log.warning("agent %s silent for %s: closing", conn.id, dead_after)
                await ws.close()
                return
            try:
                await ws.ping()
            except ConnectionError:
                return

    async def _read_frames(self, conn: AgentConnection, ws: web.WebSocketResponse) -> None:
        async for message in ws:
            conn.seen()
            if message.type in {WSMsgType.TEXT, WSMsgType.BINARY}:
                self._route_frame(conn, message.data)
            elif message.type == WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type == WSMsgType.ERROR:
                log.warning("agent %s websocket error: %s", conn.id, ws.exception())

    def _route_frame(self, conn: AgentConnection, raw: str | bytes) -> None:
        """Deliver a response or chunk to whoever waits for it; drop (and count) the rest."""
        try:
            frame = classify_gateway_frame(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._metrics.dropped_frames.inc()
            log.warning("agent %s sent a malformed frame (dropped): %s", conn.id, exc)
            return
        rid = frame.request_id
        if rid in conn.streams:
            if isinstance(frame, StreamChunk):
                if frame.data:
                    conn.streams[rid].put_nowait(frame.data)
                if frame.is_close is True:
                    conn.streams[rid].put_nowait(None)
            elif isinstance(frame, TunnelResponse):
                conn.streams[rid].put_nowait(frame)
            return
        future = conn.pending.get(rid)
        if isinstance(frame, TunnelResponse) and future is not None and not future.done():
            future.set_result(frame)
            return
        if isinstance(frame, TunnelResponse):
            self._metrics.late.inc()
            log.info("dropping a response for unknown or timed-out request %s", rid)
        else:
            self._metrics.dropped_frames.inc()
