"""The agent's WebSocket to the gateway: dial out, serve frames, reconnect with jitter.

The agent offers the subprotocol ``TUNNEL_V2``; what the gateway selects decides how answers
travel (docs/streaming.md):

- v1 (OpenChoreo's gateway, which selects nothing): each answer is one TunnelResponse frame of at
  most ``max_frame`` bytes. A body that cannot fit is refused at once with a 502 whose body is a
  Kubernetes Status saying so (OpenChoreo's gateway passes bodies on but drops ``error``). Large
  bodies (``SMALL_ANSWER`` and up) held whole count against the process's ``AnswerBudget``
  (``whole_answers_bytes``) until their frame is sent; one that does not fit is a 503 at once.
- v2: an answer larger than one chunk is a TunnelResponse with ``chunked: true`` (status and
  headers), then StreamChunks of at most ``chunk_bytes``, then a chunk with ``isClose``. The body
  is never held whole.

A StreamInit with ``isUpgrade: false`` (watch/follow; only our gateway sends it) answers with a
TunnelResponse (status, headers), StreamChunks as the bytes come, then ``isClose``; the
gateway's ``isClose`` cancels it. Upgrades (exec) are not served yet: they are closed at once with
the reason as the close chunk's data, as OpenChoreo's agent reports a failed exec.

Streams (a StreamInit, or a request with ``watch``/``follow``) have a cap and an upstream pool of
their own, apart from ordinary requests': open streams can never starve the requests the
controller needs, and a stream over the cap is answered at once with a 429, never queued.
Ordinary requests past their slots wait in a bounded queue (``_Queue``); past it, 429 too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import aiohttp
import msgspec
from aiohttp.connector import SocketFactoryType

from workflowplane.agent.exec import Encoder, ExecSessions
from workflowplane.agent.metrics import AgentMetrics
from workflowplane.agent.quick import QuickRequest
from workflowplane.agent.upstream import (
    AnswerBudget,
    AnswersOverBudget,
    Call,
    ResponseTooLarge,
    Upstream,
    UpstreamResult,
    response_headers,
    upstream_failure,
)
from workflowplane.agent.ws_writer import mask_in_place
from workflowplane.kits.corking import cork
from workflowplane.kits.dialing import Connector
from workflowplane.kits.http1 import (
    ConnectTimeout,
    Http1Response,
    InvalidRequest,
    Piece,
    hold_piece,
)
from workflowplane.kits.ratelog import LogThrottle
from workflowplane.kits.slots import Slots
from workflowplane.kits.stall import guard_writes
from workflowplane.kits.text import shortened
from workflowplane.kits.ws_tap import ProtocolFlow, TappedWebSocket
from workflowplane.protocol import (
    TARGET_K8S,
    TUNNEL_V2,
    TUNNEL_V3,
    BinaryFrameError,
    Frame,
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
    classify_agent_frame,
    decode_binary,
    encode,
    encode_binary,
)
from workflowplane.protocol.binary import MAX_ID_BYTES, encode_chunk
from workflowplane.protocol.http import ALLOWED_METHODS, resource_segments
from workflowplane.protocol.messages import MalformedRequest, MetadataTooLarge, opens_stream

log = logging.getLogger(__name__)
CHUNK_BYTES = 256 * 1024  # 1 MiB chunks cost more CPU per byte (cache misses) and latency
# Offered in this order; the gateway takes the first it knows (OpenChoreo's: none, so v1).
OFFERED = (TUNNEL_V3, TUNNEL_V2)
# Room in a frame for everything but the base64 body: ids, status, headers, JSON syntax.
FRAME_OVERHEAD = 64 * 1024
# Kinds of malformed frame logged apart on one connection (each at most once per interval).
MAX_PROBLEM_KINDS = 32
# A StreamChunk message with data from the pieces read: (requestID, pieces) -> message.
ChunkEncoder = Callable[[str, Sequence[Piece]], bytes | bytearray]


def dial_url(url: str, plane_type: str, plane_id: str) -> str:
    """The gateway URL with ``planeID`` and ``planeType`` set in its query, the rest of the
    query kept (as OpenChoreo's agent merges them: Go's ``query.Encode()``, sorted), and
    ``/ws`` as its path when it names none."""
    parts = urlsplit(url)
    path = parts.path if "/ws" in parts.path else parts.path.rstrip("/") + "/ws"
    kept = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in kept if k not in ("planeType", "planeID")]
    query += [("planeType", plane_type), ("planeID", plane_id)]
    return urlunsplit(parts._replace(path=path, query=urlencode(sorted(query))))


def full_jitter_delay(attempt: int, initial: float, cap: float) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return random.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))


def body_limit(max_frame: int) -> int:
    """The largest body whose base64 still fits a frame of ``max_frame`` bytes."""
    return max(0, (max_frame - FRAME_OVERHEAD) // 4 * 3)


def whole_answers_bytes(max_frame: int) -> int:
    """The body bytes of whole (v1) answers an agent process holds at once: one frame's
    worth, 64 MiB at the default frame limit. Why that much and no more: a whole answer costs
    about four times its body at its peak (the body, its base64 inside the JSON frame, the
    WebSocket writer's masked copy), so whole answers peak near 256 MiB, which leaves room
    within the chart's 384 MiB limit for the agent itself (about 45 MiB idle), the answers
    too small to count (``SMALL_ANSWER``, one per request slot at most) and v2/v3 chunks. Not
    less: it is above ``body_limit``, so any answer that fits a frame is served when alone."""
    return max_frame


_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


FAILURE_LOG_SECONDS = 60.0
MAX_FAILURE_KINDS = 16


class ConnectRefused(Exception):
    """The agent must not connect now (its message says why); it tries again after a backoff."""


def error_response(
    request_id: str, status: int, message: str, *, logged: bool = True
) -> TunnelResponse:
    """An error as a response: ``error`` for gateways that read it, a Kubernetes Status body
    for those that pass bodies on (OpenChoreo's) and for kubectl, which prints its message.
    Every request the agent fails comes here, so this logs the one WARNING line about it
    (unless ``logged`` is False: a refusal the caller logs throttled, as a gateway can send
    any number of them)."""
    if logged:
        log.warning(
            "request %s failed with %d: %s",
            request_id,
            status,
            message,
            extra={"request_id": request_id, "code": status},
        )
    status_body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"cluster agent: {message}",
        "reason": _REASONS.get(status, "InternalError"),
        "code": status,
    }
    return TunnelResponse(
        request_id=request_id,
        status_code=status,
        headers={"Content-Type": ["application/json"]},
        body=json.dumps(status_body).encode(),
        error=TunnelError(code=status, message=message),
    )


def _carried(frame: TunnelRequest) -> int:
    """The bytes a request holds while it waits: every field a gateway chose (a requestID is
    bounded at decode, the rest only by the frame limit)."""
    headers = frame.headers if isinstance(frame.headers, dict) else {}
    size = len(_bytes(frame.body)) + len(frame.path) + len(_str(frame.query))
    size += len(frame.request_id) + len(frame.method) + len(frame.target)
    size += len(_str(frame.gateway_request_id))
    for name, values in headers.items():
        size += len(name) + sum(len(value) for value in values if isinstance(value, str))
    return size


def _refusal(
    frame: TunnelRequest | StreamInit, private_namespace: str | None
) -> TunnelResponse | None:
    """404 unknown target, 500 bad request, 400 a path with a dot segment, 403 the agent's
    own namespace; None when the request may go upstream."""
    rid, path = frame.request_id, frame.path
    if frame.target != TARGET_K8S:
        return error_response(rid, 404, f"unknown target: {shortened(str(frame.target), 64)}")
    if frame.method.upper() not in ALLOWED_METHODS or not path.startswith("/"):
        shown = f"{shortened(frame.method, 16)} {shortened(path, 256)!r}"
        return error_response(rid, 500, f"bad request: {shown}")
    if _dot_segment(path):
        return error_response(
            rid, 400, f"bad request: a dot segment in path {shortened(path, 256)!r}"
        )
    if private_namespace is not None and _private(path, private_namespace):
        message = (
            f"namespace {private_namespace} (the agent's own: its identity and its CA's key) "
            "and cluster-wide Secret lists are not reachable through the tunnel"
        )
        return error_response(rid, 403, message)
    return None


def _private(path: str, namespace: str) -> bool:
    """A path into the agent's own namespace (any resource, any API group), or a cluster-wide
    collection of Secrets, however spelled (percent-encoded, doubled slashes, the old
    ``/watch/`` form). The agent may read and replace its CA's Secret there, and create
    workloads that could mount it; nothing a caller of the gateway does needs that
    namespace (runs work in ``workflows-<namespace>``)."""
    if namespace not in path and "secrets" not in path and "%" not in path:
        return False
    parsed = resource_segments(path)
    if parsed is None:
        return False
    prefix, rest = parsed
    if rest[:2] == ["namespaces", namespace]:
        return True
    return prefix[:1] == ["api"] and rest[:1] == ["secrets"]


def _overlong_id(request_id: str) -> bool:
    """Longer than a v3 frame's requestID may be: every answer echoes it, and the binary
    encoder refuses it (on JSON connections any length is echoed: OpenChoreo's gateway uses
    a caller's ``X-Request-ID`` as an exec's requestID)."""
    return len(request_id) > MAX_ID_BYTES // 4 and len(request_id.encode()) > MAX_ID_BYTES


def _dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment, percent-encoded or not: no Kubernetes
    name is one, and a proxy in front of the API server that resolves them would take the
    request, with the agent's credentials, out of the API server's prefix."""
    if "." not in path and "%" not in path:
        return False
    return any(segment in (".", "..") for segment in unquote(path).split("/"))


@dataclass
class _Head:
    """Whether a chunked answer's head went out (after it, an error can only end the stream)."""

    sent: bool = False


class _Heard:
    """When the gateway last sent anything (the loop's clock)."""

    __slots__ = ("at", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.at = loop.time()

    def now(self) -> None:
        self.at = self.loop.time()


# Requests waiting for an ordinary slot: at most this many per slot, and at most the frame
# limit's bytes of bodies (one request of any size fits an empty queue). Past either, a 429 at
# once: a gateway sending faster than the plane answers must not grow the agent without bound.
QUEUED_PER_SLOT = 16
QUEUED_ITEM_OVERHEAD = 256  # a request's frame, task and bookkeeping, beyond what it carries
# Refusals (429, 409, 400) waiting to be sent, in bytes of their encoded answers: past this,
# a request is dropped unanswered. A gateway that sends and never reads must not grow the
# agent by what it sends; one that reads gets every refusal of a burst (a few hundred bytes
# each).
REFUSALS_QUEUED_BYTES = 1024 * 1024


class _Queue:
    """The requests waiting for an ordinary slot, counted from the moment they arrive."""

    __slots__ = ("bytes", "count", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self.count = self.bytes = 0

    def enter(self, frame: TunnelRequest) -> Callable[[], None] | None:
        """A function that takes ``frame`` out of the queue (once, however often it is
        called), or None when the queue is full."""
        size = QUEUED_ITEM_OVERHEAD + _carried(frame)
        if self.count and (self.count >= self.max_count or self.bytes + size > self.max_bytes):
            return None
        self.count += 1
        self.bytes += size
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.count -= 1
                self.bytes -= size

        return leave


class FrameServer:
    """Serves the frames of one connection; owns its in-flight requests and streams.
    ``answers``: the process's budget of whole (v1) answers, shared by its connections (a
    budget of its own, ``whole_answers_bytes``, when not given)."""

    def __init__(
        self,
        upstream: Upstream,
        send: Callable[[bytes | bytearray], Awaitable[None]],
        timeout: float,
        max_concurrent: int,
        *,
        max_frame: int = 64 * 1024 * 1024,
        chunked: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
        max_streams: int = 64,
        encoder: Encoder = encode,
        chunk_encoder: ChunkEncoder | None = None,
        private_namespace: str | None = None,
        answers: AnswerBudget | None = None,
        send_now: Callable[[bytes | bytearray], bool] | None = None,
    ) -> None:
        self._upstream = upstream
        # Writes a frame at once, or says it cannot (v3 only): quick answers use it.
        self._send_now = send_now
        self._quick: dict[str, QuickRequest] = {}
        self._no_quick = asyncio.Event()
        self._no_quick.set()
        self._answers = (
            answers if answers is not None else AnswerBudget(whole_answers_bytes(max_frame))
        )
        self._private_namespace = private_namespace  # whose Secrets callers may not reach
        self._send = send
        self._encode = encoder  # the connection's: v1/v2 JSON or v3 binary
        self._encode_chunk = chunk_encoder or self._chunk_via_encoder
        self._timeout = timeout
        self._slots, self._slots_total = Slots(max_concurrent), max_concurrent
        self._queue = _Queue(QUEUED_PER_SLOT * max_concurrent, max_frame)
        self._max_streams, self._open_streams = max_streams, 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._max_frame, self._chunked, self._chunk = max_frame, chunked, chunk_bytes
        self.metrics = AgentMetrics()  # the tunnel puts its own here
        self._exec = ExecSessions(upstream, send, encoder, private_namespace=private_namespace)
        self._loop = asyncio.get_running_loop()
        self._closed = False
        # A gateway repeating a bad frame must not write a line per frame (most of the CPU
        # of a read of empty frames went to logging them).
        self._problems = LogThrottle(log)
        # refusals' answers, sent in order by one task (none while the queue is empty)
        self._refusals: collections.deque[tuple[tuple[bytes | bytearray, ...], int]] = (
            collections.deque()
        )
        self._refusal_bytes = 0
        self._refusal_sender: asyncio.Task[None] | None = None

    def _chunk_via_encoder(self, rid: str, parts: Sequence[Piece]) -> bytes:
        return self._encode(StreamChunk(request_id=rid, data=_joined(parts)))

    @property
    def chunk_bytes(self) -> int:
        return self._chunk

    @property
    def open_streams(self) -> int:
        return self._open_streams

    @property
    def requests_in_flight(self) -> int:
        """Requests being served, streams (watch/follow, exec) not counted."""
        return len(self._tasks) - self._open_streams + len(self._quick)

    def dispatch(self, raw: bytes | str, *, binary: bool = False) -> None:
        """Start serving one message from the gateway (``binary``: a v3 message)."""
        if self._closed:
            log.debug("dropping a frame that came after the connection's server closed")
            return
        if not binary and self._encode is encode_binary:
            # v3 answers are binary: a JSON request's answer could not name a requestID
            # the binary format cannot hold, so it is not served at all.
            self._drop_malformed("a text message on a binary (workflowplane.tunnel.v3) connection")
            return
        try:
            frame = (
                decode_binary(raw)
                if binary and isinstance(raw, bytes)
                else classify_agent_frame(raw)
            )
        except MetadataTooLarge as exc:  # not decoded: that request is refused, not dropped
            if self._unechoable(exc.request_id):
                return
            self._refuse(exc.request_id, 400, f"bad request: {exc}", "metadata too large")
            return
        except MalformedRequest as exc:  # its sender is told, not left to time out
            if not self._unechoable(exc.request_id) and exc.request_id not in self._tasks:
                message, kind = f"bad request: {exc}", "malformed request"
                self._refuse(exc.request_id, 500, message, kind, stream=exc.stream)
            return
        except (msgspec.DecodeError, msgspec.ValidationError, BinaryFrameError) as exc:
            self._drop_malformed(str(exc))
            return
        except RecursionError:  # msgspec's depth limit: one frame, not the connection
            self._drop_malformed("nested too deeply")
            return
        if self._unechoable(frame.request_id):
            return
        self._start(frame)

    def _unechoable(self, request_id: str) -> bool:
        """A requestID this connection's answers cannot carry (v3's bound): the frame is
        dropped, said once per interval."""
        if self._encode is not encode_binary or not _overlong_id(request_id):
            return False
        self._drop_malformed(f"a requestID over {MAX_ID_BYTES} bytes (v3 cannot echo it)")
        return True

    def _drop_malformed(self, problem: str) -> None:
        """One line per kind of problem per interval; past a few kinds, one for all (a
        gateway varying its garbage must neither flood the log nor grow the table)."""
        key = problem if len(self._problems) < MAX_PROBLEM_KINDS else "malformed"
        self._problems.log(key, logging.WARNING, "dropping malformed frame: %s", problem)

    def _start(self, frame: Frame) -> None:
        if isinstance(frame, StreamChunk):
            if self._exec.feed(frame):  # stdin or a resize of an exec/attach
                return
            if frame.is_close is True and frame.request_id in self._tasks:
                self._tasks[frame.request_id].cancel()
            elif frame.is_close is True and frame.request_id in self._quick:
                self._cancel_quick(self._quick[frame.request_id])
            return
        if isinstance(frame, TunnelResponse):  # not meant for an agent
            self._problems.log(
                "response",
                logging.WARNING,
                "dropping unexpected response frames (%s, …)",
                shortened(frame.request_id, 64),
            )
            return
        request_id = frame.request_id
        is_init = isinstance(frame, StreamInit)
        if request_id in self._tasks or request_id in self._quick:
            message = f"requestID {shortened(request_id, 64)!r} is already in flight on this "
            message += "connection"
            self._refuse(request_id, 409, message, "a duplicate requestID", stream=is_init)
            return
        streams = opens_stream(frame)
        dequeue = None
        if streams and self._open_streams >= self._max_streams:
            self._refuse(request_id, 429, self._over_cap, "too many streams", stream=is_init)
            return
        if not streams and isinstance(frame, TunnelRequest) and self._start_quick(frame):
            return
        if not streams and isinstance(frame, TunnelRequest):  # counted at once, as streams are
            dequeue = self._queue.enter(frame)
            if dequeue is None:
                self._refuse(request_id, 429, self._over_queue, "queue full")
                return
            work = self._serve(frame, dequeue)
        else:
            work = self._work(frame, streams)
        self._run(frame, work, streams=streams, dequeue=dequeue)

    def _run(
        self,
        frame: TunnelRequest | StreamInit,
        work: Coroutine[Any, Any, None],
        *,
        streams: bool,
        dequeue: Callable[[], None] | None,
    ) -> None:
        """``work`` as the task of ``frame``'s request; a stream is counted at once (a burst
        of streams cannot overshoot the cap)."""
        request_id, is_init = frame.request_id, isinstance(frame, StreamInit)
        task = self._loop.create_task(work)  # asyncio.create_task: a getpid call on 3.11
        self.metrics.track(frame, task, streams)
        self._tasks[request_id] = task
        if streams:
            self._open_streams += 1

        def forget(_: asyncio.Task[None]) -> None:  # runs even if cancelled before it started
            self._tasks.pop(request_id, None)
            if is_init:
                self._exec.forget(request_id)
            if streams:
                self._open_streams -= 1
            if dequeue is not None:
                dequeue()

        task.add_done_callback(forget)

    # ---- requests served without a task (agent/quick.py) ----------------------------------

    def _start_quick(self, frame: TunnelRequest) -> bool:
        """Serve ``frame`` without a task if nothing would make it wait: a free slot and
        nobody queued for one, an idle connection to the API server. Refusals, and requests
        the lean client refuses to write, go the task's way (which says why)."""
        if (
            self._send_now is None
            or not self._chunked
            or self._queue.count
            or _refusal(frame, self._private_namespace) is not None
            or not self._slots.try_take()
        ):
            return False
        quick = QuickRequest(self, self._upstream, frame)
        try:
            quick.exchange = self._upstream.begin_now(self._upstream_call(frame), quick.progress)
        except Exception:  # noqa: BLE001 - the task's way meets it again, and answers it
            quick.exchange = None
        if quick.exchange is None:
            self._slots.release()
            return False
        quick.ended = self.metrics.begin(frame, False)
        self._quick[frame.request_id] = quick
        self._no_quick.clear()
        return True

    def _forget_quick(self, quick: QuickRequest, *, slot: bool = True) -> bool:
        """Whether ``quick`` was still in flight (it is not any more)."""
        if self._quick.get(quick.frame.request_id) is not quick:
            return False
        del self._quick[quick.frame.request_id]
        if not self._quick:
            self._no_quick.set()
        if slot:
            self._slots.release()
        return True

    def answer_now(self, quick: QuickRequest, answer: TunnelResponse) -> None:
        if self._quick.get(quick.frame.request_id) is not quick:
            return  # answered, cancelled or handed over already
        data = self._encode(answer)  # before it is forgotten: a failure here is answered
        self._forget_quick(quick, slot=False)
        assert self._send_now is not None
        try:
            sent = self._send_now(data)
        except ConnectionError:  # the gateway's connection went as it was written
            sent = False
        if sent:
            self._slots.release()
            quick.ended(False)
            return
        # A frame is being sent, or the socket is paused: in turn, by a task that keeps the
        # request's slot (a gateway that does not read holds max-concurrent answers, then
        # its requests queue and are refused, as on the task's way).
        rid = quick.frame.request_id
        sending = self._loop.create_task(self._send_quietly(data))
        self._tasks[rid] = sending
        sending.add_done_callback(partial(self._sent, rid, quick))

    def _sent(self, rid: str, quick: QuickRequest, done: asyncio.Task[None]) -> None:
        self._tasks.pop(rid, None)
        self._slots.release()
        quick.ended(done.cancelled())

    def fail_now(self, quick: QuickRequest, status: int, message: str) -> None:
        self.answer_now(quick, error_response(quick.frame.request_id, status, message))

    async def _send_quietly(self, data: bytes | bytearray) -> None:
        with contextlib.suppress(ConnectionError):  # the gateway's connection went
            await self._send(data)

    def hand_over(self, quick: QuickRequest) -> None:
        """A task relays the rest of the answer in chunks; it keeps the quick one's slot."""
        if not self._forget_quick(quick, slot=False):
            return
        rid = quick.frame.request_id
        task = self._loop.create_task(self._relay_quick(quick))
        self._tasks[rid] = task

        def forget(done: asyncio.Task[None]) -> None:
            if quick.exchange is not None:  # a task cancelled before it began ran no finally
                quick.exchange.release(whole=False)
            self._sent(rid, quick, done)

        task.add_done_callback(forget)

    async def _relay_quick(self, quick: QuickRequest) -> None:
        rid, exchange, head = quick.frame.request_id, quick.exchange, _Head()
        assert exchange is not None and exchange.response is not None
        response, whole = exchange.response, False
        try:
            await self._relay(rid, response, head)
            whole = response.complete
        except OSError as exc:
            await self._fail(rid, head.sent, *upstream_failure(exc, self._timeout))
        finally:
            exchange.release(whole=whole)

    def start_again(self, quick: QuickRequest) -> None:
        """A reused connection the server had closed: the request again, by a task."""
        if not self._forget_quick(quick):
            return
        quick.ended(False)
        frame = quick.frame
        dequeue = self._queue.enter(frame)
        if dequeue is None:
            self._refuse(frame.request_id, 429, self._over_queue, "queue full")
            return
        self._run(frame, self._serve(frame, dequeue), streams=False, dequeue=dequeue)

    def _cancel_quick(self, quick: QuickRequest) -> None:
        if self._forget_quick(quick):
            quick.cancel()
            quick.ended(True)

    def _refuse(
        self, rid: str, status: int, message: str, kind: str, *, stream: bool = False
    ) -> None:
        """Answer ``status`` at once (a duplicate requestID, tracked under it, would leave the
        first forgotten: never cancelled by ``isClose`` or close, a stream slot held for good;
        a request past a cap must not wait). The answer is encoded now, so the frame and its
        body are not held while it waits to be sent; past ``REFUSALS_QUEUED_BYTES`` of those,
        the gateway is not reading them and the request is dropped unanswered."""
        answer = self._encode(error_response(rid, status, message, logged=False))
        parts: tuple[bytes | bytearray, ...] = (answer,)
        if stream:  # a stream is also told it is over
            parts += (self._encode(StreamChunk(request_id=rid, is_close=True)),)
        size = sum(len(part) for part in parts)
        if self._refusal_bytes + size > REFUSALS_QUEUED_BYTES:
            self._problems.log(
                "refusals unread",
                logging.WARNING,
                "dropping requests unanswered: %d bytes of refusals wait for the gateway",
                self._refusal_bytes,
            )
            return
        self._problems.log(kind, logging.WARNING, "refusing requests (%s): %s", kind, message)
        self._refusals.append((parts, size))
        self._refusal_bytes += size
        if self._refusal_sender is None:
            self._refusal_sender = self._loop.create_task(self._send_refusals())

    async def _send_refusals(self) -> None:
        try:
            while self._refusals:
                parts, size = self._refusals[0]
                for part in parts:
                    await self._send(part)
                self._refusals.popleft()
                self._refusal_bytes -= size
        finally:
            self._refusal_sender = None

    def _work(self, frame: TunnelRequest | StreamInit, streams: bool) -> Coroutine[Any, Any, None]:
        if isinstance(frame, TunnelRequest):
            return self._serve_now(frame, streaming=streams)
        if frame.is_upgrade:
            return self._exec.begin(frame)
        return self._stream(frame)

    @property
    def _over_cap(self) -> str:
        """A stream past the cap is refused at once (one that waited would look like a hang)."""
        return (
            f"too many concurrent streams: this agent serves at most {self._max_streams} "
            "watch/follow streams at once (--max-concurrent-streams); retry later"
        )

    @property
    def _over_queue(self) -> str:
        """The plane is not keeping up with what the gateway sends."""
        queue = self._queue
        return (
            f"too many requests waiting: this agent serves {self._slots_total} at once "
            f"(--max-concurrent-requests) and holds at most {queue.max_count} requests or "
            f"{queue.max_bytes} bytes waiting; retry later"
        )

    async def _serve(self, frame: TunnelRequest, dequeue: Callable[[], None]) -> None:
        """An ordinary request waits in the queue for one of the ordinary slots (a watch/follow
        request sent as a plain request is counted as a stream and takes none of them)."""
        async with self._slots:
            dequeue()
            await self._serve_now(frame, streaming=False)

    async def _serve_now(self, frame: TunnelRequest, *, streaming: bool) -> None:
        refused = _refusal(frame, self._private_namespace)
        if refused is not None:
            await self._send_whole(refused)
        elif self._chunked:
            await self._answer_in_chunks(frame, streaming)
        else:
            await self._answer(frame, streaming)

    async def _send_whole(self, response: TunnelResponse) -> None:
        """One frame; one that would exceed the frame limit becomes a 502 saying so."""
        data = self._encode(response)
        if len(data) > self._max_frame:
            data = self._encode(
                error_response(
                    response.request_id,
                    502,
                    f"answer of {len(data)} bytes does not fit in one frame "
                    f"(limit {self._max_frame} bytes)",
                )
            )
        await self._send(data)

    def _upstream_call(self, frame: TunnelRequest) -> Call:
        """The request to make upstream: method, path, query, headers, body, deadline."""
        query, body = _str(frame.query), _bytes(frame.body)
        return frame.method.upper(), frame.path, query, _headers(frame.headers), body, self._timeout

    async def _answer(self, frame: TunnelRequest, streaming: bool) -> None:
        """The whole answer in one frame (v1); upstream failures become 502s. A large body is
        reserved from the process's whole answers while it is read, and given back once its
        frame is sent (or its sending failed or was cancelled); one that does not fit is a
        503 at once."""
        rid, held = frame.request_id, 0
        try:
            result = await self._upstream.request(
                *self._upstream_call(frame),
                body_limit(self._max_frame),
                self._answers,
                streaming=streaming,
            )
        except AnswersOverBudget as exc:
            answer = error_response(rid, 503, self._over_budget(exc), logged=False)
        except ResponseTooLarge as exc:
            answer = error_response(rid, 502, _too_large(exc))
        except InvalidRequest as exc:
            answer = error_response(rid, 400, f"bad request: {exc}")
        except ConnectTimeout as exc:  # nothing was sent: the API server is unreachable
            answer = error_response(rid, 502, f"backend request failed: {exc}")
        except OSError as exc:  # TimeoutError too
            answer = error_response(rid, *upstream_failure(exc, self._timeout))
        else:
            answer = TunnelResponse(
                request_id=rid, status_code=result.status, headers=result.headers, body=result.body
            )
            held = result.held  # a large body: the budget's until its frame is out
        try:
            await self._send_whole(answer)
        finally:
            if held:
                self._answers.give(held)

    def _over_budget(self, exc: AnswersOverBudget) -> str:
        """A large answer that came while others held the budget: said, and logged throttled
        (a gateway may ask for any number of lists at once)."""
        size = f"{exc.size} bytes" if exc.known else f"at least {exc.size} bytes"
        message = (
            f"the agent holds {exc.held} bytes of whole answers for OpenChoreo's (v1) gateway "
            f"and at most {exc.limit} at once: this answer ({size}) does not fit beside them; "
            "retry, or page the list with ?limit= and continue"
        )
        self._problems.log(
            "whole answers over budget", logging.WARNING, "refusing answers (503): %s", message
        )
        return message

    async def _answer_in_chunks(self, frame: TunnelRequest, streaming: bool) -> None:
        """v2: a small answer in one frame, a larger one as chunks as it is read."""
        rid, head = frame.request_id, _Head()
        try:  # the request's one deadline covers the body too
            upstream = self._upstream.open(*self._upstream_call(frame), streaming=streaming)
            async with upstream as response:
                await self._relay(rid, response, head)
        except InvalidRequest as exc:
            await self._fail(rid, head.sent, 400, f"bad request: {exc}")
        except ConnectTimeout as exc:  # nothing was sent: the API server is unreachable
            await self._fail(rid, head.sent, 502, f"backend request failed: {exc}")
        except OSError as exc:  # TimeoutError too
            await self._fail(rid, head.sent, *upstream_failure(exc, self._timeout))

    async def _relay(self, rid: str, response: Http1Response, head: _Head) -> None:
        """Send the upstream answer: whole if it fits one chunk, else head, chunks of
        ``chunk_bytes``, close. Each chunk is joined once, from what was read, into its
        message (v3: a bytearray the sender may mask in place, so no further copy)."""
        status, headers = response.status, response_headers(response.headers)
        size = response.content_length
        if size is not None and size < self._chunk:  # small and known: one read, one frame
            body = await response.read()
            whole = TunnelResponse(request_id=rid, status_code=status, headers=headers, body=body)
            await self._send(self._encode(whole))
            return
        async for parts, size in _exact_chunks(response.iter_any(), self._chunk):
            if size < self._chunk and not head.sent:  # the whole answer
                whole = TunnelResponse(
                    request_id=rid, status_code=status, headers=headers, body=_joined(parts)
                )
                await self._send(self._encode(whole))
                return
            if not head.sent:
                chunked = TunnelResponse(
                    request_id=rid, status_code=status, headers=headers, chunked=True
                )
                await self._send(self._encode(chunked))
                head.sent = True
            if size:
                await self._send(self._encode_chunk(rid, parts))
        await self._send(self._encode(StreamChunk(request_id=rid, is_close=True)))

    async def _fail(self, rid: str, started: bool, status: int, message: str) -> None:
        """Before the head: an error response. After it: a close chunk carrying the reason."""
        if started:
            await self._send(
                self._encode(StreamChunk(request_id=rid, data=message.encode(), is_close=True))
            )
        else:
            await self._send_whole(error_response(rid, status, message))

    async def _refuse_upgrade(self, frame: StreamInit) -> None:
        reason = (
            f"unknown target: {frame.target}"
            if frame.target != TARGET_K8S
            else f"upgrade {_str(frame.upgrade_proto) or '(none)'} is not supported by this agent"
        )
        log.warning("refusing stream %s: %s", frame.request_id, reason)
        chunk = StreamChunk(request_id=frame.request_id, data=reason.encode(), is_close=True)
        await self._send(self._encode(chunk))

    async def _stream(self, frame: StreamInit) -> None:
        rid = frame.request_id
        refused = _refusal(frame, self._private_namespace)  # as for requests
        if refused is not None:
            await self._send(self._encode(refused))
            await self._send(self._encode(StreamChunk(request_id=rid, is_close=True)))
            return
        try:
            async for part in self._upstream.stream(
                frame.method.upper(), frame.path, _str(frame.query), _headers(frame.headers)
            ):
                if isinstance(part, UpstreamResult):
                    await self._send(
                        self._encode(
                            TunnelResponse(
                                request_id=rid, status_code=part.status, headers=part.headers
                            )
                        )
                    )
                else:
                    await self._send(self._encode(StreamChunk(request_id=rid, data=part)))
        except asyncio.CancelledError:
            return  # the gateway closed it; nothing more to say
        except InvalidRequest as exc:
            await self._send(self._encode(error_response(rid, 400, f"bad request: {exc}")))
        except OSError as exc:
            await self._send(
                self._encode(error_response(rid, 502, f"upstream stream failed: {exc!r}"))
            )
        await self._send(self._encode(StreamChunk(request_id=rid, is_close=True)))

    async def idle(self) -> None:
        """Wait until every request and stream started so far has finished."""
        while self._tasks or self._quick:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self._no_quick.wait()

    async def close(self) -> None:
        """Cancel what is in flight; a frame dispatched from now on is dropped."""
        self._closed = True
        for quick in list(self._quick.values()):
            self._cancel_quick(quick)
        sender = [self._refusal_sender] if self._refusal_sender is not None else []
        tasks = [*self._tasks.values(), *sender]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _too_large(exc: ResponseTooLarge) -> str:
    return (
        f"{exc}, the most one frame to this gateway can carry (it takes no chunked answers); "
        "ask for less, e.g. with ?limit= and continue"
    )


def _describe(protocol: str | None, max_frame: int) -> str:
    if protocol == TUNNEL_V3:
        return f"{TUNNEL_V3}: binary frames, large answers in chunks"
    if protocol == TUNNEL_V2:
        return f"{TUNNEL_V2}: large answers in chunks"
    return f"v1 gateway: each answer in one frame of at most {max_frame} bytes"


async def _exact_chunks(
    content: AsyncIterator[bytes], size: int
) -> AsyncIterator[tuple[list[Piece], int]]:
    """A body as chunks of exactly ``size`` bytes, then the rest (shorter, maybe empty),
    each as the pieces read (not joined: the encoder joins them into its message) and
    its length. Pieces come as the socket gives them (no re-slicing into ``size`` reads);
    a read that straddles two chunks is cut as a memoryview (no copy of its halves); short
    reads are joined as they come (``hold_piece``: an object per 2-byte read cost ~25 bytes
    per byte of a chunk)."""
    pieces: list[Piece] = []
    held = 0
    async for read in content:
        piece: bytes | memoryview = read
        while piece:
            if len(piece) > size - held and isinstance(piece, bytes):
                piece = memoryview(piece)
            room = size - held
            if len(piece) < room:
                hold_piece(pieces, piece)
                held += len(piece)
                break
            pieces.append(piece[:room] if len(piece) > room else piece)
            yield pieces, size
            piece = piece[room:]
            pieces, held = [], 0
    yield pieces, held


def _joined(pieces: Sequence[Piece]) -> bytes:
    return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else b""


def _headers(value: object) -> dict[str, list[str]] | None:
    return value if isinstance(value, dict) else None


class AgentTunnel:
    """Keeps one connection to the gateway up for as long as ``run`` runs.

    One per gateway replica (``agent/replicas.py`` owns them): ``server_hostname`` is the name
    TLS checks when ``url`` names an address, ``headers`` go on the upgrade, ``metrics`` may be
    shared by every replica's tunnel (the owner then observes the upstream once), and
    ``on_change`` is called whenever ``connected`` is set or cleared. A connection the gateway
    closes with 1001 (going away: a replica draining) is redialled after the first, short
    backoff, as a connection that was stable.
    """

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
        max_streams: int = 64,
        server_hostname: str | None = None,
        headers: Mapping[str, str] | None = None,
        metrics: AgentMetrics | None = None,
        on_change: Callable[[], None] = lambda: None,
        socket_factory: SocketFactoryType | None = None,
        private_namespace: str | None = None,
        answers: AnswerBudget | None = None,
    ) -> None:
        self._private_namespace = private_namespace
        # the process's whole answers, shared by every replica's tunnel (else this tunnel's)
        self._answers = (
            answers if answers is not None else AnswerBudget(whole_answers_bytes(max_frame))
        )
        self.url = dial_url(url, plane_type, plane_id)
        self._ssl_factory = ssl_factory
        self._upstream = upstream
        self._initial, self._cap, self._stable = initial_backoff, max_backoff, stable_after
        # A gateway that refuses this agent for good (a CA no CR trusts) is dialled every few
        # seconds per replica: the same failure is said once a minute, with a count.
        self._failures = LogThrottle(log, interval=FAILURE_LOG_SECONDS)
        self._dead_after, self._max_frame = dead_after, max_frame
        self._timeout, self._max_concurrent = timeout, max_concurrent
        self._max_streams = max_streams
        self.connected = asyncio.Event()
        self.reconnect_requested = asyncio.Event()
        self._server_hostname, self._headers = server_hostname, dict(headers or {})
        self._on_change, self._going_away = on_change, False
        self._socket_factory = socket_factory
        if metrics is None:
            metrics = AgentMetrics()
            upstream.observe(metrics.upstream_observed)
        self.metrics = metrics

    async def run(self) -> None:
        attempt = 0
        connector = Connector(socket_factory=self._socket_factory)
        async with aiohttp.ClientSession(
            connector=connector, ws_response_class=TappedWebSocket
        ) as session:
            while True:
                started, self._going_away, said = time.monotonic(), False, True
                try:
                    await self._connect_once(session)
                except ConnectRefused as exc:
                    said = self._failed(exc, logging.ERROR, "not connecting: %s")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    said = self._failed(exc, logging.WARNING, "gateway connection failed: %s")
                except Exception:  # a bug or a frame nobody foresaw: this tunnel redials,
                    # the agent's tunnels to the other replicas carry on
                    log.exception("the connection to the gateway failed unexpectedly")
                finally:
                    self.connected.clear()
                    self._on_change()
                stable = self._going_away or time.monotonic() - started > self._stable
                attempt = 0 if stable else attempt + 1
                delay = full_jitter_delay(attempt, self._initial, self._cap)
                log.log(logging.INFO if said else logging.DEBUG, "reconnecting in %.1fs", delay)
                await self._backoff(delay)

    def _failed(self, exc: BaseException, level: int, message: str) -> bool:
        """Say why a connection failed, once per interval for the same reason (a few kinds
        of reason; past them, one for all); whether it was said."""
        reason = shortened(str(exc), 300)
        key = reason if len(self._failures) < MAX_FAILURE_KINDS else "other"
        return self._failures.log(key, level, message, reason)

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay``, or less when the agent asks to reconnect (a new leaf is ready)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reconnect_requested.wait(), delay)

    async def _connect_once(self, session: aiohttp.ClientSession) -> None:
        # Cleared before the certificate is read: a request made after this point closes the
        # connection about to open, so no new leaf is ever missed.
        self.reconnect_requested.clear()
        context = await self._ssl_factory()  # fresh: renewed certificates take effect
        opening = session.ws_connect(
            self.url,
            ssl=context,
            max_msg_size=self._max_frame,
            autoping=False,
            heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
            protocols=OFFERED,
            server_hostname=self._server_hostname,
            headers=self._headers,
        )
        try:  # a gateway that takes the connection and never answers is as silent as a dead one
            async with asyncio.timeout(self._dead_after) as deadline:
                ws = await opening
        except TimeoutError:
            if not deadline.expired():
                raise  # aiohttp's own (a connect timeout): it says what it was
            message = f"the gateway did not answer the upgrade within {self._dead_after:g}s"
            raise TimeoutError(message) from None
        async with ws:
            log.info("connected to %s (%s)", self.url, _describe(ws.protocol, self._max_frame))
            self.connected.set()
            self._on_change()
            self.metrics.connection_opened()
            try:
                await self._serve(ws)
            finally:
                self._going_away = ws.close_code == aiohttp.WSCloseCode.GOING_AWAY

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        binary = ws.protocol == TUNNEL_V3
        server = self._frame_server(ws, binary)
        received_bytes = self.metrics.frame_bytes.labels("in")
        heard = _Heard(asyncio.get_running_loop())

        def deliver(data: bytes | str, binary_message: bool) -> None:
            heard.now()
            server.dispatch(data, binary=binary_message)
            received_bytes.observe(len(data))

        tapped = ws.tap if binary and isinstance(ws, TappedWebSocket) else None
        if tapped is not None:  # v3 messages as the socket's bytes are read; the rest by receive()
            flow = ProtocolFlow(ws._writer.protocol, asyncio.get_running_loop())
            tapped.start(partial(deliver, binary_message=True), self._max_frame, flow)
        watcher = asyncio.create_task(self._close_on_request(ws))
        watchdog = asyncio.create_task(self._fail_when_silent(ws, heard))
        transport = ws._writer.transport
        unguard = guard_writes(
            ws._writer.protocol, transport, self._timeout, partial(self._cut_off, transport)
        )
        reason = "error"  # unless a way out below says otherwise (the metric's reason)
        try:
            reason = await self._receive(ws, deliver, heard, binary)
        except TimeoutError:
            reason = "timeout"
            log.warning("no traffic from the gateway for %.0fs: reconnecting", self._dead_after)
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        finally:
            self.metrics.connection_closed(reason)
            unguard()
            watcher.cancel()
            watchdog.cancel()
            if tapped is not None:
                tapped.stop()  # requests read while the socket closes are not served
            await server.close()

    def _frame_server(self, ws: aiohttp.ClientWebSocketResponse, binary: bool) -> FrameServer:
        """The server of this connection's frames, and how its answers are sent."""
        lock = asyncio.Lock()
        kind = aiohttp.WSMsgType.BINARY if binary else aiohttp.WSMsgType.TEXT
        sent_bytes = self.metrics.frame_bytes.labels("out")
        corked = cork(ws._writer)  # frames written in one pass of the loop leave as one write
        if binary:
            mask_in_place(ws._writer)  # chunks of large answers: no copies to mask them

        async def send(data: bytes | bytearray) -> None:
            size = len(data)  # before the writer may mask (and so change) it in place
            async with lock:  # a frame from the bytes as they are (no str copy)
                await ws.send_frame(data, kind)  # type: ignore[arg-type]  # see ws_writer
            if corked is not None and server.requests_in_flight <= 1:
                corked.flush()  # a lone answer: nothing to join it with
            sent_bytes.observe(size)

        writer, opcode = ws._writer, int(kind)

        def send_now(data: bytes | bytearray) -> bool:
            """``send`` without waiting, when nothing would make it wait (a frame being
            sent, a paused socket, a closing one): a quick answer, its request forgotten."""
            transport = writer.transport
            if lock.locked() or writer._closing or writer.protocol._paused:
                return False
            if transport is None or transport.is_closing():
                return False  # the task's way says so (and is told the connection went)
            size = len(data)
            writer._write_websocket_frame(data, opcode, 0)  # type: ignore[arg-type]  # ws_writer
            if writer._output_size > writer._limit:
                writer._output_size = 0
            if corked is not None and server.requests_in_flight == 0:
                corked.flush()
            sent_bytes.observe(size)
            return True

        server = FrameServer(
            self._upstream,
            send,
            self._timeout,
            self._max_concurrent,
            max_frame=self._max_frame,
            chunked=ws.protocol in OFFERED,
            max_streams=self._max_streams,
            encoder=encode_binary if binary else encode,
            chunk_encoder=encode_chunk if binary else None,
            private_namespace=self._private_namespace,
            answers=self._answers,
            send_now=send_now if binary else None,
        )
        server.metrics = self.metrics
        return server

    async def _receive(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        deliver: Callable[[bytes | str, bool], None],
        heard: _Heard,
        binary: bool,
    ) -> str:
        """Deliver what ``receive()`` brings until the connection ends; why it ended."""
        while True:
            message = await ws.receive()
            heard.now()  # every message counts as traffic (pings, pongs too)
            if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                deliver(message.data, binary and message.type == aiohttp.WSMsgType.BINARY)
            elif message.type == aiohttp.WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type == aiohttp.WSMsgType.ERROR:
                log.warning("websocket error: %s (frame too large?)", ws.exception())
                return "error"
            elif message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                log.info("gateway closed the connection (%s)", message.extra)
                requested = self.reconnect_requested.is_set()
                return "reconnect-requested" if requested else "gateway-closed"

    async def _fail_when_silent(self, ws: aiohttp.ClientWebSocketResponse, heard: _Heard) -> None:
        """The waiting receive fails with TimeoutError once the gateway has sent nothing for
        ``dead_after``, as a receive timeout would: one timer per quiet spell, where a timeout
        on each receive would set and cancel one for every message, in every request's way."""
        while True:
            left = heard.at + self._dead_after - heard.loop.time()
            if left <= 0:
                break
            await asyncio.sleep(left)  # traffic meanwhile moves the end further
        ws._reader.set_exception(TimeoutError(f"no traffic for {self._dead_after:g}s"))

    def _cut_off(self, transport: asyncio.Transport) -> None:
        """A gateway that reads nothing of what the agent writes (it may still ping) holds
        every answer's send, and with it the API server connection the answer is read
        from, shared with the other replicas' tunnels: its connection goes, and is redialled."""
        log.warning(
            "the gateway read nothing the agent sent for %.0fs: closing the connection",
            self._timeout,
        )
        transport.abort()

    async def _close_on_request(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self.reconnect_requested.wait()
        await ws.close()
