"""Exec and attach through the tunnel, on OpenChoreo's upgrade path (docs/streaming.md).

Two ways in, one kind of stream to the agent:

- OpenChoreo's route ``/api/exec/{planeType}/{planeID}/{crNamespace}/{crName}?podNamespace=
  &podName=&container=&command=…&tty=&stdin=`` (its CLI's protocol: each WebSocket message is
  tunnel stream data as it is, stream byte first);
- ``kubectl exec``/``attach`` through ``/api/proxy/…/k8s/api/v1/namespaces/N/pods/P/exec``
  with a WebSocket upgrade (Kubernetes' ``v5.channel.k8s.io``/``v4``, translated by
  ``protocol.exec``).

Both send the agent OpenChoreo's stream init (``isUpgrade: true``, ``upgradeProto: SPDY/3.1``),
so OpenChoreo's agent serves it as well as ours. Before upgrading the caller, the gateway asks
the plane the same exec as a plain POST, which cannot run anything: the API server answers
"Upgrade request required" when the pod is reachable, and otherwise says what is wrong (no
such pod, no node, RBAC). That answer is the caller's, exactly as without the tunnel, with
either agent (OpenChoreo's agent reports no exec errors of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from workflowplane.api.planes import is_object_name
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.kube_proxy import (
    KubeProxy,
    Target,
    close_stream,
    k8s_status,
    raw_query,
)
from workflowplane.gateway.streams import StreamBuffer, StreamEnd, StreamItem
from workflowplane.protocol import StreamChunk, StreamInit, TunnelRequest, TunnelResponse
from workflowplane.protocol.exec import (
    K8S_PROTOCOLS,
    K8S_V5,
    POD_STREAM,
    RESIZE,
    STDIN,
    UPGRADE_PROTO,
    close_reason,
    close_status,
    k8s_to_tunnel,
    parse_status,
    tunnel_to_k8s,
)

log = logging.getLogger(__name__)
EXEC_ROUTE = "/api/exec/{planeType}/{planeID}/{crNamespace}/{crName}"
UPGRADE_REQUIRED = b"Upgrade request required"
CALLER_MESSAGE_BYTES = 1024 * 1024  # stdin arrives in pieces; nothing needs more at once
K8S_ERROR_CHANNEL = b"\x03"


class Caller(enum.Enum):
    RAW = "openchoreo"  # OpenChoreo's /api/exec route: tunnel stream data as it is
    K8S = "kubernetes"  # kubectl over WebSocket: v5/v4 channels
    SPDY = "spdy"  # kubectl's fallback: not served, but its errors are answered


def exec_query(request: web.Request) -> str:
    """OpenChoreo's ``buildK8sExecQuery``: the exec options of its route's query, sorted by
    name as Go's ``url.Values.Encode`` writes them."""
    params = request.query
    items = [("stdout", "true"), ("stderr", "true")]
    if params.get("stdin") == "true":
        items.append(("stdin", "true"))
    if params.get("tty") == "true":
        items.append(("tty", "true"))
    if params.get("container"):
        items.append(("container", params["container"]))
    items += [("command", command) for command in params.getall("command", [])]
    return urlencode(sorted(items, key=lambda item: item[0]))


def _caller_of(request: web.Request) -> Caller | web.Response:
    """Which protocol the caller's upgrade asks for; 400 when none we can speak."""
    upgrade = request.headers.get("Upgrade", "").lower()
    if upgrade.startswith("spdy"):
        return Caller.SPDY
    if upgrade != "websocket":
        return k8s_status(400, f"cannot upgrade to {upgrade!r}", "BadRequest")
    offered = {p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p}
    if offered & set(K8S_PROTOCOLS):
        return Caller.K8S
    return k8s_status(
        400,
        f"exec through the tunnel speaks {' or '.join(K8S_PROTOCOLS)}; the client offered "
        f"{sorted(offered) or 'none'}",
        "BadRequest",
    )


