"""The agent's side of a tunnelled request: its own API server, its own credentials.

Bytes are forwarded as they are (no models are built); the caller's ``Authorization`` and
``Impersonate-*`` headers and hop-by-hop headers are dropped, so a request can never carry the
control plane's identity, or anyone else's, into the plane.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import aiohttp

from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.kits.dialing import Connector
from workflowplane.kits.http1 import Http1Pool, Http1Response, Piece, QuickExchange, hold_piece
from workflowplane.protocol.http import HOP_BY_HOP

TOKEN_REREAD_SECONDS = 60.0
USER_AGENT = ("User-Agent", "workflowplane-cluster-agent")
# Not forwarded either: the agent sends every body at once, so a 100 Continue is never awaited.
_DROPPED = HOP_BY_HOP | {"expect"}
T = TypeVar("T")
# A whole answer (v1) whose body is shorter than this is not counted against the process's
# ``AnswerBudget``: the hot path (small GETs) does no bookkeeping. What such answers hold is
# bounded by the request and stream caps (at most one in flight per slot).
SMALL_ANSWER = 256 * 1024
# Told of every request to the API server: method, path, query, code (the HTTP status, or
# error, timeout, cancelled: no answer) and seconds from sending to the status and headers.
Observer = Callable[[str, str, str, str, float], None]
# A request to make upstream: method, path, query, headers, body, deadline in seconds.
Call = tuple[str, str, str, dict[str, list[str]] | None, bytes, float]


def forwardable_headers(headers: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    """Request headers minus credentials, impersonation and hop-by-hop headers."""
    kept: list[tuple[str, str]] = []
    named = False
    for name, values in (headers or {}).items():
        lower = name.lower()
        if lower == "authorization" or lower.startswith("impersonate-") or lower in _DROPPED:
            continue
        named = named or lower == "user-agent"
        kept.extend((name, value) for value in values)
    if not named:
        kept.append(USER_AGENT)
    return kept


def response_headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The answer's headers that travel back. Bytes that are not UTF-8 (read as surrogates)
    become U+FFFD, as Go's agent sends them: a frame cannot carry them, and an answer that
    cannot be encoded would leave its caller waiting for the gateway's timeout."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            grouped.setdefault(_utf8(name), []).append(_utf8(value))
    return grouped


def _utf8(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class UpstreamResult:
    """An answer; ``held``: the body's bytes reserved from an ``AnswerBudget``, which the
    caller gives back once it is done with the body (after its frame is sent)."""

    status: int
    headers: dict[str, list[str]]
    body: bytes
    held: int = 0


class AnswersOverBudget(Exception):
    """An answer that must be held whole does not fit in what the process may hold at once."""

    def __init__(self, size: int, known: bool, held: int, limit: int) -> None:
        what = f"of {size} bytes" if known else f"of at least {size} bytes (no Content-Length)"
        super().__init__(
            f"answer {what} does not fit: {held} of at most {limit} bytes of whole answers held"
        )
        self.size, self.known, self.held, self.limit = size, known, held, limit


class AnswerBudget:
    """The body bytes of whole answers (one frame each: OpenChoreo's v1 gateway) the process
    holds at once, shared by all its connections. An answer reserves its body before or as it
    is read and gives it back once its frame is sent; one that does not fit is refused at
    once (``AnswersOverBudget``), never made to wait: an answer waiting while it holds part
    of the budget could wait for another that waits for it."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int, answer: int, known: bool) -> None:
        """Reserve ``size`` more bytes for an answer of ``answer`` bytes (``known``: its
        Content-Length; else what was read so far), or raise ``AnswersOverBudget``."""
        if self.held + size > self.limit:
            raise AnswersOverBudget(answer, known, self.held, self.limit)
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class Upstream:
    """Two pools of connections to the plane's API server: one for ordinary requests, one for
    streams (watch/follow), so that long-lived streams can never take the connections ordinary
    requests need (a pool that is full makes a request wait, silently). Requests go through the
    lean client of ``kits.http1`` (aiohttp's session cost half the agent's CPU per request);
    WebSockets (exec) through an aiohttp session, made when first needed."""

    def __init__(
        self,
        target: KubeTarget,
        max_body_bytes: int,
        *,
        request_pool: int = 100,
        stream_pool: int = 64,
    ) -> None:
        self._server = target.server.rstrip("/")
        self._max_body = max_body_bytes
        self._files = tempfile.TemporaryDirectory(prefix="wp-agent-")
        self._ssl = self._ssl_context(target)
        self._token = target.token
        self._token_file = target.token_file
        self._token_read_at = 0.0
        self._requests = Http1Pool(self._server, self._ssl, limit=request_pool)
        self._streams = Http1Pool(self._server, self._ssl, limit=stream_pool)
        self._sockets: aiohttp.ClientSession | None = None
        self._observers: list[Observer] = []

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: Path | None,
        context: str | None,
        max_body_bytes: int,
        *,
        request_pool: int = 100,
        stream_pool: int = 64,
    ) -> Upstream:
        if kubeconfig is None:
            target = KubeTarget.from_service_account()
        else:
            target = KubeTarget.from_file(kubeconfig, context)
        return cls(target, max_body_bytes, request_pool=request_pool, stream_pool=stream_pool)

    def _file(self, name: str, data: bytes | None, path: Path | None) -> str | None:
        """The path of ``data`` written to a private file, or ``path`` as it is."""
        if data is None:
            return str(path) if path is not None else None
        written = Path(self._files.name) / name
        written.write_bytes(data)
        written.chmod(0o600)
        return str(written)

    def _ssl_context(self, target: KubeTarget) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=self._file("ca.crt", target.ca_data, target.ca_file)
        )
        if target.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = self._file("tls.crt", target.client_cert_data, target.client_cert_file)
        if cert is not None:
            key = self._file("tls.key", target.client_key_data, target.client_key_file)
            context.load_cert_chain(cert, key)
        return context

    def _auth_header(self) -> list[tuple[str, str]]:
        """Bearer token, re-read from a projected token file so that rotation is picked up."""
        if self._token_file is not None and (
            time.monotonic() - self._token_read_at > TOKEN_REREAD_SECONDS
        ):
            self._token = self._token_file.read_text().strip()
            self._token_read_at = time.monotonic()
        return [("Authorization", f"Bearer {self._token}")] if self._token else []

    def _url(self, path: str, query: str) -> str:
        return f"{self._server}{_target(path, query)}"

    def open(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, list[str]] | None,
        body: bytes = b"",
        timeout: float | None = None,
        *,
        streaming: bool = False,
    ) -> AbstractAsyncContextManager[Http1Response]:
        """The upstream response, its body not yet read (``async with``); ``streaming`` takes a
        connection from the streams' pool. ``InvalidRequest`` (kits.http1) for a request that
        cannot be sent as it is."""
        pool = self._streams if streaming else self._requests
        opened = pool.request(method, *self._sent(path, query, headers), body, timeout)
        return self._timed(opened, method, path, query, _status_code, pool.loop)

    def begin_now(self, call: Call, watch: Callable[[], None]) -> QuickExchange | None:
        """An ordinary request (method, path, query, headers, body, deadline) written now,
        without a task (``Http1Pool.begin_now``), or None when it would have to wait for a
        slot or a connection."""
        if not self._requests.ready_now:
            return None
        method, path, query, headers, body, timeout = call
        sent = self._sent(path, query, headers)
        return self._requests.begin_now(method, *sent, body, timeout, watch)

    def _sent(
        self, path: str, query: str, headers: dict[str, list[str]] | None
    ) -> tuple[str, list[tuple[str, str]]]:
        """The request target and headers as the API server gets them (ours, not the
        caller's credentials)."""
        return _target(path, query), forwardable_headers(headers) + self._auth_header()

    def observed(self, call: tuple[str, str, str], code: str, seconds: float) -> None:
        """Tell the observers of a request made with ``begin_now`` (a pass later: the
        answer goes first)."""
        if self._observers:
            self._requests.loop.call_soon(_tell, self._observers, call, code, seconds)

    def websocket(
        self, path: str, query: str, protocols: tuple[str, ...]
    ) -> AbstractAsyncContextManager[aiohttp.ClientWebSocketResponse]:
        """A WebSocket to the API server with the agent's credentials (exec, attach)."""
        if self._sockets is None:
            self._sockets = aiohttp.ClientSession(
                connector=Connector(ssl=self._ssl),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        url = self._url(path, query)
        opened = self._sockets.ws_connect(url, headers=self._auth_header(), protocols=protocols)
        return self._timed(opened, "GET", path, query, _upgraded, asyncio.get_running_loop())

    def _timed(
        self,
        opened: AbstractAsyncContextManager[T],
        method: str,
        path: str,
        query: str,
        code_of: Callable[[T], str],
        loop: asyncio.AbstractEventLoop,
    ) -> AbstractAsyncContextManager[T]:
        if not self._observers:
            return opened
        return _Timed(opened, (method, path, query), code_of, self._observers, loop)

    async def request(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, list[str]] | None,
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - a per-request deadline
        max_body: int | None = None,
        answers: AnswerBudget | None = None,
        *,
        streaming: bool = False,
    ) -> UpstreamResult:
        """The whole answer; ResponseTooLarge as soon as it is known to exceed ``max_body``.
        With ``answers``, a body of ``SMALL_ANSWER`` bytes or more is reserved from it as it
        is read (``AnswersOverBudget`` when it does not fit); the result's ``held`` is then
        the caller's to give back."""
        limit = self._max_body if max_body is None else max_body
        opened = self.open(method, path, query, headers, body, timeout, streaming=streaming)
        held = 0
        try:
            async with opened as response:
                content, held = await read_held(response, limit, answers)
                status, kept = response.status, response_headers(response.headers)
        except BaseException:
            if held and answers is not None:
                answers.give(held)
            raise
        return UpstreamResult(status, kept, content, held)

    async def stream(
        self, method: str, path: str, query: str, headers: dict[str, list[str]] | None
    ) -> AsyncGenerator[UpstreamResult | bytes, None]:
        """First the status and headers (empty body), then the body's bytes as they come."""
        async with self.open(method, path, query, headers, streaming=True) as response:
            yield UpstreamResult(response.status, response_headers(response.headers), b"")
            async for chunk in response.iter_any():
                yield chunk

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` of every request to the API server from now on (the agent's
        metrics). No aiohttp TraceConfig: its signals cost a tenth of a request's CPU."""
        self._observers.append(observer)

    async def close(self) -> None:
        await self._requests.close()
        await self._streams.close()
        if self._sockets is not None:
            await self._sockets.close()
        self._files.cleanup()


def _target(path: str, query: str) -> str:
    """The request target: a ``?`` or ``#`` in the path is part of it (OpenChoreo's gateway
    sends the decoded path, so a caller's ``%3F`` arrives as ``?``), never the start of a
    query or a fragment, which would take the request past the stream caps and the path's
    checks."""
    if "?" in path or "#" in path:
        path = path.replace("?", "%3F").replace("#", "%23")
    return f"/{path.lstrip('/')}" + (f"?{query}" if query else "")


def _tell(observers: list[Observer], call: tuple[str, str, str], code: str, seconds: float) -> None:
    for observer in observers:
        observer(*call, code, seconds)


def _status_code(response: Http1Response) -> str:
    return str(response.status)


def _upgraded(_: aiohttp.ClientWebSocketResponse) -> str:
    return "101"


def upstream_failure(exc: BaseException, seconds: float) -> tuple[int, str]:
    """The status and message of a request sent to the API server that got no answer: 504
    past its deadline of ``seconds``, else 502 naming the error."""
    if isinstance(exc, TimeoutError):
        return 504, f"upstream did not answer within {seconds:g}s"
    return 502, f"backend request failed: {exc!r}"


def failure_code(exc: BaseException) -> str:
    """An observer's code for a request that got no answer."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "timeout" if isinstance(exc, TimeoutError) else "error"


class _Timed(Generic[T]):
    """A request timed from sending to its status and headers, told to the observers."""

    __slots__ = ("_call", "_code_of", "_loop", "_observers", "_opened")

    def __init__(
        self,
        opened: AbstractAsyncContextManager[T],
        call: tuple[str, str, str],
        code_of: Callable[[T], str],
        observers: list[Observer],
        loop: asyncio.AbstractEventLoop,  # passed in: looking it up is a getpid call on 3.11
    ) -> None:
        self._opened, self._call, self._code_of = opened, call, code_of
        self._observers, self._loop = observers, loop

    def _tell(self, code: str, seconds: float) -> None:
        _tell(self._observers, self._call, code, seconds)

    async def __aenter__(self) -> T:
        started = time.perf_counter()
        try:
            answer = await self._opened.__aenter__()
        except BaseException as exc:
            self._tell(failure_code(exc), time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started  # told once the answer is on its way:
        self._loop.call_soon(self._tell, self._code_of(answer), seconds)
        return answer

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        return await self._opened.__aexit__(kind, exc, tb)


async def read_bounded(response: Http1Response, limit: int) -> bytes:
    """The whole body (``read(n)`` would return only what has arrived so far), bounded.

    A Content-Length over the bound refuses at once, without reading anything. Short pieces
    (a server's tiny chunks, one per read) are joined as they come (``hold_piece``), so what
    is held stays about ``limit``, not ~25 bytes per byte.
    """
    body, _ = await read_held(response, limit, None)
    return body


async def read_held(
    response: Http1Response, limit: int, answers: AnswerBudget | None
) -> tuple[bytes, int]:
    """``read_bounded``, and with ``answers`` a body of ``SMALL_ANSWER`` bytes or more
    reserved from it: its Content-Length before anything is read, else what has been read
    as it comes. The body and the bytes reserved (the caller's to give back); on any failure
    (too large, over the budget, the upstream's error, a cancellation) nothing stays
    reserved."""
    length = response.content_length
    held = 0
    if length is not None and not response.complete:  # HEAD, 304: no body
        if length > limit:
            raise ResponseTooLarge(length, limit)
        if length >= SMALL_ANSWER and answers is not None:
            answers.take(length, length, True)
            held = length
    chunks: list[Piece] = []
    size = 0
    try:
        async for chunk in response.iter_any():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(None, limit)
            if size > held and size >= SMALL_ANSWER and answers is not None:
                answers.take(size - held, size, False)
                held = size
            hold_piece(chunks, chunk)
        return b"".join(chunks), held
    except BaseException:
        if held and answers is not None:
            answers.give(held)
        raise


class ResponseTooLarge(Exception):
    """The plane's answer does not fit in one frame."""

    def __init__(self, size: int | None, limit: int) -> None:
        known = f" of {size} bytes" if size is not None else ""
        super().__init__(f"response body{known} is larger than {limit} bytes")
        self.limit = limit
