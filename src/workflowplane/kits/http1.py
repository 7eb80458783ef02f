"""A lean HTTP/1.1 client for one server: keep-alive connections, bytes as they come.

Why not aiohttp's ``ClientSession`` here: per request it builds a URL, a header multidict, a
cookie jar lookup, a request and response object, tracing signals and two timers. For a proxy
that forwards small requests to one server that was half of the process's CPU per request.
This client does what a forwarding proxy needs and nothing more: one origin, a bounded pool
of keep-alive connections, the response parsed by ``httptools`` (llhttp, Node's parser),
its body handed on as the socket gives it, with flow control, and one deadline per request.
No redirects, cookies, decompression or proxies: bytes go on as they came.

Everything sent is checked first: a method, target, header name or value that could split
the request (whitespace, CR, LF, NUL) is refused with :class:`InvalidRequest` naming it;
non-ASCII and spaces in the target are percent-encoded, as aiohttp's URL handling did.

The event loop is looked up once per connection and pool, not per request: on Python 3.11
``asyncio.get_running_loop()`` makes a ``getpid`` system call each time (gone in 3.12).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, MutableSequence
from functools import partial
from types import TracebackType
from typing import Final
from urllib.parse import quote, urlsplit

import httptools  # type: ignore[import-untyped]

from workflowplane.kits.slots import Slots

HEAD_LIMIT: Final = 1024 * 1024  # status line and headers of one response
# What a kept header costs beyond its bytes (two str objects and a tuple), counted against
# HEAD_LIMIT: a megabyte of two-byte headers held 15 MB.
HEADER_COST: Final = 64
HIGH_WATER: Final = 4 * 1024 * 1024  # body bytes held before the socket is no longer read
LOW_WATER: Final = 1024 * 1024  # ... and read again once this little is held
READ_BUFFER: Final = 256 * 1024  # bytes read from the socket at once, per pool
# A body piece shorter than this is copied onto the last piece held when that is short too:
# a piece kept as an object of its own costs ~40 bytes besides its data.
SMALL_PIECE: Final = 1024
IDLE_SECONDS: Final = 30.0  # an idle connection older than this is closed, not reused
RETRY_SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Framing headers: written by the client from the request itself, never taken from a caller.
CLIENT_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")
_VISIBLE: Final = re.compile(r"[\x21-\x7e]+")
_TARGET_SAFE: Final = "!#$%&'()*+,/:;=?@[]~"  # kept as they are; everything else is encoded

Headers = list[tuple[str, str]]
NO_BODY_STATUSES: Final = frozenset({204, 304})  # RFC 9110 §6.4.1 (1xx are not final)


def carries_body(method: str, status: int) -> bool:
    """Whether a body follows this answer's head: never to HEAD, nor after 204 or 304.
    Bytes written after such a head are read as the connection's next answer."""
    return method != "HEAD" and status not in NO_BODY_STATUSES


Piece = bytes | bytearray | memoryview  # a body's piece as held (joined short ones: bytearray)


def hold_piece(pieces: MutableSequence[Piece], piece: Piece) -> None:
    """Keep ``piece`` after ``pieces``. Why: a body sent in tiny pieces (2-byte chunks) held
    one object per piece, ~25 bytes per byte carried; short pieces are joined onto a short last
    one (one copy of under 2 KiB), so what is held stays about the body's size. Longer pieces
    are kept as they are: no copy."""
    if len(piece) < SMALL_PIECE and pieces:
        last = pieces[-1]
        if len(last) < SMALL_PIECE:
            if isinstance(last, bytearray):
                last += piece
            else:
                joined = bytearray(last)
                joined += piece
                pieces[-1] = joined
            return
    pieces.append(piece)


class Http1Error(ConnectionError):
    """The request failed on the way (connection lost, bad response, refused connection)."""


class InvalidRequest(ValueError):
    """The request could not be sent as given; the message names what is wrong."""


class ConnectTimeout(TimeoutError):
    """No connection to the server within the time left (nothing was sent)."""


class StaleConnection(Http1Error):
    """A reused connection failed before any byte of the answer: safe to try once more."""