class ExecProxy:
    """Serves exec/attach streams; the connection choice, caps, correlation and answers are
    the Kubernetes proxy's (``KubeProxy``), which hands its upgrade requests here."""

    def __init__(self, proxy: KubeProxy, config: GatewayConfig) -> None:
        self._proxy = proxy
        self._config = config

    def routes(self) -> list[web.RouteDef]:
        return [web.get(EXEC_ROUTE, self.handle_exec)]

    async def handle_exec(self, request: web.Request) -> web.StreamResponse:
        """OpenChoreo's ``/api/exec/...`` route."""
        pod_namespace = request.query.get("podNamespace", "")
        pod = request.query.get("podName", "")
        if not pod_namespace or not pod:
            return k8s_status(
                400, "podNamespace and podName query parameters are required", "BadRequest"
            )
        for name, value in (("podNamespace", pod_namespace), ("podName", pod)):
            if not is_object_name(value):  # they become path segments upstream
                return k8s_status(
                    400,
                    f"{name} must be a Kubernetes object name (lowercase letters, digits, '-' "
                    f"and '.', at most 253), not {value[:100]!r}",
                    "BadRequest",
                )
        target = Target.of(request.match_info)
        refused = self._proxy.refusal(target)
        if refused is not None:
            return refused
        path = f"/api/v1/namespaces/{pod_namespace}/pods/{pod}/exec"
        return await self._serve(request, target, path, exec_query(request), Caller.RAW)

    async def handle_upgrade(
        self, request: web.Request, target: Target, path: str
    ) -> web.StreamResponse:
        """An upgrade on the proxy route: exec or attach of a pod (kubectl)."""
        if not POD_STREAM.fullmatch(path):
            return self._proxy.count(
                k8s_status(
                    501,
                    f"upgrades through the tunnel serve pods' exec and attach only, not {path}",
                    "NotImplemented",
                )
            )
        caller = _caller_of(request)
        if isinstance(caller, web.Response):
            return self._proxy.count(caller)
        return await self._serve(request, target, path, raw_query(request), caller)

    async def _serve(
        self, request: web.Request, target: Target, path: str, query: str, caller: Caller
    ) -> web.StreamResponse:
        slot = self._proxy.stream_slot(target)
        if isinstance(slot, web.Response):
            return self._proxy.count(slot)
        conn = slot
        if path.endswith("/attach") and not conn.v2:
            return self._proxy.count(
                k8s_status(
                    501,
                    "attach needs an agent that speaks workflowplane.tunnel.v2: OpenChoreo's "
                    "agent runs every upgrade as exec",
                    "NotImplemented",
                )
            )
        # The slot is held from here: the probe waits for the agent, and exec requests
        # checked against the caps meanwhile must count this one (else all pass at once).
        rid, buffer = self._proxy.open_stream(request, conn, target.key, whole_chunks=True)
        try:
            answer = await self._probe(conn, path, query)
            if answer is None and caller is Caller.SPDY:
                answer = k8s_status(
                    400,
                    "exec through the cluster gateway speaks WebSocket (v5.channel.k8s.io), "
                    "not SPDY: use kubectl 1.30 or later without "
                    "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false",
                    "BadRequest",
                )
            if answer is not None:
                return self._proxy.count(answer)
            return await self._stream(request, conn, rid, buffer, path, query, caller)
        finally:
            self._proxy.release_stream(conn, rid)

    async def _probe(self, conn: AgentConnection, path: str, query: str) -> web.Response | None:
        """The plane's answer to the exec as a plain POST; None when it would upgrade."""
        frame = TunnelRequest(
            request_id=str(uuid.uuid4()),
            method="POST",
            path=path,
            query=query,
            headers={"Accept": ["application/json"]},
        )
        reply = await self._proxy.ask(conn, frame)
        if isinstance(reply, web.Response):
            return reply
        if conn.bodies.pop(reply.request_id, None) is not None:  # chunked: not an exec answer
            await close_stream(conn, reply.request_id)
            return k8s_status(502, "the plane answered the exec probe in chunks", "BadGateway")
        if reply.status_code == 400 and UPGRADE_REQUIRED in (reply.body or b""):
            return None
        return self._proxy.to_response(reply)

    async def _stream(
        self,
        request: web.Request,
        conn: AgentConnection,
        rid: str,
        buffer: StreamBuffer,
        path: str,
        query: str,
        caller: Caller,
    ) -> web.StreamResponse:
        """The exec stream ``rid`` (opened by ``_serve``, which releases it)."""
        agent_closed = False
        try:
            await conn.send(
                StreamInit(
                    request_id=rid,
                    method="POST",
                    path=path,
                    query=query,
                    is_upgrade=True,
                    upgrade_proto=UPGRADE_PROTO,
                )
            )
            timeout = self._config.request_timeout_seconds
            first = await asyncio.wait_for(buffer.get(), timeout)
            refused = self._refusal(first)
            if refused is not None:
                agent_closed = True
                return self._proxy.count(refused)
            protocols = K8S_PROTOCOLS if caller is Caller.K8S else ()
            ws = web.WebSocketResponse(protocols=protocols, max_msg_size=CALLER_MESSAGE_BYTES)
            await ws.prepare(request)
            self._proxy.count(ws)
            agent_closed = await _relay(ws, conn, rid, buffer, first, caller)
            return ws
        except TimeoutError:
            return self._proxy.count(
                k8s_status(504, "the agent did not start the exec in time", "Timeout")
            )
        except ConnectionError as exc:
            return self._proxy.count(
                k8s_status(502, f"agent connection lost: {exc}", "ServiceUnavailable")
            )
        finally:
            self._proxy.release_stream(conn, rid)  # before telling the agent: no await first
            if not agent_closed:
                await close_stream(conn, rid)

    def _refusal(self, first: StreamItem) -> web.Response | None:
        """The agent's first item when it ends the exec before it began, as an answer."""
        if isinstance(first, StreamEnd):
            return k8s_status(502, first.problem or "the agent ended the exec", "BadGateway")
        if isinstance(first, TunnelResponse):
            return self._proxy.to_response(first)
        if isinstance(first, StreamChunk) and first.is_close is True:
            found = parse_status(first.data or b"") or {}
            message = close_reason(first.data) or "the agent ended the exec before it began"
            code = found.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else 502
            return k8s_status(status, str(found.get("message") or message), "BadGateway")
        return None


