"""A lean HTTP/1.1 server for the requests a router takes, in front of a full server.

Why: on a proxy's hot path aiohttp's server (request and URL objects, header multidicts, the
router, signals, the response object and its writer) cost more CPU per request than the
proxying itself. Here a request the router takes is parsed by ``httptools`` (llhttp), served
by a plain coroutine and answered with one write. Any other request (an upgrade, a route the
router does not take) hands the whole connection, with the bytes read so far, to the full
server's protocol (``fallback``: aiohttp's), which serves it from there on.

What a client sends is bounded: the request line and headers in size, count and time, the
body in size and time; a connection idle between requests is closed after the head timeout.
Bad input gets a 400 (or 413, 431) that names the problem, then the connection is closed.
Pipelined requests are not served here: the first is answered, the next gets a 400 saying so
(no mainstream client pipelines; one that does can send each request after its answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, cast

import httptools  # type: ignore[import-untyped]

from workflowplane.kits.eager import start_eagerly
from workflowplane.kits.http1 import NO_BODY_STATUSES, SMALL_PIECE, Headers, Piece, hold_piece
from workflowplane.kits.stall import StallWatch

log = logging.getLogger(__name__)

_REASONS: Final = {int(s): s.phrase for s in HTTPStatus}
_FINAL_CHUNK: Final = b"0\r\n\r\n"
LINGER_SECONDS: Final = 1.0  # after a refusal, before the close
HEAD_SLACK: Final = 4096  # raw bytes of a head beyond what the parser's callbacks report
# A chunked body's framing (chunk lines, extensions, trailers) beyond what its data earns, as
# Go's net/http counts it: 16 bytes per chunk and twice its data are free, the rest is excess.
CHUNK_FREE_BYTES: Final = 16
PIPELINED: Final = "pipelined requests are not served: send each after the previous answer"


@dataclass(frozen=True)
class Limits:
    """What one request may take: head bytes and header count, body bytes, and time."""

    head_bytes: int = 64 * 1024
    header_count: int = 128
    body_bytes: int = 10 * 1024 * 1024
    head_seconds: float = 20.0  # also how long a connection may idle between requests
    body_seconds: float = 30.0


@dataclass(slots=True)
class Request:
    """One request as sent: the target still percent-encoded, header names as written."""

    method: str
    target: str
    headers: Headers
    body: bytes = b""


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class Abort(Exception):
    """Raised while streaming an answer: the connection is cut, so the body cannot look whole."""


class Responder:
    """How a handler answers: once whole, or as a stream of chunks."""

    def __init__(self, protocol: FrontProtocol, head_only: bool) -> None:
        self._protocol = protocol
        self._head_only = head_only
        self.status = 0  # sent so far (0: nothing yet)

    def whole(self, status: int, headers: Headers, body: bytes = b"") -> None:
        no_body = status in NO_BODY_STATUSES or status < 200
        length = () if no_body else (("Content-Length", str(len(body))),)
        head = _head(status, headers, length, self._protocol.closing_after)
        self.status = status
        self._protocol.write(head if no_body or self._head_only else head + body)
        self._protocol.answer_sent()

    def stream(self, status: int, headers: Headers) -> None:
        """Send the head of an answer whose body follows in :meth:`chunk` calls."""
        framing = (("Transfer-Encoding", "chunked"),)
        self.status = status
        self._protocol.write(_head(status, headers, framing, self._protocol.closing_after))

    async def chunk(self, data: bytes | bytearray) -> None:
        if data and not self._head_only:
            self._protocol.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            await self._protocol.drained()

    def end(self) -> None:
        if not self._head_only:
            self._protocol.write(_FINAL_CHUNK)
        self._protocol.answer_sent()


Handler = Callable[[Request, Responder], Awaitable[None]]
# A request's method, target and headers -> its handler, or None: the fallback serves it.
Router = Callable[[str, str, Headers], Handler | None]
ProtocolFactory = Callable[[], asyncio.Protocol]


def _head(
    status: int, headers: Headers, framing: tuple[tuple[str, str], ...], close: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.extend(f"{name}: {value}\r\n" for name, value in framing)
    lines.append("Connection: close\r\n\r\n" if close else "\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class _HandOff(Exception):
    """Control flow out of the parser's callback: the fallback serves this request."""


