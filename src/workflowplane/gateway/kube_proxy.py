"""The internal listener's Kubernetes proxy: a request for one CR, through one of its agents.

Whatever the agent answers, the caller gets a well-formed HTTP answer at once: an invalid
status code or an answer over the frame limit becomes a 502 that says so. Streams
(watch/follow) are capped per agent connection and per CR (429 beyond), so ordinary requests
always have room, and each stream's buffer is bounded (a caller that falls behind is cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from workflowplane.api import cr_key_of
from workflowplane.gateway.answers import REQUEST_ID
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.frames import ResponseTooLarge
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.streams import StreamBuffer, StreamEnd
from workflowplane.protocol import (
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
)
from workflowplane.protocol.http import ALLOWED_METHODS, GATEWAY_ERROR_HEADER, HOP_BY_HOP
from workflowplane.protocol.verbs import kube_verb

log = logging.getLogger(__name__)
# A request body reaches handlers decoded, so its Content-Encoding no longer applies.
REQUEST_HOP_BY_HOP = HOP_BY_HOP | {"content-encoding"}
PROXY_ROUTE = "/api/proxy/{planeType}/{planeID}/{crNamespace}/{crName}/k8s/{path:.*}"
RETRY_STREAM_AFTER_SECONDS = 5
# RFC 9110 token (header names); values may not carry CR, LF or NUL (response splitting).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def k8s_status(code: int, message: str, reason: str = "") -> web.Response:
    """A Kubernetes ``Status`` body, so kubectl-style clients show the message."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or "Failure",
        "code": code,
    }
    return web.json_response(body, status=code, headers={GATEWAY_ERROR_HEADER: reason or "Failure"})


def bad_path(raw_path: str) -> bool:
    """``..`` segments (also percent-encoded) and NUL bytes are refused."""
    decoded = unquote(unquote(raw_path))
    return "\x00" in decoded or any(part == ".." for part in decoded.split("/"))


def is_streaming(query: dict[str, str] | Any) -> bool:
    return query.get("watch") in ("true", "1") or query.get("follow") in ("true", "1")


def forward_headers(request: web.Request) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        if name.lower() not in REQUEST_HOP_BY_HOP and name.lower() != "authorization":
            headers.setdefault(name, []).append(value)
    return headers


