"""The internal listener: notify, status, reconnect, events, and the Kubernetes proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web
from lightkube.core.exceptions import ApiError

from workflowplane.api import (
    ClientCAError,
    ClusterWorkflowPlaneResource,
    InvalidManifest,
    WorkflowPlaneResource,
    cr_key_of,
    decode_plane,
)
from workflowplane.api.kube import get_dict
from workflowplane.gateway.appkey import GATEWAY
from workflowplane.gateway.planes import entry_of
from workflowplane.pki import CertificateRejected, verify_client_certificate
from workflowplane.protocol import StreamChunk, StreamInit, TunnelRequest, TunnelResponse
from workflowplane.protocol.http import ALLOWED_METHODS, GATEWAY_ERROR_HEADER, HOP_BY_HOP

if TYPE_CHECKING:
    from workflowplane.gateway.registry import AgentConnection
    from workflowplane.gateway.server import Gateway

log = logging.getLogger(__name__)
# A request body reaches handlers decoded, so its Content-Encoding no longer applies.
REQUEST_HOP_BY_HOP = HOP_BY_HOP | {"content-encoding"}
NOTIFY_EVENTS = frozenset({"created", "updated", "deleted"})


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


def _gateway(request: web.Request) -> Gateway:
    gateway: Gateway = request.app[GATEWAY]
    return gateway


# ---- notify ------------------------------------------------------------------------------


async def notify(request: web.Request) -> web.Response:
    gateway = _gateway(request)
    try:
        payload = await request.json()
    except ValueError:
        return k8s_status(400, "body must be JSON")
    missing = [k for k in ("planeType", "planeID", "event", "name") if not payload.get(k)]
    if missing or payload["event"] not in NOTIFY_EVENTS:
        return k8s_status(
            400,
            f"notify needs planeType, planeID, name and event in "
            f"{sorted(NOTIFY_EVENTS)} (missing: {', '.join(missing) or 'none'})",
        )
    key = cr_key_of(payload.get("namespace") or None, payload["name"])
    if payload["event"] == "deleted":
        gateway.planes.remove(key)
        return web.json_response(await _reauthorize(gateway, payload, key, None, "revoked"))
    try:
        ca = await _fresh_ca(gateway, payload.get("namespace") or None, payload["name"])
    except ApiError as exc:
        return k8s_status(503, f"cannot read {key} right now: {exc}", "ServiceUnavailable")
    action = "reverified" if ca is not None else "revoked"
    return web.json_response(await _reauthorize(gateway, payload, key, ca, action))


async def _fresh_ca(gateway: Gateway, namespace: str | None, name: str) -> bytes | None:
    """The CR's CA read from the API now (not the cache); None when the CR or CA is gone."""
    resource: Any = WorkflowPlaneResource if namespace else ClusterWorkflowPlaneResource
    data = await get_dict(gateway.kube, resource, name, namespace)
    if data is None:
        gateway.planes.remove(cr_key_of(namespace, name))
        return None
    data.setdefault("kind", "WorkflowPlane" if namespace else "ClusterWorkflowPlane")
    try:
        entry = entry_of(decode_plane(data))
    except InvalidManifest:
        return None
    if entry.location is not None:
        await gateway.planes.refresh_secret(entry.location)
    gateway.planes.upsert(entry)
    try:
        return gateway.planes.ca_of(entry)
    except ClientCAError:
        return None


async def _reauthorize(
    gateway: Gateway, payload: dict[str, Any], key: str, ca: bytes | None, action: str
) -> dict[str, Any]:
    """Grant or revoke this one CR on every connection; other CRs are untouched.

    Connections of the CR's planeID are re-verified against its CA; connections of any other
    planeID lose the CR (its planeID changed), so requests for it can only reach its plane.
    """
    granted: list[str] = []
    revoked: list[str] = []
    closing: list[AgentConnection] = []
    for conn in list(gateway.registry.connections.values()):
        if key not in conn.authorized and conn.plane_id != payload["planeID"]:
            continue
        same_plane = (conn.plane_type, conn.plane_id) == (payload["planeType"], payload["planeID"])
        allowed = same_plane and ca is not None and _verifies(conn, ca)
        if allowed and key not in conn.authorized:
            conn.authorized.add(key)
            granted.append(conn.id)
        elif not allowed and key in conn.authorized:
            conn.authorized.discard(key)
            revoked.append(conn.id)
        if not conn.authorized:
            closing.append(conn)
        elif conn.id in granted or conn.id in revoked:
            gateway.registry.publish("authorization", conn)
    for conn in closing:
        log.info("closing agent %s: no CR authorizes it any more", conn.id)
        await conn.ws.close(message=b"no longer authorized")
    return {
        "success": True,
        "action": action,
        "disconnectedAgents": len(closing),
        "authorizationsGranted": len(granted),
        "authorizationsRevoked": len(revoked),
    }