def encode_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and headers, checked so that nothing in them can split the request."""
    if not _TOKEN.fullmatch(method):
        raise InvalidRequest(f"invalid HTTP method {method!r}")
    if not _VISIBLE.fullmatch(target):
        target = quote(target, safe=_TARGET_SAFE)
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise InvalidRequest(f"invalid HTTP header name {name!r}")
        if _BAD_VALUE.search(value):
            raise InvalidRequest(f"HTTP header {name} has a CR, LF or NUL in its value")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    try:  # UTF-8, as aiohttp wrote headers (and as callers' UTF-8 bytes were decoded)
        return "".join(lines).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"HTTP header cannot be encoded: {exc.reason}") from None


class Http1Response:
    """Status and headers as soon as they arrive; the body as the socket gives it."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_error",
        "_held",
        "_paused",
        "_waiter",
        "complete",
        "content_length",
        "headers",
        "last_data",
        "status",
    )

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = 0
        self.headers: Headers = []
        self.content_length: int | None = None
        self.last_data = 0.0
        self.complete = False
        self._chunks: deque[Piece] = deque()
        self._held = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def error(self) -> BaseException | None:
        """Why the answer failed (the connection's error, the deadline), if it did."""
        return self._error

    @property
    def held(self) -> int:
        """Body bytes read and not yet taken."""
        return self._held

    def take_body(self) -> bytes:
        """The body read so far, taken at once (a whole answer, read: ``complete``)."""
        chunks, self._chunks = self._chunks, deque()
        self._held = 0
        return b"".join(chunks)

    async def read(self) -> bytes:
        pieces: list[Piece] = []
        async for chunk in self.iter_any():
            hold_piece(pieces, chunk)
        return b"".join(pieces)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._held -= len(chunk)
                if self._paused and self._held <= LOW_WATER:
                    self._paused = False
                    self._connection.resume_reading()
                yield chunk if type(chunk) is bytes else bytes(chunk)  # joined short pieces
            if self._error is not None:
                raise self._error
            if self.complete:
                return
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self.last_data = self._connection.loop.time()
        if len(data) < SMALL_PIECE:
            hold_piece(self._chunks, data)
        else:  # a long piece (the bulk of a large body): kept as it is, without a call
            self._chunks.append(data)
        self._held += len(data)
        if not self._paused and self._held > HIGH_WATER:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; at most one exchange at a time.

    Read into ``read_buffer`` (buffered: TLS is decrypted straight into it, several records
    at once), not handed a new ``bytes`` per read: for a large body that saves a copy of
    every byte, and an allocation of the largest read size per TLS record (big enough to be
    mapped and zeroed afresh). One buffer serves all of a pool's connections: each read is
    parsed at once, in the same callback, and the parser copies out what it keeps."""

    def __init__(self, read_buffer: memoryview) -> None:
        self._read_buffer = read_buffer
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reused = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self.response: Http1Response | None = None
        self._head: asyncio.Future[Http1Response] | None = None
        self._since_body = 0  # bytes read since the last body byte (heads, trailers, 1xx)
        self._received = False
        self._no_body = False
        self._until_close = False
        self._interim = False
        self.reusable = False
        # Told of the answer's every step, in these callbacks (a QuickExchange's).
        self.on_progress: Callable[[], None] | None = None

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.response is None:  # nothing was asked: a server that talks out of turn
            self.abort()
            return
        self._received = True
        self._since_body += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(Http1Error("the server switched protocols (101) on a plain request"))
            return
        except httptools.HttpParserError as exc:
            self.fail(Http1Error(f"malformed HTTP response from the server: {exc}"))
            return
        if self._since_body > HEAD_LIMIT:  # headers, trailers or 1xx answers without end
            self.fail(Http1Error(f"response headers are larger than {HEAD_LIMIT} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if exc is None and response is not None and self._until_close and self._head is None:
            response.finish()  # a body without a length ends when the connection does
            self._progress()
            return
        reason = (
            f"connection to the server lost: {exc!r}" if exc else "server closed the connection"
        )
        error: Http1Error = (
            StaleConnection(reason) if self.reused and not self._received else Http1Error(reason)
        )
        self.fail(error)

    # httptools callbacks

    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and (response.complete or response.status):
            # raised: the parser stops here (a callback's error ends feed_data)
            raise Http1Error("the server sent more than one response to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        if self._head is None:  # trailers, after the body: not this response's headers
            return
        # UTF-8 (as aiohttp read them): the API server writes Warning headers' text as UTF-8
        self.response.headers.append((_text(name), _text(value)))
        self._since_body += HEADER_COST

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self._head is not None
        status = self._parser.get_status_code()
        if status == 101:
            self.fail(Http1Error("the server switched protocols (101) on a plain request"))
            return
        if 100 <= status < 200:  # interim (100, 103): the answer follows
            response.headers.clear()
            self._interim = True
            return
        response.status = status
        response.content_length = _content_length(response.headers)
        self._until_close = response.content_length is None and not _chunked(response.headers)
        head, self._head = self._head, None
        response.last_data = self.loop.time()  # an idle deadline counts from the head
        if not head.done():
            head.set_result(response)
        if self._no_body:  # HEAD: llhttp would wait for the body the headers describe
            response.finish()
        self._progress()

    def on_body(self, body: bytes) -> None:
        self._since_body = 0
        if self.response is not None and not self._no_body:
            self.response.feed(body)
            self._progress()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.response is not None:
            self.reusable = self._parser.should_keep_alive() and not self._no_body
            self.response.finish()
            self._progress()

    # the pool's side

    def begin(self, head: bytes, body: bytes, *, no_body: bool) -> asyncio.Future[Http1Response]:
        assert self.transport is not None
        self.response = Http1Response(self)
        self._head = self.loop.create_future()
        self._since_body, self._received, self._no_body = 0, False, no_body
        self._until_close = self._interim = False
        self.reusable = False
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self._head

    def end(self) -> None:
        """The exchange is over (its body read, or given up)."""
        self.response = None
        self._head = None
        self.on_progress = None

    def fail(self, error: BaseException) -> None:
        if self._head is not None and not self._head.done():
            if self.on_progress is None:
                self._head.set_exception(error)
            else:  # nobody awaits it (a QuickExchange): no "exception never retrieved"
                self._head.cancel()
        if self.response is not None:
            self.response.fail(error)
        self.reusable = False
        self.abort()
        self._progress()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _chunked(headers: Headers) -> bool:
    return any(
        name.lower() == "transfer-encoding" and "chunked" in value.lower()
        for name, value in headers
    )


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value) if value.isdigit() else None
    return None


class Http1Pool:
    """Keep-alive connections to the server of ``url`` (its path is a prefix of every target);
    at most ``limit`` exchanges at once (more wait for one to end)."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext | None,
        *,
        limit: int = 100,
        connect_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"server URL must be http(s)://host[:port][/prefix]: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # Host: the name and port only (never a URL's user:password@)
        self._authority = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            self._authority += f":{parts.port}"
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._idle: list[_Connection] = []
        self._read_buffer = memoryview(bytearray(READ_BUFFER))
        self.slots = Slots(limit)
        self._connect_timeout = connect_timeout
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the first request (a pool serves one loop)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes = b"",
        timeout: float | None = None,
        *,
        idle: bool = False,
    ) -> Exchange:
        """The response, its body not yet read, as ``async with``; ``timeout`` bounds the
        whole exchange, body included (``TimeoutError``), or with ``idle`` the wait for the
        head and then each silence of the body (httpx's read timeout)."""
        head = self._head(method, target, headers, body)
        return Exchange(self, method, head, body, timeout, idle=idle)

    def begin_now(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        timeout: float,
        watch: Callable[[], None],
    ) -> QuickExchange | None:
        """The request written now, without a task, when a slot and an idle connection are
        free (None otherwise: make it with ``request``); ``watch`` is called at each step of
        the answer, in the connection's callbacks (``QuickExchange``)."""
        if not self.ready_now:
            return None
        head = self._head(method, target, headers, body)
        if not self.slots.try_take():
            return None
        connection = self._idle_connection()
        if connection is None:
            self.slots.release()
            return None
        exchange = QuickExchange(self, connection, timeout)
        connection.on_progress = watch
        connection.begin(head, body, no_body=method == "HEAD")
        exchange.response = connection.response
        return exchange

    @property
    def ready_now(self) -> bool:
        """Whether ``begin_now`` may find a slot and an idle connection (nothing is built
        for a request that would have to wait)."""
        return bool(self._idle) and not self.slots.locked()

    def _head(self, method: str, target: str, headers: Headers, body: bytes) -> bytes:
        for name, _ in headers:
            if name.lower() in CLIENT_HEADERS:
                raise InvalidRequest(f"HTTP header {name} is the client's own to write")
        if body or method in ("POST", "PUT", "PATCH"):
            headers = [*headers, ("Content-Length", str(len(body)))]
        return encode_head(method, self._prefix + target, self._authority, headers)

    def _idle_connection(self) -> _Connection | None:
        loop = self.loop
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and loop.time() - connection.idle_since < IDLE_SECONDS:
                connection.reused = True
                return connection
            connection.abort()
        return None

    async def connection(self, within: float | None = None) -> _Connection:
        """An idle connection, or a new one made within ``within`` seconds (and the pool's
        connect timeout): ``TimeoutError`` naming the server otherwise."""
        loop = self.loop
        idle = self._idle_connection()
        if idle is not None:
            return idle
        if self._closed:
            raise Http1Error("the client is closed")
        seconds = self._connect_timeout if within is None else min(self._connect_timeout, within)
        seconds = max(seconds, 0.0)
        try:  # not wait_for: on 3.11 it can swallow a cancellation that comes as it connects
            async with asyncio.timeout(seconds):
                _, connection = await loop.create_connection(
                    partial(_Connection, self._read_buffer), self._host, self._port, ssl=self._ssl
                )
        except TimeoutError:
            message = f"connecting to {self._authority} took over {seconds:g}s"
            raise ConnectTimeout(message) from None
        return connection

    def give_back(self, connection: _Connection, *, whole: bool) -> None:
        connection.end()
        if whole and connection.reusable and not connection.lost and not self._closed:
            connection.resume_reading()  # paused for a body its caller left unread
            connection.idle_since = connection.loop.time()
            self._idle.append(connection)
        else:
            connection.abort()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()