async def _relay(
    ws: web.WebSocketResponse,
    conn: AgentConnection,
    rid: str,
    buffer: StreamBuffer,
    first: StreamItem,
    caller: Caller,
) -> bool:
    """Both directions until either side ends; whether the agent ended it."""
    to_caller = asyncio.create_task(_to_caller(ws, buffer, first, caller))
    from_caller = asyncio.create_task(_from_caller(ws, conn, rid, caller))
    try:
        await asyncio.wait({to_caller, from_caller}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_caller, from_caller):
            task.cancel()
        results = await asyncio.gather(to_caller, from_caller, return_exceptions=True)
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.close()
    return results[0] is True


async def _to_caller(
    ws: web.WebSocketResponse, buffer: StreamBuffer, first: StreamItem, caller: Caller
) -> bool:
    """The agent's chunks to the caller; True when the agent closed the stream."""
    v5 = ws.ws_protocol == K8S_V5
    item = first
    while not isinstance(item, StreamEnd):
        if isinstance(item, StreamChunk):
            if item.is_close is True:
                await _finish(ws, caller, item.data)
                return True
            data = item.data or b""
            out = data if caller is Caller.RAW else tunnel_to_k8s(data, v5=v5)
            if out:
                await ws.send_bytes(out)
        item = await buffer.get()
    await _finish(ws, caller, (item.problem or "the stream ended").encode())
    return False


async def _finish(ws: web.WebSocketResponse, caller: Caller, data: bytes | None) -> None:
    """Tell the caller how it ended: a Status on the error channel (Kubernetes), or the
    close frame's reason (OpenChoreo's route, which closes with 1000 and no reason)."""
    if caller is Caller.K8S:
        await ws.send_bytes(K8S_ERROR_CHANNEL + close_status(data))
        await ws.close()
        return
    code = aiohttp.WSCloseCode.OK if not data else aiohttp.WSCloseCode.INTERNAL_ERROR
    await ws.close(code=code, message=close_reason(data).encode())


async def _from_caller(
    ws: web.WebSocketResponse, conn: AgentConnection, rid: str, caller: Caller
) -> None:
    """The caller's stdin and resizes to the agent, until the caller goes away."""
    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            raw = bytes(message.data)
        elif message.type == aiohttp.WSMsgType.TEXT:
            raw = str(message.data).encode()
        else:
            continue
        data = raw if caller is Caller.RAW else k8s_to_tunnel(raw)
        if caller is Caller.K8S and data and data[0] not in (STDIN, RESIZE):
            continue  # a caller writes only stdin, resizes and closes
        if data:
            await conn.send(StreamChunk(request_id=rid, data=data))
