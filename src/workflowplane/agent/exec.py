"""The agent's side of exec and attach: OpenChoreo's upgrade stream, run against the plane's
API server over Kubernetes' WebSocket protocol (``v5.channel.k8s.io``, or ``v4``).

OpenChoreo's gateway (and ours) sends a stream init with ``isUpgrade: true`` and the pod's
``…/exec`` (or ``…/attach``) path and query; its stdin and resizes follow as chunks. The agent
opens the same request upstream as a WebSocket with its own credentials, answers ``[1]``
("started", as OpenChoreo's agent does), then relays: stdout/stderr as chunks with their
stream byte (``streamId`` 1/2), the gateway's stdin and resizes to the API server
(``protocol.exec`` translates). It ends with ``isClose``: no data when the command succeeded,
else the API server's ``Status`` (exit code included) or the reason the exec could not run.
The gateway's ``isClose`` cancels the session (the tunnel cancels its task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from workflowplane.agent.upstream import Upstream
from workflowplane.kits.text import shortened
from workflowplane.protocol import TARGET_K8S, Frame, StreamChunk, StreamInit, encode
from workflowplane.protocol.exec import (
    K8S_ERROR,
    K8S_PROTOCOLS,
    K8S_V5,
    POD_STREAM,
    STARTED,
    STDERR,
    STDOUT,
    k8s_to_tunnel,
    parse_status,
    tunnel_to_k8s,
)

log = logging.getLogger(__name__)
Send = Callable[[bytes], Awaitable[None]]
Encoder = Callable[[Frame], bytes]
# Stdin the API server has not taken yet, per session: past it the session ends (a command
# that reads no input must not make the agent hold whatever the gateway sends it).
MAX_STDIN_BYTES = 4 * 1024 * 1024
STDIN_ITEM_BYTES = 64  # what each piece costs beyond its data (object, queue slot)


class _Stdin:
    """A session's stdin on its way upstream, counted; ``overflow`` once over the bound."""

    def __init__(self, task: asyncio.Task[None] | None) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.held = 0
        self.task = task
        self.overflow: bytes | None = None

    def put(self, data: bytes) -> None:
        if self.overflow is not None:
            return
        cost = len(data) + STDIN_ITEM_BYTES  # tiny pieces are counted at what they hold
        if self.held + cost > MAX_STDIN_BYTES:
            self.overflow = (
                f"stdin not taken by the API server grew past {MAX_STDIN_BYTES} bytes "
                "(the command is not reading its input): session ended"
            ).encode()
            self.queue = asyncio.Queue()  # the memory goes now
            if self.task is not None:
                self.task.cancel()
            return
        self.held += cost
        self.queue.put_nowait(data)

    async def get(self) -> bytes:
        data = await self.queue.get()
        self.held -= len(data) + STDIN_ITEM_BYTES
        return data