class Exchange:
    """One request and its response (``async with``): the connection goes back to the pool
    when the body was read whole, and is closed otherwise. One timer is the deadline: of the
    whole exchange, or (``idle``) of the head, then of each silence in the body."""

    __slots__ = (
        "_body",
        "_connection",
        "_deadline",
        "_expired",
        "_head",
        "_idle",
        "_method",
        "_pool",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        pool: Http1Pool,
        method: str,
        head: bytes,
        body: bytes,
        timeout: float | None,
        *,
        idle: bool = False,
    ) -> None:
        self._pool, self._method, self._head, self._body = pool, method, head, body
        self._timeout, self._idle = timeout, idle
        self._connection: _Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._expired = False

    async def __aenter__(self) -> Http1Response:
        loop = self._pool.loop
        if self._timeout is not None:
            self._deadline = loop.time() + self._timeout
            self._timer = loop.call_at(self._deadline, self._expire)
        acquired = False
        try:
            await self._acquire_slot()
            acquired = True
            return await self._send()
        except BaseException:
            self._release(whole=False, acquired=acquired)
            raise

    async def _acquire_slot(self) -> None:
        """A slot of the pool; waiting for one counts against the deadline."""
        slots = self._pool.slots
        if self._deadline is None or not slots.locked():
            await slots.acquire()
            return
        try:
            async with asyncio.timeout_at(self._deadline):
                await slots.acquire()
        except TimeoutError:
            raise self._timed_out() from None

    def _within(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._pool.loop.time()

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"the server did not answer within {self._timeout:g}s")

    def _expire(self) -> None:
        """The deadline: whatever is awaited (the head, the body) fails with TimeoutError.
        With ``idle``, a body that got bytes within the timeout gets the timeout again."""
        self._timer = None
        connection = self._connection
        response = connection.response if connection is not None else None
        if self._idle and response is not None and response.status and self._timeout:
            again = response.last_data + self._timeout
            if again > self._pool.loop.time():
                self._timer = self._pool.loop.call_at(again, self._expire)
                return
        self._expired = True
        if connection is not None:
            connection.fail(self._timed_out())

    async def _send(self) -> Http1Response:
        for attempt in (1, 2):
            self._connection = await self._pool.connection(self._within())
            if self._expired:  # while connecting
                raise self._timed_out()
            head = self._connection.begin(self._head, self._body, no_body=self._method == "HEAD")
            try:
                return await head
            except StaleConnection:
                self._give_back(whole=False)
                if attempt == 2 or self._method not in RETRY_SAFE:
                    raise
        raise AssertionError("unreachable")

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        connection = self._connection
        response = connection.response if connection is not None else None
        self._release(whole=kind is None and response is not None and response.complete)

    def _release(self, *, whole: bool, acquired: bool = True) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._give_back(whole=whole)
        if acquired:
            self._pool.slots.release()

    def _give_back(self, *, whole: bool) -> None:
        if self._connection is not None:
            self._pool.give_back(self._connection, whole=whole)
            self._connection = None


