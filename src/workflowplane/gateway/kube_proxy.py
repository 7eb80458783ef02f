"""The internal listener's Kubernetes proxy: a request for one CR, through one of its agents."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from workflowplane.api import cr_key_of
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.protocol import StreamChunk, StreamInit, TunnelRequest, TunnelResponse
from workflowplane.protocol.http import ALLOWED_METHODS, GATEWAY_ERROR_HEADER, HOP_BY_HOP

# A request body reaches handlers decoded, so its Content-Encoding no longer applies.
REQUEST_HOP_BY_HOP = HOP_BY_HOP | {"content-encoding"}
PROXY_ROUTE = "/api/proxy/{planeType}/{planeID}/{crNamespace}/{crName}/k8s/{path:.*}"


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
    return [
        (k, v)
        for k, values in (headers or {}).items()
        if k.lower() not in HOP_BY_HOP
        for v in values
    ]


def _to_response(reply: TunnelResponse) -> web.Response:
    error = reply.error
    if error and not reply.body:
        status = reply.status_code or error.code or 502
        return k8s_status(
            status, f"agent: {error.message}" + (f" ({error.details})" if error.details else "")
        )
    return web.Response(
        status=reply.status_code or 502,
        body=reply.body or b"",
        headers=_reply_headers(reply.headers),
    )


class KubeProxy:
    """``/api/proxy/.../k8s/...``: forwards a Kubernetes API request to an agent of the plane
    authorized for the CR in the path (the connection manager picks it), and the answer back;
    watch/follow requests stream. Owns the request/response correlation and the proxy
    metrics; decides nothing about authorization."""

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
        conn = self._connections.pick(plane_type, plane_id, key)
        if conn is None:
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
            return await self._stream(request, conn, path)
        return self._count(await self._exchange(conn, request, path, body))

    def _count(self, response: web.Response) -> web.Response:
        self._metrics.requests.labels(str(response.status)).inc()
        return response

    async def _exchange(
        self, conn: AgentConnection, request: web.Request, path: str, body: bytes
    ) -> web.Response:
        rid = str(uuid.uuid4())
        future: asyncio.Future[TunnelResponse] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = future
        started = time.perf_counter()
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
        except ConnectionError as exc:
            return k8s_status(502, f"agent connection lost: {exc}", "ServiceUnavailable")
        finally:
            conn.pending.pop(rid, None)
        self._metrics.latency.observe(time.perf_counter() - started)
        return _to_response(reply)

    async def _stream(
        self, request: web.Request, conn: AgentConnection, path: str
    ) -> web.StreamResponse:
        """watch=true / follow=true: status and headers first, then bytes as the agent sends."""
        rid = str(uuid.uuid4())
        queue: asyncio.Queue[TunnelResponse | bytes | None] = asyncio.Queue()
        conn.streams[rid] = queue
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
            first = await asyncio.wait_for(queue.get(), self._config.request_timeout_seconds)
            if not isinstance(first, TunnelResponse):
                return k8s_status(502, "agent sent no stream header", "ServiceUnavailable")
            if first.error and first.status_code >= 400:
                return _to_response(first)
            response = web.StreamResponse(
                status=first.status_code, headers=_reply_headers(first.headers)
            )
            await response.prepare(request)
            while (item := await queue.get()) is not None:
                if isinstance(item, bytes):
                    await response.write(item)
            await response.write_eof()
            return response
        except TimeoutError:
            return k8s_status(502, "agent did not start the stream in time", "Timeout")
        finally:
            conn.streams.pop(rid, None)
            if not conn.ws.closed:
                with contextlib.suppress(ConnectionError):
                    await conn.send(StreamChunk(request_id=rid, is_close=True))
