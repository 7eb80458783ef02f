"""The agent's WebSocket to the gateway: dial out, serve frames, reconnect with jitter.

Stream contract (docs/streaming.md): for a StreamInit the agent first sends a TunnelResponse
with the same requestID carrying statusCode and headers and an empty body, then StreamChunks
with the body's bytes, then a StreamChunk with ``isClose``. A StreamChunk with ``isClose``
from the gateway cancels the stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import aiohttp
import msgspec

from workflowplane.agent.upstream import ResponseTooLarge, Upstream, UpstreamResult
from workflowplane.protocol import (
    TARGET_K8S,
    Frame,
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
    classify_agent_frame,
    encode,
)
from workflowplane.protocol.http import ALLOWED_METHODS

log = logging.getLogger(__name__)


def full_jitter_delay(attempt: int, initial: float, cap: float) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return random.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))


def error_response(request_id: str, status: int, message: str) -> TunnelResponse:
    return TunnelResponse(
        request_id=request_id,
        status_code=status,
        headers={},
        body=b"",
        error=TunnelError(code=status, message=message),
    )


class FrameServer:
    """Serves the frames of one connection; owns its in-flight requests and streams."""

    def __init__(
        self,
        upstream: Upstream,
        send: Callable[[bytes], Awaitable[None]],
        timeout: float,
        max_concurrent: int,
    ) -> None:
        self._upstream = upstream
        self._send = send
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def dispatch(self, raw: bytes | str) -> None:
        try:
            frame = classify_agent_frame(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("dropping malformed frame: %s", exc)
            return
        self._start(frame)

    def _start(self, frame: Frame) -> None:
        if isinstance(frame, StreamChunk):
            if frame.is_close is True and frame.request_id in self._tasks:
                self._tasks[frame.request_id].cancel()
            return
        if isinstance(frame, TunnelResponse):  # not meant for an agent
            log.warning("dropping unexpected response frame %s", frame.request_id)
            return
        work = self._stream(frame) if isinstance(frame, StreamInit) else self._serve(frame)
        task = asyncio.create_task(work)
        request_id = frame.request_id
        self._tasks[request_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(request_id, None)

        task.add_done_callback(forget)

    async def _serve(self, frame: TunnelRequest) -> None:
        async with self._slots:
            response = await self._answer(frame)
        await self._send(encode(response))

    async def _answer(self, frame: TunnelRequest) -> TunnelResponse:
        """Errors become responses: 404 unknown target, 500 bad request, 502 upstream."""
        rid = frame.request_id
        if frame.target != TARGET_K8S:
            return error_response(rid, 404, f"unknown target {frame.target!r}")
        if frame.method.upper() not in ALLOWED_METHODS or not frame.path.startswith("/"):
            return error_response(rid, 500, f"bad request: {frame.method} {frame.path!r}")
        try:
            result = await self._upstream.request(
                frame.method.upper(),
                frame.path,
                _str(frame.query),
                _headers(frame.headers),
                _bytes(frame.body),
                self._timeout,
            )
        except ResponseTooLarge as exc:
            return error_response(rid, 502, str(exc))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return error_response(rid, 502, f"upstream request failed: {exc!r}")
        return TunnelResponse(
            request_id=rid, status_code=result.status, headers=result.headers, body=result.body
        )

    async def _stream(self, frame: StreamInit) -> None:
        rid = frame.request_id
        if frame.target != TARGET_K8S:
            await self._send(encode(error_response(rid, 404, f"unknown target {frame.target!r}")))
            await self._send(encode(StreamChunk(request_id=rid, is_close=True)))
            return
        try:
            async for part in self._upstream.stream(
                frame.method.upper(), frame.path, _str(frame.query), _headers(frame.headers)
            ):
                if isinstance(part, UpstreamResult):
                    await self._send(
                        encode(
                            TunnelResponse(
                                request_id=rid, status_code=part.status, headers=part.headers
                            )
                        )
                    )
                else:
                    await self._send(encode(StreamChunk(request_id=rid, data=part)))
        except asyncio.CancelledError:
            return  # the gateway closed it; nothing more to say
        except (aiohttp.ClientError, OSError) as exc:
            await self._send(encode(error_response(rid, 502, f"upstream stream failed: {exc!r}")))
        await self._send(encode(StreamChunk(request_id=rid, is_close=True)))

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else b""


def _headers(value: object) -> dict[str, list[str]] | None:
    return value if isinstance(value, dict) else None


class AgentTunnel:
    """Keeps one connection to the gateway up for as long as ``run`` runs."""

    def __init__(
        self,
        url: str,
        plane_type: str,
        plane_id: str,
        ssl_factory: Callable[[], Awaitable[ssl.SSLContext]],
        upstream: Upstream,
        *,
        initial_backoff: float,
        max_backoff: float,
        stable_after: float,
        dead_after: float,
        max_frame: int,
        timeout: float,
        max_concurrent: int,
    ) -> None:
        query = urlencode({"planeType": plane_type, "planeID": plane_id})
        self.url = f"{url.rstrip('/')}/ws?{query}" if "/ws" not in url else f"{url}?{query}"
        self._ssl_factory = ssl_factory
        self._upstream = upstream
        self._initial, self._cap, self._stable = initial_backoff, max_backoff, stable_after
        self._dead_after, self._max_frame = dead_after, max_frame
        self._timeout, self._max_concurrent = timeout, max_concurrent
        self.connected = asyncio.Event()
        self.reconnect_requested = asyncio.Event()

    async def run(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                try:
                    await self._connect_once(session)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("gateway connection failed: %s", exc)
                finally:
                    self.connected.clear()
                attempt = 0 if time.monotonic() - started > self._stable else attempt + 1
                delay = full_jitter_delay(attempt, self._initial, self._cap)
                log.info("reconnecting in %.1fs", delay)
                await asyncio.sleep(delay)

    async def _connect_once(self, session: aiohttp.ClientSession) -> None:
        context = await self._ssl_factory()  # fresh: renewed certificates take effect
        async with session.ws_connect(
            self.url,
            ssl=context,
            max_msg_size=self._max_frame,
            autoping=False,
            heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        ) as ws:
            log.info("connected to %s", self.url)
            self.reconnect_requested.clear()
            self.connected.set()
            await self._serve(ws)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        lock = asyncio.Lock()

        async def send(data: bytes) -> None:
            if len(data) > self._max_frame:
                log.warning(
                    "dropping outgoing frame of %d bytes (limit %d)", len(data), self._max_frame
                )
                return
            async with lock:
                await ws.send_str(data.decode())

        server = FrameServer(self._upstream, send, self._timeout, self._max_concurrent)
        watcher = asyncio.create_task(self._close_on_request(ws))
        try:
            while True:
                message = await ws.receive(timeout=self._dead_after)
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    server.dispatch(message.data)
                elif message.type == aiohttp.WSMsgType.PING:  # pings count as traffic
                    await ws.pong(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    log.warning("websocket error: %s (frame too large?)", ws.exception())
                    return
                elif message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    log.info("gateway closed the connection (%s)", message.extra)
                    return
        except TimeoutError:
            log.warning("no traffic from the gateway for %.0fs: reconnecting", self._dead_after)
        finally:
            watcher.cancel()
            await server.close()

    async def _close_on_request(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self.reconnect_requested.wait()
        await ws.close()