class ExecSessions:
    """The exec/attach sessions of one gateway connection, by requestID."""

    def __init__(
        self,
        upstream: Upstream,
        send: Send,
        encoder: Encoder = encode,
        *,
        private_namespace: str | None = None,
    ) -> None:
        self._upstream = upstream
        self._send = send
        self._encode = encoder  # the connection's: v1/v2 JSON or v3 binary
        self._stdin: dict[str, _Stdin] = {}
        self._private_namespace = private_namespace  # the agent's own: no exec into it

    def feed(self, chunk: StreamChunk) -> bool:
        """Stdin or a resize for a running session; whether it was one (an ``isClose`` is
        not: the tunnel cancels the session's task for it)."""
        stdin = self._stdin.get(chunk.request_id)
        if stdin is None or chunk.is_close is True:
            return False
        if chunk.data:
            stdin.put(chunk.data)
        return True

    def begin(self, init: StreamInit) -> Coroutine[Any, Any, None]:
        """The session of ``init``, its stdin taken from now on: the gateway may send stdin
        in the same read as the init, before the session's task first runs."""
        if _refusal(init, self._private_namespace) is None:
            self._stdin[init.request_id] = _Stdin(None)
        return self.run(init)

    def forget(self, request_id: str) -> None:
        """A session's task ended, perhaps before it ever ran: its stdin goes."""
        self._stdin.pop(request_id, None)

    async def run(self, init: StreamInit) -> None:
        """Serve one stream init with ``isUpgrade: true`` until either side ends it."""
        rid = init.request_id
        reason = _refusal(init, self._private_namespace)
        if reason is None:
            stdin = self._stdin.get(rid) or _Stdin(None)
            stdin.task = asyncio.current_task()
            self._stdin[rid] = stdin
            try:  # stdin may have overflowed before the task ran
                reason = stdin.overflow or await self._session(init)
            except asyncio.CancelledError:
                if stdin.overflow is None:
                    raise  # the gateway's isClose, or the connection's end
                _uncancel()
                reason = stdin.overflow
            finally:
                self._stdin.pop(rid, None)
        if reason:
            shown = reason[:300].decode(errors="replace")
            log.info("exec %s %.256s ended: %s", rid, init.path, shown)
        await self._send(
            self._encode(StreamChunk(request_id=rid, data=reason or None, is_close=True))
        )

    async def _session(self, init: StreamInit) -> bytes | None:
        """The upstream WebSocket's life; what to close with (None: success)."""
        query = init.query if isinstance(init.query, str) else ""
        try:
            async with self._upstream.websocket(init.path, query, K8S_PROTOCOLS) as ws:
                await self._send(
                    self._encode(
                        StreamChunk(request_id=init.request_id, data=STARTED, stream_id=STDOUT)
                    )
                )
                return await self._relay(ws, init.request_id)
        except aiohttp.WSServerHandshakeError as exc:
            return f"the API server refused the upgrade: {exc.status} {exc.message}".encode()
        except (aiohttp.ClientError, OSError) as exc:
            return f"upstream exec failed: {exc!r}".encode()

    async def _relay(self, ws: aiohttp.ClientWebSocketResponse[bool], rid: str) -> bytes | None:
        """Output to the gateway, stdin to the API server; the final ``Status`` when it
        is not a success."""
        writer = asyncio.create_task(self._write_stdin(ws, self._stdin[rid]))
        outcome: bytes | None = None
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                data = bytes(message.data)
                if data[0] == K8S_ERROR:
                    outcome = _failure(data[1:])
                    continue
                out = k8s_to_tunnel(data)
                if out and out[0] in (STDOUT, STDERR):
                    await self._send(
                        self._encode(StreamChunk(request_id=rid, data=out, stream_id=out[0]))
                    )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return outcome

    @staticmethod
    async def _write_stdin(ws: aiohttp.ClientWebSocketResponse[bool], stdin: _Stdin) -> None:
        v5 = ws.protocol == K8S_V5
        while True:
            out = tunnel_to_k8s(await stdin.get(), v5=v5)
            if out:
                await ws.send_bytes(out)


def _uncancel() -> None:
    """The session's own cancel (stdin overflow) is handled: the task goes on to report it."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _refusal(init: StreamInit, private_namespace: str | None) -> bytes | None:
    """Why this upgrade is not carried, or None. The agent's own namespace is refused as for
    any request (its pod holds a token that reads its CA's key)."""
    if init.target != TARGET_K8S:
        return f"unknown target: {shortened(str(init.target), 64)}".encode()
    if not POD_STREAM.fullmatch(init.path):
        shown = shortened(init.path, 256)
        return f"upgrades are served for pods' exec and attach only, not {shown}".encode()
    if init.path.split("/")[4] == private_namespace:  # the match spells it plainly
        return (
            f"namespace {private_namespace} (the agent's own: its identity and its CA's key) "
            "is not reachable through the tunnel"
        ).encode()
    return None


def _failure(status: bytes) -> bytes | None:
    """The error channel's ``Status``: None for a success, else the Status as it is (the
    gateway passes it on: kubectl reads the exit code from it)."""
    found = parse_status(status)
    if found is not None and found.get("status") == "Success":
        return None
    return status or None