def _verifies(conn: AgentConnection, ca: bytes) -> bool:
    try:
        verify_client_certificate([conn.leaf], ca)
    except CertificateRejected:
        return False
    return True


# ---- status, reconnect, events -------------------------------------------------------------


async def plane_status(request: web.Request) -> web.Response:
    gateway = _gateway(request)
    name = request.query.get("name")
    key = cr_key_of(request.query.get("namespace") or None, name) if name else None
    info = request.match_info
    return web.json_response(gateway.registry.status(info["type"], info["id"], key))


async def all_status(request: web.Request) -> web.Response:
    planes = _gateway(request).registry.all_status()
    return web.json_response({"planes": planes, "total": len(planes)})


async def reconnect(request: web.Request) -> web.Response:
    gateway = _gateway(request)
    conns = gateway.registry.for_plane(request.match_info["type"], request.match_info["id"])
    for conn in conns:
        await conn.ws.close(message=b"reconnect requested")
    return web.json_response({"success": True, "disconnectedAgents": len(conns)})


async def events(request: web.Request) -> web.StreamResponse:
    """Newline-delimited JSON connection events; a blank line every 15 s keeps it honest."""
    gateway = _gateway(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    queue = gateway.registry.subscribe()
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=15)
                await response.write(json.dumps(event).encode() + b"\n")
            except TimeoutError:
                await response.write(b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        gateway.registry.unsubscribe(queue)
    return response


# ---- proxy -------------------------------------------------------------------------------


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


async def proxy(request: web.Request) -> web.StreamResponse:
    gateway = _gateway(request)
    if request.method not in ALLOWED_METHODS:
        return k8s_status(405, f"method {request.method} not allowed", "MethodNotAllowed")
    if bad_path(request.raw_path):
        return k8s_status(400, "path traversal ('..' or NUL) is not allowed", "BadRequest")
    info = request.match_info
    namespace = None if info["crNamespace"] == "_cluster" else info["crNamespace"]
    key = cr_key_of(namespace, info["crName"])
    plane_type, plane_id = info["planeType"], info["planeID"]
    if not gateway.registry.for_plane(plane_type, plane_id):
        return _count(
            gateway,
            k8s_status(
                502, f"no agent connected for {plane_type}/{plane_id}", "ServiceUnavailable"
            ),
        )
    conn = gateway.registry.pick(plane_type, plane_id, key)
    if conn is None:
        return _count(
            gateway,
            k8s_status(
                403,
                f"no agent connection of {plane_type}/{plane_id} is authorized for {key}",
                "Forbidden",
            ),
        )
    body = await request.read()
    path = "/" + info["path"]
    if is_streaming(request.query):
        return await _stream(request, gateway, conn, path)
    return _count(gateway, await _exchange(gateway, conn, request, path, body))


def _count(gateway: Gateway, response: web.Response) -> web.Response:
    gateway.metrics.requests.labels(str(response.status)).inc()
    return response


async def _exchange(
    gateway: Gateway, conn: AgentConnection, request: web.Request, path: str, body: bytes
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
    try:
        await conn.send(frame)
        reply = await asyncio.wait_for(future, gateway.config.request_timeout_seconds)
    except TimeoutError:
        return k8s_status(
            502,
            f"agent did not answer within {gateway.config.request_timeout_seconds:.0f}s",
            "Timeout",
        )
    except ConnectionError as exc:
        return k8s_status(502, f"agent connection lost: {exc}", "ServiceUnavailable")
    finally:
        conn.pending.pop(rid, None)
    gateway.metrics.latency.observe(time.perf_counter() - started)
    return _to_response(reply)


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


async def _stream(
    request: web.Request, gateway: Gateway, conn: AgentConnection, path: str
) -> web.StreamResponse:
    """watch=true / follow=true: status and headers first, then bytes as the agent sends them."""
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
        first = await asyncio.wait_for(queue.get(), gateway.config.request_timeout_seconds)
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
