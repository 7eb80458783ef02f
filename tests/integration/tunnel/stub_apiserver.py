"""A stand-in for a plane's API server where exec runs: the test API servers have no kubelet,
so a pod's exec can only fail there. This one speaks the API server's side of exec over
WebSocket (``v5.channel.k8s.io``/``v4``) for a few commands, and answers the plain POST the
gateway probes with as the real one does ("Upgrade request required", or 404 for pod
``nope``). Our agent is pointed at it with a kubeconfig; OpenChoreo's agent speaks SPDY
upstream, which this stub does not.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import WSMsgType, web

from workflowplane.protocol.exec import K8S_PROTOCOLS

EXEC_PATH = "/api/v1/namespaces/{namespace}/pods/{pod}/{kind:exec|attach}"


def _status(code: int, message: str, reason: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return web.json_response({**body, "reason": reason, "code": code}, status=code)


def exit_status(code: int) -> bytes:
    """What the API server writes on the error channel for a non-zero exit."""
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    ).encode()


SUCCESS = b'{"metadata":{},"status":"Success"}'


@dataclass
class StubApiServer:
    """Records what each session received: stdin bytes, resizes, whether it ended."""

    port: int = 0
    sizes: list[dict[str, int]] = field(default_factory=list)
    stdin: bytearray = field(default_factory=bytearray)
    sessions_ended: int = 0
    queries: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["pod"] == "nope":
            return _status(404, 'pods "nope" not found', "NotFound")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _status(400, "Upgrade request required", "BadRequest")
        ws = web.WebSocketResponse(protocols=K8S_PROTOCOLS)
        await ws.prepare(request)
        self.queries.append(request.query_string)
        try:
            await self._run(ws, request.query.getall("command", []))
        finally:
            self.sessions_ended += 1
        return ws

    async def _run(self, ws: web.WebSocketResponse, command: list[str]) -> None:
        """``echo ARGS``: print and succeed; ``exit N``: fail with N; ``cat``: echo stdin
        until it closes; anything else: wait until the caller goes away."""
        if command[:1] == ["echo"]:
            await ws.send_bytes(b"\x01" + " ".join(command[1:]).encode() + b"\n")
            await ws.send_bytes(b"\x02to stderr\n")
            await self._end(ws, SUCCESS)
            return
        if command[:1] == ["exit"]:
            await self._end(ws, exit_status(int(command[1])))
            return
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                continue
            data = bytes(message.data)
            if data[:1] == b"\x00":
                self.stdin += data[1:]
                if command == ["cat"]:
                    await ws.send_bytes(b"\x01" + data[1:])
            elif data[:1] == b"\x04":
                self.sizes.append(json.loads(data[1:]))
            elif data == b"\xff\x00" and command == ["cat"]:
                await self._end(ws, SUCCESS)
                return

    @staticmethod
    async def _end(ws: web.WebSocketResponse, status: bytes) -> None:
        await ws.send_bytes(b"\x03" + status)
        await ws.close()

    def kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig pointing at this stub (plain HTTP, a token it ignores)."""
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "stub", "user": {"token": "stub-token"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
            "current-context": "stub",
        }
        path = directory / "stub.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path


@contextlib.asynccontextmanager
async def stub_apiserver() -> AsyncIterator[StubApiServer]:
    stub = StubApiServer()
    app = web.Application()
    app.router.add_route("*", EXEC_PATH, stub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.port = runner.addresses[0][1]
    try:
        yield stub
    finally:
        await runner.cleanup()