class _Refused(Exception):
    """Out of the parser's callback: this request gets ``status`` and the connection ends."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FrontServer:
    """The protocol factory for ``loop.create_server``; keeps its live connections."""

    def __init__(self, router: Router, fallback: ProtocolFactory, limits: Limits) -> None:
        self.router = router
        self.fallback = fallback
        self.limits = limits
        self.connections: set[FrontProtocol] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> FrontProtocol:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return FrontProtocol(self, self.loop)

    def close_all(self) -> None:
        """Stop: idle connections are closed, busy ones aborted (their requests cancelled)."""
        for connection in list(self.connections):
            connection.stop()


class FrontProtocol(asyncio.Protocol):
    """One client connection, until it ends or is handed to the fallback."""

    def __init__(self, server: FrontServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._raw = bytearray()  # since the current request began, until its head is read
        self._keep_raw = True
        self._completed_in_feed = False
        self._start_known = True
        self._request: Request | None = None
        self._handler: Handler | None = None
        self._url = bytearray()
        self._head_bytes = 0
        self._body: list[Piece] = []  # short pieces joined (hold_piece): ~the body's size
        self._body_bytes = 0
        self._chunks = 0
        self._excess = 0  # framing bytes beyond what the body's chunks earned
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writable = True
        self._paused = False
        self._early_bytes = 0  # received while a request is served
        self._answered = False  # the answer went out whole; its handler may still be running
        self._after_answer = bytearray()  # sent after that: read once the handler is done
        self._body_timer_due = False
        self._refusal: _Refused | None = None  # said, or to say after the answer; then the end
        self.closing_after = False  # the answer being written is the connection's last

    # ---- transport events --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._server.connections.add(self)
        self._arm(self._limits.head_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._disarm()
        self._transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        """Read on while a request is served, so a client that leaves cancels it (as aiohttp
        does): a client that does not wait for its answer is refused (pipelining)."""
        if self._refusal is not None:
            return
        if self._task is not None and self._answered:
            # the next request, sent on the answer (written before its handler ended, from
            # another socket's callback): it waits for the handler's end, a loop's pass
            self._after_answer += data
            self._pause_reading()
            return
        if self._task is not None:  # a client that waits for its answer sends nothing now
            self._early_bytes += len(data)
            if self._early_bytes > self._limits.head_bytes:
                self._refuse(_Refused(400, PIPELINED))
                return
        if self._keep_raw:
            self._raw += data
        self._completed_in_feed = False
        in_body = self._handler is not None
        body_before, chunks_before = self._body_bytes, self._chunks
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HandOff):
                self._hand_off()
            elif isinstance(cause, _Refused):
                self._refuse(cause)
            else:
                log.exception("front server: request not understood", exc_info=cause)
                self._refuse(_Refused(500, "the server failed to read the request"))
        except httptools.HttpParserUpgrade:
            self._refuse(_Refused(400, "an upgrade the server did not expect"))
        except httptools.HttpParserError as exc:
            self._refuse(_Refused(400, f"malformed HTTP request: {exc}"))
        else:
            if in_body and self._handler is not None:  # still in the body, as it began
                carried, chunks = self._body_bytes - body_before, self._chunks - chunks_before
                if self._too_much_framing(len(data) - carried, carried, chunks):
                    return
            if self._body_timer_due and self._handler is not None:
                self._body_timer_due = False
                self._arm(self._limits.body_seconds)
            if self._completed_in_feed and self._request is None:
                self._raw.clear()
            elif self._keep_raw and len(self._raw) > self._limits.head_bytes + HEAD_SLACK:
                # bytes no callback counts (blank lines, padding whitespace) count here
                self._refuse(_Refused(431, f"request head over {self._limits.head_bytes} bytes"))

    def _too_much_framing(self, framing: int, carried: int, chunks: int) -> bool:
        """Whether a read of the body was mostly chunk framing or trailers (refused then).
        Unbounded, a trailer that never ends is held and joined again on every read (the
        parser builds a header up before it reports it), stalling the loop for all clients."""
        earned = CHUNK_FREE_BYTES * chunks + 2 * carried
        self._excess = max(self._excess + framing - earned, 0)
        if self._excess <= self._limits.head_bytes:
            return False
        message = "chunked encoding contains too much non-data (chunk extensions or trailers)"
        self._refuse(_Refused(400, message))
        return True

    # ---- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._completed_in_feed and self._task is None:
            # the previous request of this read was answered at once (its handler never
            # waited) and its end is done: this one was sent before that answer
            raise _Refused(400, PIPELINED)
        if self._task is not None:
            self._start_known = False  # pipelined: sent before the last answer went out
        self._keep_raw = self._start_known
        self._url.clear()
        self._head_bytes = 0
        self._chunks = self._excess = 0
        self._request = Request("", "", [])

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        headers = self._request.headers
        if len(headers) >= self._limits.header_count:
            raise _Refused(431, f"more than {self._limits.header_count} request headers")
        self._count_head(len(name) + len(value))
        if self._handler is not None:
            return  # a trailer of a chunked body: not a header (aiohttp drops them too)
        headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.head_bytes:
            raise _Refused(431, f"request line and headers over {self._limits.head_bytes} bytes")

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        request.method = self._parser.get_method().decode("ascii")
        request.target = self._url.decode("utf-8", "surrogateescape")
        if self._task is not None or not self._start_known:
            raise _Refused(400, PIPELINED)
        handler = None
        if self._parser.get_http_version() == "1.1" and not self._parser.should_upgrade():
            handler = self._server.router(request.method, request.target, request.headers)
        if handler is None:
            raise _HandOff
        self._handler = handler
        self._keep_raw = False
        self._raw.clear()
        self._body_timer_due = True  # armed after this read if the body is still to come

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.body_bytes:
            raise _Refused(413, f"request body over {self._limits.body_bytes} bytes")
        if len(body) < SMALL_PIECE:
            hold_piece(self._body, body)
        else:  # a long piece (the bulk of a large body): kept as it is, without a call
            self._body.append(body)

    def on_message_complete(self) -> None:
        request, handler = self._request, self._handler
        assert request is not None and handler is not None
        self._completed_in_feed = True
        self._body_timer_due = False
        self._disarm()
        if self._body:
            request.body = b"".join(self._body)  # one piece of bytes: itself, no copy
            self._body = []
            self._body_bytes = 0
        self._request = self._handler = None
        self._answered = False
        self.closing_after = not self._parser.should_keep_alive()
        # begun at once, in this read's callback (a proxy's request is sent on before the
        # loop's next pass); what waits goes on as a task
        self._task = start_eagerly(self._loop, self._serve(request, handler))

    # ---- serving -------------------------------------------------------------------------

    async def _serve(self, request: Request, handler: Handler) -> None:
        responder = Responder(self, request.method == "HEAD")
        try:
            await handler(request, responder)
            if not self._writable:  # the client reads its answer before its next request
                await self.drained()  # is read: one that never reads cannot pile answers up
        except (Abort, asyncio.CancelledError):
            self._abort()
            return
        except Exception:
            log.exception("front server: handler failed for %s %s", request.method, request.target)
            if responder.status:
                self._abort()
                return
            responder.whole(500, [("Content-Type", "text/plain")], b"internal server error")
        finally:
            self._task = None
        self._next()

    def _next(self) -> None:
        """After an answer: the next request, or the end of the connection."""
        transport = self._transport
        if transport is None:
            return
        if self._refusal is None and (self._request is not None or not self._start_known):
            self._refusal = _Refused(400, PIPELINED)  # begun before this answer went out
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        if self.closing_after:
            self._close(transport)
            return
        self._early_bytes = 0
        self._start_known = True
        self._keep_raw = True
        self._raw.clear()
        self._arm(self._limits.head_seconds)
        if self._after_answer:  # read in a callback of its own, as any request is
            self._loop.call_soon(self._read_after_answer)

    def _read_after_answer(self) -> None:
        data, self._after_answer = bytes(self._after_answer), bytearray()
        if self._transport is None:
            return
        if self._paused:
            self._transport.resume_reading()
            self._paused = False
        self.data_received(data)

    def answer_sent(self) -> None:
        """The answer is out whole (what the client sends now is its next request)."""
        self._answered = True

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._paused:
            self._transport.pause_reading()
            self._paused = True

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def writelines(self, parts: tuple[bytes | bytearray, ...]) -> None:
        if self._transport is not None:
            self._transport.writelines(parts)

    async def drained(self) -> None:
        """Until the client has read enough of what was written; Abort when it is gone, or
        reads nothing for the body timeout (a stalled reader cannot hold the answer open)."""
        if self._transport is None:
            raise Abort("the client is gone")
        if self._writable:
            return
        self._drain = drain = self._loop.create_future()
        # a timer, not asyncio.timeout: a handler may stream before its first wait, when it is
        # run eagerly (kits.eager), outside any task
        stalled = Abort(f"the client read nothing for {self._limits.body_seconds:g}s")
        watch = StallWatch(self._loop, self._transport, self._limits.body_seconds)
        watch.start(lambda: _fail(drain, stalled), until=drain.done)
        try:
            await drain
        finally:
            watch.stop()
        if self._transport is None:
            raise Abort("the client is gone")

    def _wake_writer(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # ---- endings -------------------------------------------------------------------------

    def _hand_off(self) -> None:
        """The fallback serves the connection from here on, from the current request's start."""
        transport = self._transport
        assert transport is not None
        self._disarm()
        self._server.connections.discard(self)
        self._transport = None
        fallback = self._server.fallback()
        fallback.connection_made(transport)
        transport.set_protocol(fallback)
        if not self._writable:  # the transport told this protocol, and will tell it the resume
            fallback.pause_writing()
        if self._paused:
            transport.resume_reading()
        raw, self._raw = bytes(self._raw), bytearray()
        fallback.data_received(raw)

    def _refuse(self, refusal: _Refused) -> None:
        """A clear answer to what cannot be served, then the end of the connection (after
        the answer being written, if any)."""
        if self._task is not None:  # said once the answer in progress is out; read no more
            self._refusal = refusal
            self._pause_reading()
            return
        self._disarm()
        transport = self._transport
        if transport is None:
            return
        self.closing_after = True
        self._refusal = refusal  # from here on what arrives is read and dropped
        body = str(refusal).encode() + b"\n"
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        Responder(self, False).whole(refusal.status, headers, body)
        # Linger: closing with unread bytes would reset the connection, and the client could
        # lose the answer before reading it; so read (and drop) for a moment, then close.
        if self._paused:
            transport.resume_reading()
        self._timer = self._loop.call_later(LINGER_SECONDS, self._close, transport)

    def _abort(self) -> None:
        self._disarm()
        if self._transport is not None:
            self._transport.abort()

    def stop(self) -> None:
        if self._task is not None:
            self._abort()
        elif self._transport is not None:
            self._close(self._transport)

    def _close(self, transport: asyncio.Transport) -> None:
        """Close once what was written is sent; a client that reads none of it for the body
        timeout is cut off (a plain close waits for it without end, holding the bytes)."""
        transport.close()
        if transport.get_write_buffer_size():
            watch = StallWatch(self._loop, transport, self._limits.body_seconds)
            watch.start(transport.abort, until=lambda: not transport.get_write_buffer_size())

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self._loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._request is None and self._transport is not None:
            self._close(self._transport)  # idle between requests: a plain close
            return
        self._refuse(_Refused(408, "the request did not arrive in time"))
