"""The public listener's one route: admit an agent per CR, then carry its frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING

import msgspec
from aiohttp import WSMsgType, web
from cryptography import x509

from workflowplane.api import PLANE_TYPE
from workflowplane.gateway.appkey import GATEWAY
from workflowplane.gateway.registry import AgentConnection
from workflowplane.kits.clock import utcnow
from workflowplane.protocol import StreamChunk, TunnelResponse, classify_gateway_frame

if TYPE_CHECKING:
    from workflowplane.gateway.server import Gateway

log = logging.getLogger(__name__)
KNOWN_PLANE_TYPES = frozenset({PLANE_TYPE})


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return x509.load_der_x509_certificate(der) if der else None


def _refuse(gateway: Gateway, status: int, reason: str, message: str) -> web.Response:
    gateway.metrics.rejected.labels(reason).inc()
    log.warning("agent refused (%d %s): %s", status, reason, message)
    return web.json_response({"error": message, "reason": reason}, status=status)


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """GET /ws?planeType=&planeID=: 400/401 before the upgrade, with the reason."""
    gateway: Gateway = request.app[GATEWAY]
    plane_type = request.query.get("planeType", "")
    plane_id = request.query.get("planeID", "")
    if not plane_type or not plane_id:
        return _refuse(gateway, 400, "missing-params", "planeType and planeID are required")
    if plane_type not in KNOWN_PLANE_TYPES:
        return _refuse(gateway, 400, "unknown-plane-type", f"unknown planeType {plane_type!r}")
    leaf = peer_certificate(request)
    if leaf is None:
        return _refuse(gateway, 401, "no-certificate", "a client certificate is required")
    granted, refused = gateway.planes.authorize(plane_id, leaf)
    if not granted:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(refused.items())) or "no CR has planeID"
        return _refuse(
            gateway,
            401,
            "not-authorized",
            f"certificate {leaf.subject.rfc4514_string()} for planeID {plane_id!r} "
            f"verifies against no CR's CA ({why})",
        )
    ws = web.WebSocketResponse(autoping=False, max_msg_size=gateway.config.max_frame_bytes)
    await ws.prepare(request)
    conn = AgentConnection(plane_type, plane_id, ws, leaf, granted)
    gateway.add_connection(conn)
    log.info(
        "agent %s connected for planeID %s, authorized for %s", conn.id, plane_id, sorted(granted)
    )
    heartbeat = asyncio.create_task(_heartbeat(gateway, conn))
    try:
        await _read_frames(gateway, conn)
    finally:
        heartbeat.cancel()
        gateway.remove_connection(conn)
        log.info("agent %s (planeID %s) disconnected", conn.id, plane_id)
    return ws


async def _heartbeat(gateway: Gateway, conn: AgentConnection) -> None:
    """Ping periodically; close a connection silent for longer than ``dead_after``."""
    dead_after = dt.timedelta(seconds=gateway.config.dead_after_seconds)
    while not conn.ws.closed:
        await asyncio.sleep(gateway.config.ping_interval_seconds)
        if utcnow() - conn.last_seen > dead_after:
            log.warning("agent %s silent for %s: closing", conn.id, dead_after)
            await conn.ws.close()
            return
        try:
            await conn.ws.ping()
        except ConnectionError:
            return


async def _read_frames(gateway: Gateway, conn: AgentConnection) -> None:
    async for message in conn.ws:
        conn.seen()
        if message.type in {WSMsgType.TEXT, WSMsgType.BINARY}:
            _route_frame(gateway, conn, message.data)
        elif message.type == WSMsgType.PING:
            await conn.ws.pong(message.data)
        elif message.type == WSMsgType.ERROR:
            log.warning("agent %s websocket error: %s", conn.id, conn.ws.exception())


def _route_frame(gateway: Gateway, conn: AgentConnection, raw: str | bytes) -> None:
    """Deliver a response or chunk to whoever waits for it; drop (and count) the rest."""
    try:
        frame = classify_gateway_frame(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        gateway.metrics.dropped_frames.inc()
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
        gateway.metrics.late.inc()
        log.info("dropping a response for unknown or timed-out request %s", rid)
    else:
        gateway.metrics.dropped_frames.inc()