class QuickExchange:
    """One request written without a task, on an idle keep-alive connection, its answer
    followed in the connection's callbacks (the pool's ``begin_now``): a proxy can answer a
    small request in the read that completes it, with no task to start and no pass of the
    loop to resume one. ``response`` is read as it comes; ``release`` ends the exchange
    (the connection back to the pool when its answer was read whole). One timer is the
    deadline of the whole exchange, as ``Exchange``'s: it fails the answer with
    ``TimeoutError``."""

    __slots__ = ("_pool", "_timer", "connection", "response", "timeout")

    def __init__(self, pool: Http1Pool, connection: _Connection, timeout: float) -> None:
        self._pool: Http1Pool | None = pool
        self.connection, self.timeout = connection, timeout
        self._timer: asyncio.TimerHandle | None = connection.loop.call_later(timeout, self._expire)
        self.response: Http1Response | None = None  # set as the request is written

    def _expire(self) -> None:
        self._timer = None
        self.connection.fail(TimeoutError(f"the server did not answer within {self.timeout:g}s"))

    @property
    def stale(self) -> bool:
        """Failed on a reused connection before any byte of the answer: safe to try again."""
        response = self.response
        return response is not None and isinstance(response.error, StaleConnection)

    def stop_watching(self) -> None:
        """The answer is followed by awaiting ``response`` from now on (a large body)."""
        self.connection.on_progress = None

    def release(self, *, whole: bool) -> None:
        """End the exchange (again: nothing more happens)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pool.give_back(self.connection, whole=whole)
        pool.slots.release()