def _reply_headers(headers: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    """The agent's headers the caller gets: no hop-by-hop ones, none that would break the
    response (a name that is not a token, a value with CR, LF or NUL)."""
    return [
        (k, v)
        for k, values in (headers or {}).items()
        if k.lower() not in HOP_BY_HOP and _HEADER_NAME.match(k)
        for v in values
        if not _BAD_VALUE.search(v)
    ]


def final_status(code: int) -> bool:
    """A status that can end an HTTP exchange: 1xx are interim (a caller would wait for
    another answer), and anything outside 100-599 breaks the status line."""
    return 200 <= code <= 599


class KubeProxy:
    """``/api/proxy/.../k8s/...``: forwards a Kubernetes API request to an agent of the plane
    authorized for the CR in the path (the connection manager picks it), and the answer back;
    watch/follow requests stream. Owns the request/response correlation, the stream caps and
    buffers and the proxy metrics; decides nothing about authorization."""

    def __init__(
        self, connections: ConnectionManager, config: GatewayConfig, metrics: GatewayMetrics
    ) -> None:
        self._connections = connections
        self._config = config
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", PROXY_ROUTE, self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ALLOWED_METHODS:
            return k8s_status(405, f"method {request.method} not allowed", "MethodNotAllowed")
        if bad_path(request.raw_path):
            return k8s_status(400, "path traversal ('..' or NUL) is not allowed", "BadRequest")
        info = request.match_info
        namespace = None if info["crNamespace"] == "_cluster" else info["crNamespace"]
        key = cr_key_of(namespace, info["crName"])
        plane_type, plane_id = info["planeType"], info["planeID"]
        if not self._connections.for_plane(plane_type, plane_id):
            return self._count(
                k8s_status(
                    502, f"no agent connected for {plane_type}/{plane_id}", "ServiceUnavailable"
                )
            )
        if not self._connections.authorized(plane_type, plane_id, key):
            return self._count(
                k8s_status(
                    403,
                    f"no agent connection of {plane_type}/{plane_id} is authorized for {key}",
                    "Forbidden",
                )
            )
        body = await request.read()
        path = "/" + info["path"]
        if is_streaming(request.query):
            return await self._stream(request, plane_type, plane_id, key, path)
        conn = self._connections.pick(plane_type, plane_id, key)
        if conn is None:  # its last authorized connection went while the body was read
            return self._count(k8s_status(502, f"no agent connection for {key}", "Unavailable"))
        return self._count(await self._exchange(conn, request, path, body))

    def _count(self, response: web.Response) -> web.Response:
        """Where every answer passes; it is counted and logged by ``answers.AnswerLog`` when
        its status goes out (streams included)."""
        return response

    def _to_response(self, reply: TunnelResponse) -> web.Response:
        """The agent's answer as the caller's; one that HTTP cannot carry becomes a 502."""
        error = reply.error if isinstance(reply.error, TunnelError) and not reply.body else None
        status = reply.status_code or (error.code if error else 0) or 502
        if not final_status(status):
            self._metrics.invalid_status.inc()
            return k8s_status(
                502,
                f"the agent answered with status code {status}, "
                "which is not a final HTTP status (200-599)",
                "BadGateway",
            )
        if error:
            detail = f" ({error.details})" if error.details else ""
            return k8s_status(status, f"agent: {error.message}{detail}")
        return web.Response(
            status=status, body=reply.body or b"", headers=_reply_headers(reply.headers)
        )

    async def _exchange(
        self, conn: AgentConnection, request: web.Request, path: str, body: bytes
    ) -> web.Response:
        rid = str(uuid.uuid4())
        request[REQUEST_ID] = rid
        future: asyncio.Future[TunnelResponse] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = future
        started = time.perf_counter()
        in_flight = self._metrics.requests_in_flight.labels(conn.plane_id)
        in_flight.inc()
        frame = TunnelRequest(
            request_id=rid,
            method=request.method,
            path=path,
            query=request.query_string,
            headers=forward_headers(request),
            body=body,
        )
        timeout = self._config.request_timeout_seconds
        try:
            await conn.send(frame)
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return k8s_status(502, f"agent did not answer within {timeout:.0f}s", "Timeout")
        except ResponseTooLarge as exc:
            return k8s_status(502, str(exc), "ResponseTooLarge")
        except ConnectionError as exc:
            return k8s_status(502, f"agent connection lost: {exc}", "ServiceUnavailable")
        finally:
            conn.pending.pop(rid, None)
            in_flight.dec()
        verb = kube_verb(request.method, path, request.query)
        self._metrics.latency.labels(conn.plane_id, verb).observe(time.perf_counter() - started)
        return self._to_response(reply)

    def _stream_slot(
        self, plane_type: str, plane_id: str, key: str
    ) -> AgentConnection | web.Response:
        """A connection with room for one more stream of ``key``, or the 429 saying which
        cap was reached."""
        per_cr = self._config.max_streams_per_cr
        if self._connections.streams_of(plane_type, plane_id, key) >= per_cr:
            self._metrics.streams_refused.labels("cr").inc()
            return _too_many(
                f"{key} already has {per_cr} streams (watch/follow) open through "
                f"{plane_type}/{plane_id}: the gateway's cap per CR (--max-streams-per-cr)"
            )
        per_agent = self._config.max_streams_per_agent
        conn = self._connections.pick(plane_type, plane_id, key, stream_cap=per_agent)
        if conn is None:
            self._metrics.streams_refused.labels("agent").inc()
            return _too_many(
                f"every agent connection of {plane_type}/{plane_id} authorized for {key} "
                f"already carries {per_agent} streams (watch/follow): the gateway's cap per "
                "agent connection (--max-streams-per-agent); ordinary requests still go through"
            )
        return conn

    async def _stream(
        self, request: web.Request, plane_type: str, plane_id: str, key: str, path: str
    ) -> web.StreamResponse:
        """watch=true / follow=true: status and headers first, then bytes as the agent sends."""
        slot = self._stream_slot(plane_type, plane_id, key)
        if isinstance(slot, web.Response):
            return self._count(slot)
        conn, rid = slot, str(uuid.uuid4())
        request[REQUEST_ID] = rid
        buffer = StreamBuffer(key, self._config.max_stream_buffer_bytes)
        buffer.on_overflow = lambda: self._cut_off(request, conn, rid, buffer)
        conn.streams[rid] = buffer
        streams = self._metrics.streams_in_flight.labels(conn.plane_id)
        streams.inc()
        try:
            await conn.send(
                StreamInit(
                    request_id=rid,
                    method=request.method,
                    path=path,
                    query=request.query_string,
                    headers=forward_headers(request),
                    is_upgrade=False,
                )
            )
            first = await asyncio.wait_for(buffer.get(), self._config.request_timeout_seconds)
            if not isinstance(first, TunnelResponse):
                problem = first.problem if isinstance(first, StreamEnd) else None
                return self._count(
                    k8s_status(502, problem or "agent sent no stream header", "BadGateway")
                )
            if (first.error and first.status_code >= 400) or not final_status(first.status_code):
                return self._count(self._to_response(first))
            return await self._relay(request, first, buffer)
        except TimeoutError:
            return self._count(k8s_status(502, "agent did not start the stream in time", "Timeout"))
        finally:
            conn.streams.pop(rid, None)
            streams.dec()
            if not conn.ws.closed:
                with contextlib.suppress(ConnectionError):
                    await conn.send(StreamChunk(request_id=rid, is_close=True))

    @staticmethod
    async def _relay(
        request: web.Request, first: TunnelResponse, buffer: StreamBuffer
    ) -> web.StreamResponse:
        """The stream's body as it comes; it ends when the agent's stream does (or fails:
        the status is sent already, so the caller sees the body end, and re-watches)."""
        response = web.StreamResponse(
            status=first.status_code, headers=_reply_headers(first.headers)
        )
        await response.prepare(request)
        while not isinstance(item := await buffer.get(), StreamEnd):
            if isinstance(item, bytes):
                await response.write(item)
        if item.problem:
            log.info("stream %s for %s ended early: %s", request.path, buffer.key, item.problem)
        await response.write_eof()
        return response

    def _cut_off(
        self, request: web.Request, conn: AgentConnection, rid: str, buffer: StreamBuffer
    ) -> None:
        """The caller fell behind the buffer's bound: drop its connection (it may be stuck
        not reading, so nothing can be written to it any more); the handler's cleanup
        then tells the agent to stop the stream."""
        self._metrics.slow_streams.inc()
        log.warning(
            "stream %s of %s through agent %s closed: the caller fell more than %d bytes behind",
            rid,
            buffer.key,
            conn.id,
            buffer.limit,
        )
        if request.transport is not None:
            request.transport.abort()


def _too_many(message: str) -> web.Response:
    response = k8s_status(429, message, "TooManyRequests")
    response.headers["Retry-After"] = str(RETRY_STREAM_AFTER_SECONDS)
    return response
