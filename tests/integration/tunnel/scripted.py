"""A hand-driven agent for gateway tests: a real mTLS WebSocket to a running gateway, with a
certificate the test issues (consent URIs, short validity), sending whatever frames the test
writes (oversized, malformed, invalid) and answering requests as the test says."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from lightkube.resources.core_v1 import Secret

from tests.integration.harness import RunningGateway, apply, eventually, unique, workflow_plane_cr
from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.protocol import TUNNEL_V2
from workflowplane.protocol.gateway_client import GATEWAY_NAMESPACE, INTERNAL_CLIENT_SECRET
from workflowplane.testenv import ApiServer

WP = "workflowplane"
Handler = Callable[["ScriptedAgent", dict[str, Any]], Awaitable[None]]


def client_context(gw: RunningGateway, leaf: KeyPair, tmp: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(gw.server_ca_file))
    name = uuid.uuid4().hex[:8]
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    context.load_cert_chain(cert, key)
    return context


async def internal_context(gw: RunningGateway, tmp: Path) -> ssl.SSLContext:
    """What the controller dials the internal listener with (the internal client Secret)."""
    secret = await gw.kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=GATEWAY_NAMESPACE)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    context = ssl.create_default_context(cadata=data["ca.crt"].decode())
    name = uuid.uuid4().hex[:8]
    cert, key = tmp / f"internal-{name}.crt", tmp / f"internal-{name}.key"
    cert.write_bytes(data["tls.crt"])
    key.write_bytes(data["tls.key"])
    context.load_cert_chain(cert, key)
    return context


def answer(request_id: str, status: int = 200, body: bytes = b"{}") -> dict[str, Any]:
    """A tunnel response frame as the Go agent writes it."""
    return {
        "requestID": request_id,
        "statusCode": status,
        "headers": {"Content-Type": ["application/json"]},
        "body": base64.b64encode(body).decode(),
    }


@dataclass
class ScriptedAgent:
    """Receives the gateway's frames into ``received`` and hands each request or stream init
    to ``handler`` (a task each); ``send`` writes anything back."""

    ws: aiohttp.ClientWebSocketResponse
    handler: Handler | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    closed_streams: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        if isinstance(frame, bytes):
            frame = frame.decode()
        await self.ws.send_str(frame)

    async def serve(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            self.received.append(frame)
            if frame.get("isClose"):
                self.closed_streams.add(frame["requestID"])
            elif self.handler is not None:
                task = asyncio.create_task(self.handler(self, frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def scripted_agent(
    gw: RunningGateway,
    plane_id: str,
    leaf: KeyPair,
    tmp: Path,
    handler: Handler | None = None,
    *,
    protocols: tuple[str, ...] = (TUNNEL_V2,),
) -> AsyncIterator[ScriptedAgent]:
    """Connected for the block; the gateway's frames are served in the background. It offers
    ``workflowplane.tunnel.v2`` as our agent does (``protocols=()``: a v1 agent, as
    OpenChoreo's)."""
    url = f"{gw.public_url}/ws?planeType={WP}&planeID={plane_id}"
    context = client_context(gw, leaf, tmp)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, ssl=context, max_msg_size=0, protocols=protocols) as ws,
    ):
        agent = ScriptedAgent(ws, handler)
        serving = asyncio.create_task(agent.serve())
        try:
            yield agent
        finally:
            serving.cancel()
            for task in [serving, *agent._tasks]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def scripted_plane(
    control_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    name: str = "wp",
    *,
    plane_id: str | None = None,
    ca: KeyPair | None = None,
) -> tuple[str, KeyPair]:
    """A WorkflowPlane trusting a new CA inline, in the gateway's trust before returning."""
    plane_id = plane_id or unique("sp")
    ca = ca or generate_ca("scripted-agent-ca")
    apply(control_plane, workflow_plane_cr(name, namespace, plane_id, ca_pem=ca.cert_pem.decode()))
    await eventually(lambda: ca.cert_pem.strip() in gw.gateway.planes.all_cas())
    await eventually(
        lambda: f"{namespace}/{name}" in {e.key for e in gw.gateway.planes.for_plane(plane_id)}
    )
    return plane_id, ca


def leaf_of(ca: KeyPair, **kwargs: Any) -> KeyPair:
    return issue_certificate(ca, "scripted-agent", **kwargs)
