"""The internal listener's Kubernetes proxy: a request for one CR, through one of its agents.

Whatever the agent answers, the caller gets a well-formed HTTP answer at once: an invalid
status code or an answer over the frame limit becomes a 502 that says so. Streams
(watch/follow) are capped per agent connection and per CR (429 beyond), so ordinary requests
always have room, and each stream's buffer is bounded (a caller that falls behind is cut off).

How an answer travels depends on the connection (docs/streaming.md): on ``TUNNEL_V2`` large
answers come in chunks and are relayed as they come, and watch/follow stream; on v1
(OpenChoreo's agent) every answer is one frame, so watch/follow are degraded to a bounded
plain request (``X-Workflowplane-Degraded: v1-agent``) instead of a stream the agent would
answer only at its end. Upgrades (exec, attach) go to ``on_upgrade`` (``exec_proxy.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlencode

import msgspec
from aiohttp import web

from workflowplane.api import cr_key_of
from workflowplane.gateway.answers import REQUEST_ID, VERB
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.frames import MalformedAnswer, ResponseTooLarge
from workflowplane.gateway.metrics import GatewayMetrics, MetricHandles
from workflowplane.gateway.streams import Body, StreamBuffer, StreamEnd, StreamItem
from workflowplane.kits.cut_short import run_until
from workflowplane.kits.http1 import Headers, carries_body
from workflowplane.kits.http1_server import Limits
from workflowplane.kits.tasks import TaskSet
from workflowplane.kits.text import shortened
from workflowplane.protocol import (
    Frame,
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
)
from workflowplane.protocol.http import (
    ALLOWED_METHODS,
    GATEWAY_ERROR_HEADER,
    HOP_BY_HOP,
    UNSENT_HEADER,
    is_caller_credential,
    is_streaming_query,
    kube_true,
    resource_segments,
)
from workflowplane.protocol.verbs import kube_verb

log = logging.getLogger(__name__)
# A request body reaches handlers decoded, so its Content-Encoding no longer applies.
REQUEST_HOP_BY_HOP = HOP_BY_HOP | {"content-encoding"}
PROXY_ROUTE = "/api/proxy/{planeType}/{planeID}/{crNamespace}/{crName}/k8s/{path:.*}"
# Anything else under the proxy prefix: answered as OpenChoreo's gateway answers it.
OTHER_PROXY_ROUTE = "/api/proxy/{rest:.*}"
PROXY_FORMAT = "/api/proxy/{planeType}/{planeID}/{namespace}/{crName}/{target}/{path}"
# Targets OpenChoreo's gateway knows besides k8s (an observability plane's); not carried here.
OTHER_TARGETS = frozenset({"monitoring", "logs"})
RETRY_STREAM_AFTER_SECONDS = 5
# A watch degraded for a v1 agent must end this long before the gateway stops waiting.
WATCH_MARGIN_SECONDS = 5.0
DEGRADED_HEADER = "X-Workflowplane-Degraded"
NO_HEADERS = {"Accept": ["*/*"]}  # what a request without headers travels with
DEGRADED_V1 = "v1-agent"
# At most this much of an agent's error details that JSON cannot carry (their repr, which
# may be several times the frame's metadata) goes into the caller's message.
DETAILS_SHOWN = 4096
# RFC 9110 token (header names); values may not carry CR, LF or NUL (response splitting).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # whole (fullmatch: "$" takes "\n")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# requestIDs: unique per process (its random prefix) and per request (the counter); a uuid4
# per request cost 1.7% of the gateway's CPU under load.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A requestID no other request of any gateway process carries."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER)}"


@dataclass(frozen=True)
class Target:
    """The CR a proxied request is made for, on its plane."""

    plane_type: str
    plane_id: str
    key: str

    @classmethod
    def of(cls, info: Mapping[str, str]) -> Target:
        namespace = None if info["crNamespace"] == "_cluster" else info["crNamespace"]
        return cls(info["planeType"], info["planeID"], cr_key_of(namespace, info["crName"]))


AnyResponse = TypeVar("AnyResponse", bound=web.StreamResponse)
# Serves an upgrade request (exec, attach) for a target and Kubernetes path.
UpgradeHandler = Callable[[web.Request, Target, str], Awaitable[web.StreamResponse]]
# Serves a request no local agent may serve, given the local refusal (forwarding.py).
MissHandler = Callable[[web.Request, Target, web.Response], Awaitable[web.StreamResponse]]


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


def unsent(response: web.Response) -> web.Response:
    """Mark an answer given before the request reached any agent: safe to retry elsewhere."""
    response.headers[UNSENT_HEADER] = "1"
    return response


def raw_query(request: web.Request) -> str:
    """The query exactly as the caller sent it, still percent-encoded (OpenChoreo's gateway
    sends ``r.URL.RawQuery``): the agent appends it as it is, so a decoded ``%26``, ``%23``,
    ``+`` or ``%25`` would change the request, and aiohttp's own raw form is normalised."""
    return request.raw_path.partition("?")[2].partition("#")[0]


def bad_path(raw_path: str) -> bool:
    """``..`` segments (also percent-encoded) and NUL bytes are refused."""
    if "%" not in raw_path and ".." not in raw_path and "\x00" not in raw_path:
        return False  # nothing to decode, no dot-dot: most requests
    decoded = unquote(unquote(raw_path))
    return "\x00" in decoded or any(part == ".." for part in decoded.split("/"))


# What OpenChoreo's gateway refuses on every plane whatever the CR (validator.go's
# blockedPaths): the Secrets of kube-system (the cluster's own tokens and keys), and its
# literal "/apis/v1/serviceaccounts" (no API server serves that path; kept for parity).
_BLOCKED_LITERALS: Final = ("/api/v1/namespaces/kube-system/secrets", "/apis/v1/serviceaccounts")


def blocked_path(path: str) -> bool:
    """A Kubernetes path no caller reaches through the gateway: OpenChoreo's substrings, and
    kube-system's Secrets however spelled (percent-encoded, doubled slashes, the ``/watch/``
    form), which its check lets through."""
    if any(literal in path for literal in _BLOCKED_LITERALS):
        return True
    if "kube-system" not in path and "%" not in path:
        return False
    parsed = resource_segments(path)
    if parsed is None or parsed[0] != ["api", "v1"]:
        return False
    return parsed[1][:3] == ["namespaces", "kube-system", "secrets"]


def _blocked(path: str) -> web.Response:
    return k8s_status(
        403,
        f"access to path is blocked: {shortened(path, 256)} (kube-system's Secrets are not "
        "reachable through the gateway, as in OpenChoreo's)",
        "Forbidden",
    )


def forward_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> dict[str, list[str]]:
    """The caller's headers that travel: no hop-by-hop ones, and never the caller's identity
    (``Authorization``, ``Impersonate-*``), whatever the agent would do with them. Never
    none: OpenChoreo's agent hands the map to Go's HTTP client, which refuses a nil one
    ("http: nil Request.Header"), and an empty map is left out of the frame."""
    kept: dict[str, list[str]] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name.lower() not in REQUEST_HOP_BY_HOP and not is_caller_credential(name):
            if not (value.isascii() or _utf8(value)):
                raise NotUtf8Header(name)
            kept.setdefault(name, []).append(value)
    return kept or dict(NO_HEADERS)


class NotUtf8Header(ValueError):
    """A request header a frame cannot carry: its bytes are not UTF-8 text."""

    def __init__(self, name: str) -> None:
        super().__init__(f"request header {name} is not UTF-8 text; a frame cannot carry it")


def _utf8(text: str) -> bool:
    """Whether ``text`` (read with surrogateescape) was UTF-8 as sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def degraded_query(query: Any, request_timeout: float) -> str:
    """watch/follow as one bounded plain request (for a v1 agent, which answers only once):
    a watch ends by ``timeoutSeconds`` within the gateway's wait, ``follow`` is dropped."""
    bound = max(1, int(request_timeout - WATCH_MARGIN_SECONDS))
    items = [(k, v) for k, v in query.items() if k not in ("timeoutSeconds", "follow")]
    if kube_true(query.get("watch")):
        try:
            asked = int(query.get("timeoutSeconds", ""))
        except ValueError:
            asked = 0
        items.append(("timeoutSeconds", str(min(asked, bound) if asked > 0 else bound)))
    elif "timeoutSeconds" in query:
        items.append(("timeoutSeconds", query["timeoutSeconds"]))
    return urlencode(items)


# What an agent's answer may carry in headers (the Kubernetes API server sends about ten).
# Names: as many as the cache of relayed names below holds.
# Header lines (values): four per name on average (Set-Cookie, Warning, Vary repeat); a
# pod's or service's own server answers through the API server's proxy too. Bytes (names
# and values, each name once per value): what a request's head may take
# (``kits.http1_server.Limits``). Beyond them the answer is a 502 naming the limit: 60,000
# headers in a frame's 1 MiB of metadata took ~70 ms of the shared event loop to convert,
# and would all have gone to the caller.
ANSWER_HEADER_NAMES: Final = 256
ANSWER_HEADER_LINES: Final = 1024
ANSWER_HEADER_BYTES: Final = Limits.head_bytes


class AnswerHeadersRefused(ValueError):
    """An agent's answer carries more headers than the gateway relays."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"the agent's answer has {limit}, over the gateway's limit for an answer")


def reply_headers(headers: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    """The agent's headers the caller gets: no hop-by-hop ones, none that would break the
    response (a name that is not a token, a value with CR, LF or NUL).

    Headers over the answer's limits raise :class:`AnswerHeadersRefused`, counted as they
    are read: the names at once, each value's line and bytes before anything else is done
    with it, so a flood costs no more than an answer at the limits. Within them (every real
    answer) the counting costs a few additions per header."""
    if not headers:
        return []
    if len(headers) > ANSWER_HEADER_NAMES:
        raise AnswerHeadersRefused(f"more than {ANSWER_HEADER_NAMES} header names")
    kept: list[tuple[str, str]] = []
    lines = size = 0
    for name, values in headers.items():
        for value in values:
            lines += 1
            size += len(name) + len(value)
            if lines > ANSWER_HEADER_LINES or size > ANSWER_HEADER_BYTES:
                raise AnswerHeadersRefused(_over(lines))
            if _relayed_name(name) and not _BAD_VALUE.search(value):
                kept.append((name, value))
    return kept


def _over(lines: int) -> str:
    if lines > ANSWER_HEADER_LINES:
        return f"more than {ANSWER_HEADER_LINES} header lines"
    return f"more than {ANSWER_HEADER_BYTES} bytes of headers"


def header_refusal(headers: dict[str, list[str]] | None) -> web.Response | None:
    """The 502 for an answer whose headers are over the limits, else None: for an answer's
    head that is checked before anything of it reaches the caller (a chunked answer's, a
    stream's), whose headers are converted later."""
    try:
        reply_headers(headers)
    except AnswerHeadersRefused as exc:
        return _headers_refused(exc)
    return None


def _headers_refused(exc: AnswerHeadersRefused) -> web.Response:
    return k8s_status(502, str(exc), "ResponseHeadersTooLarge")


_RELAYED_NAMES: dict[str, bool] = {}  # an API server sends the same few names every time
RELAYED_NAMES_KEPT = ANSWER_HEADER_NAMES


def _relayed_name(name: str) -> bool:
    known = _RELAYED_NAMES.get(name)
    if known is None:
        known = name.lower() not in HOP_BY_HOP and bool(_HEADER_NAME.fullmatch(name))
        if len(_RELAYED_NAMES) < RELAYED_NAMES_KEPT:
            _RELAYED_NAMES[name] = known
    return known


def final_status(code: int) -> bool:
    """A status that can end an HTTP exchange: 1xx are interim (a caller would wait for
    another answer), and anything outside 100-599 breaks the status line."""
    return 200 <= code <= 599


def complete_answer(reply: TunnelResponse) -> bool:
    """A response to a stream init that is the whole answer: it has a body or an error, or
    a status that cannot start a stream (so nothing is ever waited for that never comes)."""
    return bool(reply.body) or reply.error is not None or not final_status(reply.status_code)


def _details(error: TunnelError) -> str:
    """The agent's error details for the caller's message, as JSON. Details JSON cannot
    carry (a v3 agent's msgpack extension value, a map with array keys) are shown as their
    repr instead, so the agent's status and message still reach the caller (never a 500)."""
    if not error.details:
        return ""
    try:
        return f" ({msgspec.json.encode(error.details).decode()})"
    except (TypeError, ValueError, RecursionError):
        return f" (not JSON: {_bounded_repr(error.details)})"


def _bounded_repr(details: dict[str, Any]) -> str:
    """``details`` as Python shows it, at most DETAILS_SHOWN characters."""
    try:
        return shortened(repr(details), DETAILS_SHOWN)
    except RecursionError:  # nested deeper than repr's stack
        return "nested too deeply to show"


class KubeProxy:
    """``/api/proxy/.../k8s/...``: forwards a Kubernetes API request to an agent of the plane
    authorized for the CR in the path (the connection manager picks it), and the answer back;
    watch/follow requests stream (or are degraded for a v1 agent). Owns the request/response
    correlation, the stream caps and buffers and the proxy metrics; decides nothing about
    authorization. Upgrades go to ``on_upgrade`` (wired by the server: exec and attach)."""

    def __init__(
        self, connections: ConnectionManager, config: GatewayConfig, metrics: GatewayMetrics
    ) -> None:
        self._connections = connections
        self._config = config
        self._metrics = metrics
        self._handles = MetricHandles(metrics)
        self.on_upgrade: UpgradeHandler | None = None
        self.on_miss: MissHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A stream's isClose after its init's send was cut at the deadline (it may have gone
        # whole into the transport's buffer): sent when the connection takes it, while the
        # caller has its 502 already. Each ends with its send (or the connection).
        self._later = TaskSet("kube-proxy")

    async def close(self) -> None:
        """End what it still sends in the background (the isClose of streams whose init's
        send was cut): the connections are closed by now, so each ends at once."""
        await self._later.close()

    def _first_loop(self) -> asyncio.AbstractEventLoop:
        """Looked up once: on Python 3.11 ``get_running_loop`` makes a ``getpid`` call."""
        self._loop = asyncio.get_running_loop()
        return self._loop

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", PROXY_ROUTE, self.handle),
            web.route("*", OTHER_PROXY_ROUTE, self.not_k8s),
        ]

    async def not_k8s(self, request: web.Request) -> web.Response:
        """A proxy URL without the ``k8s`` target in its place: 400 when it has too few parts
        for one, 403 for a target OpenChoreo's gateway does not know either, and for the
        observability targets it passes on, the 404 every agent gives them ("unknown
        target"), said here: a workflow plane's agent serves Kubernetes alone."""
        parts = request.match_info["rest"].split("/")
        if len(parts) < 6 or not all(parts[:4]):  # a part the k8s route needs is empty
            return unsent(
                k8s_status(400, f"invalid proxy URL format: {PROXY_FORMAT}", "BadRequest")
            )
        target = shortened(parts[4], 64)
        if parts[4] not in OTHER_TARGETS:
            return unsent(k8s_status(403, f"target not allowed: {target!r}", "Forbidden"))
        message = f"unknown target: {target} (a workflow plane's agents serve k8s only)"
        return unsent(k8s_status(404, message, "NotFound"))

    def refusal(self, target: Target) -> web.Response | None:
        """502 when no agent of the plane is connected, 403 when none may serve the CR."""
        if self._connections.serves(target.plane_type, target.plane_id, target.key):
            return None
        plane = f"{target.plane_type}/{target.plane_id}"
        if not self._connections.connected(target.plane_type, target.plane_id):
            return self.count(
                unsent(k8s_status(502, f"no agent connected for {plane}", "ServiceUnavailable"))
            )
        return self.count(
            unsent(
                k8s_status(
                    403,
                    f"no agent connection of {plane} is authorized for {target.key}",
                    "Forbidden",
                )
            )
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ALLOWED_METHODS:
            return unsent(
                k8s_status(405, f"method {request.method} not allowed", "MethodNotAllowed")
            )
        if bad_path(request.raw_path):
            return unsent(
                k8s_status(400, "path traversal ('..' or NUL) is not allowed", "BadRequest")
            )
        path = "/" + request.match_info["path"]
        if blocked_path(path):
            return unsent(_blocked(path))
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            # said before any agent is looked for, as OpenChoreo's gateway says it
            message = f"request body of {request.content_length} bytes is over {limit} bytes"
            return unsent(_closing(k8s_status(413, message, "RequestEntityTooLarge")))
        target = Target.of(request.match_info)
        refused = self.refusal(target)
        if refused is not None:
            if self.on_miss is None:
                return refused
            body = await self.read_body(request)  # bounded here; the miss handler's read of
            if isinstance(body, web.Response):  # it then takes what was read (aiohttp's)
                return self.count(body)
            return await self.on_miss(request, target, refused)
        if request.headers.get("Upgrade"):
            if self.on_upgrade is None:
                return self.count(k8s_status(501, "upgrades are not served", "NotImplemented"))
            return await self.on_upgrade(request, target, path)
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return self.count(body)
        # The query as the caller sent it, still percent-encoded (as OpenChoreo's gateway
        # sends r.URL.RawQuery): decoded, "%26", "%23" or "+" in a value would change it.
        query = raw_query(request)
        if is_streaming_query(query, path):  # the string: no MultiDict built
            return await self._stream(request, target, path, query)
        sending = self.plain_request(target, request.method, path, query, request.headers, body)
        if isinstance(sending, web.Response):
            return self.count(sending)
        conn, frame = sending
        request[REQUEST_ID] = frame.request_id
        request[VERB] = verb = kube_verb(frame.method, path, frame.query or "")
        return self.count(await self._exchange(request, conn, frame, verb))

    async def read_body(self, request: web.Request) -> bytes | web.Response:
        """The request's body, or a 408 when it did not arrive within the request timeout
        (a caller trickling it would hold its handler without end: aiohttp's server has no
        deadline for a body; the lean server has its own, ``Limits.body_seconds``). A body
        already whole (every request without one, most with one) is taken without a timer.
        The 408 ends the connection: aiohttp reads (and drops) what comes for at most its
        lingering time (10 s) so the caller can read the answer, then closes it."""
        if request.content.is_eof():
            return await request.read()
        seconds = self._config.request_timeout_seconds
        try:
            async with asyncio.timeout(seconds):  # aiohttp's handler task: never run eagerly
                return await request.read()
        except TimeoutError:
            message = (
                f"the request body did not arrive within {seconds:g}s "
                "(the gateway's request timeout, --request-timeout)"
            )
            return _closing(k8s_status(408, message, "Timeout"))

    def plain_request(
        self,
        target: Target,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
    ) -> tuple[AgentConnection, TunnelRequest] | web.Response:
        """The connection and frame a plain request goes with, or the 502 (Unsent) when its
        CR's last authorized connection went while the body was read."""
        conn = self._connections.pick(target.plane_type, target.plane_id, target.key)
        if conn is None:
            return unsent(k8s_status(502, f"no agent connection for {target.key}", "Unavailable"))
        try:
            sent_headers = forward_headers(headers)
        except NotUtf8Header as exc:
            return k8s_status(400, str(exc), "BadRequest")
        frame = TunnelRequest(
            request_id=new_request_id(),
            method=method,
            path=path,
            query=query,
            headers=sent_headers,
            body=body,
        )
        return conn, frame

    def count(self, response: AnyResponse) -> AnyResponse:
        """Where every answer passes; it is counted and logged by ``answers.AnswerLog`` when
        its status goes out (streams included)."""
        return response

    def to_response(self, reply: TunnelResponse) -> web.Response:
        """The agent's answer as the caller's; one that HTTP cannot carry becomes a 502."""
        return _as_response(self.plain_answer(reply))

    def plain_answer(self, reply: TunnelResponse) -> tuple[int, Headers, bytes] | web.Response:
        """The agent's answer's status, headers and body, or the gateway's error answer for
        one that HTTP cannot carry (a 502) or that failed at the agent."""
        error = reply.error if isinstance(reply.error, TunnelError) and not reply.body else None
        status = reply.status_code or (error.code if error else 0) or 502
        if not final_status(status):
            self._metrics.invalid_status.inc()
            return k8s_status(
                502,
                f"the agent answered with status code {status}, "
                "which is not a final HTTP status (200-599)",
                "BadGateway",
            )
        if error:
            return k8s_status(status, f"agent: {error.message}{_details(error)}")
        try:
            headers = reply_headers(reply.headers)
        except AnswerHeadersRefused as exc:
            return _headers_refused(exc)
        return status, headers, reply.body or b""

    async def ask(
        self, conn: AgentConnection, frame: TunnelRequest, verb: str = ""
    ) -> TunnelResponse | web.Response:
        """Send one request and wait for its answer's head: the agent's response, or the
        gateway's own error answer (timeout, too large, connection lost). One timer per
        request (no ``wait_for`` task machinery); ``verb`` when the caller knows it.

        The timeout covers the send too (:func:`send_within`): a send still waiting for the
        connection (another request's large frame draining to a slow agent) at the deadline
        ends there, the frame unsent, and the caller has the same 502 as for no answer.

        A chunked answer's body buffer (registered as its head arrives) is the caller's only
        with the head returned: on an error answer, or when cancelled (the caller went away
        in the pass its head arrived), it is dropped here and the agent told to stop."""
        rid = frame.request_id
        reply: TunnelResponse | None = None
        loop = self._loop or self._first_loop()
        future: asyncio.Future[TunnelResponse] = loop.create_future()
        conn.pending[rid] = future
        started = time.perf_counter()
        timeout = self._config.request_timeout_seconds
        timer = loop.call_later(timeout, _expire, future)
        in_flight = self._handles.in_flight(conn.plane_id)
        in_flight.inc()
        try:
            await send_within(conn, frame, future)
            reply = await future  # at once when the send ended with it: its outcome
        except TimeoutError:
            return k8s_status(502, f"agent did not answer within {timeout:.0f}s", "Timeout")
        except MalformedAnswer as exc:
            return k8s_status(502, str(exc), "BadGateway")
        except ResponseTooLarge as exc:
            return k8s_status(502, str(exc), "ResponseTooLarge")
        except ConnectionError as exc:
            return k8s_status(502, f"agent connection lost: {exc}", "ServiceUnavailable")
        finally:
            timer.cancel()
            conn.pending.pop(rid, None)
            in_flight.dec()
            if reply is None and conn.bodies.pop(rid, None) is not None:
                await close_stream(conn, rid)
        elapsed = time.perf_counter() - started
        loop.call_soon(self._observe_latency, conn.plane_id, frame, verb, elapsed)
        return reply

    def _observe_latency(
        self, plane_id: str, frame: TunnelRequest, verb: str, seconds: float
    ) -> None:
        """Observed after the answer is on its way (the caller waits for none of this)."""
        verb = verb or kube_verb(frame.method, frame.path, frame.query or "")
        self._handles.latency(plane_id, verb).observe(seconds)

    async def _exchange(
        self, request: web.Request, conn: AgentConnection, frame: TunnelRequest, verb: str
    ) -> web.StreamResponse:
        reply = await self.ask(conn, frame, verb)
        if isinstance(reply, web.Response):
            return reply
        what = f"a request of {request.path}"
        answer = await self.answer_of(conn, reply, what, method=request.method)
        if not isinstance(answer, StreamBuffer):
            return _as_response(answer)
        response = web.StreamResponse(
            status=reply.status_code, headers=reply_headers(reply.headers)
        )
        problem = await self.relay_body(
            conn, reply.request_id, answer, partial(response.prepare, request), response.write
        )
        if problem is not None:
            _abort(request, f"answer to {request.path}: {problem}")
        else:
            await response.write_eof()
        return response

    async def answer_of(
        self, conn: AgentConnection, reply: TunnelResponse, what: str, *, method: str = ""
    ) -> StreamBuffer | tuple[int, Headers, bytes] | web.Response:
        """How an answer's head goes on: the buffer of its body, for a chunked (v2) answer to
        relay (``what`` names it in that buffer's messages); else the whole answer, any body
        buffer dropped and the agent told to stop (a status that cannot start a body, or one
        that has none: 204, 304, the answer to a HEAD ``method``). Bytes relayed after a
        bodiless head would be read as the caller's next answer (a hostile agent's 204, then
        a chunk ``HTTP/1.1 200 ...``, split the caller's connection)."""
        rid = reply.request_id
        body = conn.bodies.get(rid)
        status = reply.status_code
        if (
            reply.chunked
            and body is not None
            and final_status(status)
            and carries_body(method, status)
        ):
            refused = header_refusal(reply.headers)
            if refused is None:
                body.key = what
                return body
            conn.bodies.pop(rid, None)
            await close_stream(conn, rid)
            return refused
        if body is not None:
            conn.bodies.pop(rid, None)
            await close_stream(conn, rid)
        return self.plain_answer(reply)

    async def relay_body(
        self,
        conn: AgentConnection,
        rid: str,
        body: StreamBuffer,
        start: Callable[[], Awaitable[object]],
        write: Callable[[Body], Awaitable[None]],
    ) -> str | None:
        """Start the caller's answer, then relay a chunked answer's body as it comes; None
        when the agent ended it cleanly, else what went wrong: a failure after the head can
        only cut the caller off (the status is sent), so the body must not look complete.
        Either way the body's buffer is dropped; when not whole, the agent is told to stop."""
        problem: str | None = "the caller went away"
        try:
            await start()
            problem = await self._pump_body(body, write)
        finally:
            conn.bodies.pop(rid, None)
            if problem is not None:
                await close_stream(conn, rid)
        return problem

    async def _pump_body(
        self, body: StreamBuffer, write: Callable[[Body], Awaitable[None]]
    ) -> str | None:
        """Write the chunks; None when the agent ended the body cleanly, else what went
        wrong. Between two chunks the agent gets the request timeout, and it must keep a
        minimum pace throughout (:class:`Pace`): a chunk just within each timeout kept a
        caller forever."""
        idle = self._config.request_timeout_seconds
        pace = Pace(self._loop or self._first_loop(), body, idle)
        try:
            while not isinstance(item := await _next(body, idle), StreamEnd):
                if isinstance(item, Body):
                    await write(item)
        except TimeoutError:
            return f"no chunk for {idle:.0f}s"
        finally:
            pace.stop()
        if pace.verdict is not None:
            return pace.verdict
        if item.problem is not None:
            return f"failed mid-way: {item.problem}"
        return None

    def stream_slot(self, target: Target) -> AgentConnection | web.Response:
        """A connection with room for one more stream of the CR, or the 429 saying which
        cap was reached."""
        plane_type, plane_id, key = target.plane_type, target.plane_id, target.key
        per_cr = self._config.max_streams_per_cr
        if self._connections.streams_of(plane_type, plane_id, key) >= per_cr:
            self._metrics.streams_refused.labels("cr").inc()
            return _too_many(
                f"{key} already has {per_cr} streams (watch/follow) open through "
                f"{plane_type}/{plane_id}: the gateway's cap per CR (--max-streams-per-cr)"
            )
        per_agent = self._config.max_streams_per_agent
        conn = self._connections.pick(plane_type, plane_id, key, stream_cap=per_agent)
        if conn is None:
            self._metrics.streams_refused.labels("agent").inc()
            return _too_many(
                f"every agent connection of {plane_type}/{plane_id} authorized for {key} "
                f"already carries {per_agent} streams (watch/follow): the gateway's cap per "
                "agent connection (--max-streams-per-agent); ordinary requests still go through"
            )
        return conn

    def open_stream(
        self, request: web.Request, conn: AgentConnection, key: str, *, whole_chunks: bool = False
    ) -> tuple[str, StreamBuffer]:
        """A new stream's requestID and bounded buffer, registered on ``conn`` until
        :meth:`release_stream`."""
        rid = new_request_id()
        request[REQUEST_ID] = rid
        buffer = StreamBuffer(key, self._config.max_stream_buffer_bytes, whole_chunks=whole_chunks)
        buffer.on_overflow = lambda: self._cut_off(request, conn, rid, buffer)
        conn.streams[rid] = buffer
        self._metrics.streams_in_flight.labels(conn.plane_id).inc()
        return rid, buffer

    def release_stream(self, conn: AgentConnection, rid: str) -> None:
        if conn.streams.pop(rid, None) is not None:
            self._metrics.streams_in_flight.labels(conn.plane_id).dec()

    def _stream_frame(
        self,
        request: web.Request,
        rid: str,
        path: str,
        query: str,
        degraded: bool,
        headers: dict[str, list[str]],
    ) -> TunnelRequest | StreamInit:
        if degraded:
            bounded = degraded_query(request.query, self._config.request_timeout_seconds)
            return TunnelRequest(
                request_id=rid, method=request.method, path=path, query=bounded, headers=headers
            )
        return StreamInit(
            request_id=rid,
            method=request.method,
            path=path,
            query=query,
            headers=headers,
            is_upgrade=False,
        )

    async def _stream(
        self, request: web.Request, target: Target, path: str, query: str
    ) -> web.StreamResponse:
        """watch=true / follow=true: status and headers first, then bytes as the agent sends.

        A v1 agent (OpenChoreo's) would take a stream init for a plain request and answer
        only when the watch ends, so it gets a bounded plain request instead; its answer is
        the caller's whole answer. Either way the stream counts against the caps."""
        try:
            headers = forward_headers(request.headers)
        except NotUtf8Header as exc:  # nothing opened, nothing sent
            return self.count(k8s_status(400, str(exc), "BadRequest"))
        slot = self.stream_slot(target)
        if isinstance(slot, web.Response):
            return self.count(slot)
        conn, degraded = slot, not slot.v2
        rid, buffer = self.open_stream(request, conn, target.key)
        loop = self._loop or self._first_loop()
        deadline: asyncio.Future[None] = loop.create_future()  # the head's, the send's too
        timer = loop.call_later(self._config.request_timeout_seconds, deadline.cancel)
        sent = True
        try:
            frame = self._stream_frame(request, rid, path, query, degraded, headers)
            sent = await send_within(conn, frame, deadline)
            if not sent:
                raise TimeoutError
            left = max(0.0, timer.when() - loop.time())
            first = await asyncio.wait_for(buffer.get(), left)
            timer.cancel()
            if not isinstance(first, TunnelResponse):
                problem = first.problem if isinstance(first, StreamEnd) else None
                return self.count(
                    k8s_status(502, problem or "agent sent no stream header", "BadGateway")
                )
            status = first.status_code
            if degraded or complete_answer(first) or not carries_body(request.method, status):
                answer = self.to_response(first)
                if degraded:
                    answer.headers[DEGRADED_HEADER] = DEGRADED_V1
                return self.count(answer)
            refused = header_refusal(first.headers)
            if refused is not None:
                return self.count(refused)
            if first.status_code >= 400:  # the error's body follows as chunks
                return self.count(await self._collect(first, buffer))
            return await self._relay(request, first, buffer)
        except TimeoutError:
            what = "answer" if degraded else "start the stream"
            return self.count(k8s_status(502, f"agent did not {what} in time", "Timeout"))
        except ConnectionError as exc:
            return self.count(k8s_status(502, f"agent connection lost: {exc}", "Unavailable"))
        finally:
            timer.cancel()
            self.release_stream(conn, rid)
            if not degraded:  # OpenChoreo's agent knows no such stream (it would log it)
                if sent:
                    await close_stream(conn, rid)
                else:  # its send waited for the connection past the deadline: so would this
                    self._later.spawn(close_stream(conn, rid), f"close {rid}")

    async def _collect(self, head: TunnelResponse, buffer: StreamBuffer) -> web.Response:
        """An error answer whose body came as chunks, as one answer (bounded in size and time)."""
        parts: list[Body] = []
        size, limit = 0, self._config.max_stream_buffer_bytes
        deadline = self._config.request_timeout_seconds
        async with asyncio.timeout(deadline):
            while not isinstance(item := await buffer.get(), StreamEnd):
                if isinstance(item, Body) and size < limit:
                    parts.append(item[: limit - size])
                    size += len(parts[-1])
        return self.to_response(msgspec.structs.replace(head, body=b"".join(parts)))

    @staticmethod
    async def _relay(
        request: web.Request, first: TunnelResponse, buffer: StreamBuffer
    ) -> web.StreamResponse:
        """The stream's body as it comes; it ends when the agent's stream does (or fails:
        the status is sent already, so the caller sees the body end, and re-watches)."""
        response = web.StreamResponse(
            status=first.status_code, headers=reply_headers(first.headers)
        )
        await response.prepare(request)
        while not isinstance(item := await buffer.get(), StreamEnd):
            if isinstance(item, Body):
                await response.write(item)
        if item.problem:
            log.info("stream %s for %s ended early: %s", request.path, buffer.key, item.problem)
        await response.write_eof()
        return response

    def _cut_off(
        self, request: web.Request, conn: AgentConnection, rid: str, buffer: StreamBuffer
    ) -> None:
        """The caller fell behind the buffer's bound: drop its connection (it may be stuck
        not reading, so nothing can be written to it any more); the handler's cleanup
        then tells the agent to stop the stream."""
        self._metrics.slow_streams.inc()
        log.warning(
            "stream %s of %s through agent %s closed: the caller fell more than %d bytes behind",
            rid,
            buffer.key,
            conn.id,
            buffer.limit,
        )
        if request.transport is not None:
            request.transport.abort()


# The least of a chunked answer's body an agent must deliver in each request timeout.
MIN_BYTES_PER_WINDOW: Final = 64 * 1024


class Pace:
    """A chunked (plain, not watch/follow) answer's minimum pace: from its head on, in every
    window of the request timeout the agent must deliver at least MIN_BYTES_PER_WINDOW of
    its body; a window short of that cuts the answer (``verdict`` says so, and the body's
    buffer ends with it at once, what it held dropped).

    Why a rate and not a total deadline: a total cuts a legitimately large list on a slow
    link (a 60 MiB list at 1 MiB/s takes a minute, whatever the bound is set to), and would
    need a knob tuned to the largest list; a minimum rate lets any answer that progresses go
    on however long it takes, and still ends a trickle (1 byte just within each idle
    timeout) within one window. The bound is far below any real answer: our agent sends 256
    KiB chunks (only the last may be shorter), each within a request timeout or the idle
    rule cuts it anyway, so only a broken or hostile agent is ever judged short; OpenChoreo's
    agent never chunks. Judged on what the agent delivered into the buffer (``received``),
    not on what the caller took: a caller slow to read is the stall guard's and the
    buffer bound's business, not the agent's. One timer per window, nothing per chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop, body: StreamBuffer, window: float) -> None:
        self._loop, self._body, self._window = loop, body, window
        self._mark = 0  # what had arrived when the window began (the head's: none)
        self.verdict: str | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(window, self._judge)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _judge(self) -> None:
        self._timer = None
        body = self._body
        if body.ended:  # whole, failed or overflowed: the agent sends no more of it
            return
        got = body.received - self._mark
        if got >= MIN_BYTES_PER_WINDOW:
            self._mark = body.received
            self._timer = self._loop.call_later(self._window, self._judge)
            return
        self.verdict = (
            f"the agent sent {got} bytes of the body in {self._window:g}s, below the "
            f"gateway's minimum of {MIN_BYTES_PER_WINDOW} bytes per request timeout"
        )
        body.cut(self.verdict)


async def close_stream(conn: AgentConnection, rid: str) -> None:
    """Tell the agent to stop a stream (or a chunked answer) nobody reads any more."""
    if not conn.ws.closed:
        with contextlib.suppress(ConnectionError):
            await conn.send(StreamChunk(request_id=rid, is_close=True))


async def send_within(conn: AgentConnection, frame: Frame, until: asyncio.Future[Any]) -> bool:
    """Send ``frame`` on ``conn`` unless ``until`` (its request's answer, failed by the
    request's timer at the deadline) is done first; whether the send ended on its own (sent,
    or in the transport's buffer), not cut by ``until``. A frame is never sent after it.

    Most sends do not wait (the connection's send lock free, its transport's buffer below
    aiohttp's limit): one step of the send's coroutine, no timer, future or task of their
    own. What a waiting send waits for, and so what a cut does (aiohttp's
    ``WebSocketWriter``, no compression: ``GuardedWebSocket``):

    - the connection's send lock (``AgentConnection.send``): cut there, the frame is never
      written and the lock goes to the next sender as on any cancellation;
    - the transport's drain, after ``send_frame`` wrote the whole frame (header and payload,
      in one synchronous call) to the transport: cut there, the frame leaves whole, later,
      as the agent reads (its answer, if any, arrives late and is dropped). A frame is never
      cut in the middle, so the stream stays whole for every other request.

    The drain's future is aiohttp's one ``_drain_waiter`` of the connection, which a task's
    cancellation would cancel for every sender: ``kits.cut_short`` cuts the send without."""
    if until.done():
        return False
    return await run_until(conn.send(frame), until)


async def _next(body: StreamBuffer, idle: float) -> StreamItem:
    """The next item, within ``idle`` seconds (TimeoutError else). One waiting is taken at
    once: a ``wait_for`` per item cost a task and a pass of the loop each (Python 3.11), so
    the relay of many small chunks fell behind the agent's reads."""
    item = body.get_nowait()
    return item if item is not None else await asyncio.wait_for(body.get(), idle)


def _as_response(answer: tuple[int, Headers, bytes] | web.Response) -> web.Response:
    if isinstance(answer, web.Response):
        return answer
    status, headers, body = answer
    return web.Response(status=status, body=body, headers=headers)


def _expire(future: asyncio.Future[TunnelResponse]) -> None:
    """The request timeout: the answer's wait ends with TimeoutError."""
    if not future.done():
        future.set_exception(TimeoutError())


def _abort(request: web.Request, why: str) -> None:
    log.warning("%s: the caller's connection is closed", why)
    if request.transport is not None:
        request.transport.abort()


def _closing(response: web.Response) -> web.Response:
    """An answer given without reading the body the caller is still sending: the connection
    ends after it (aiohttp reads and drops what comes for its lingering time)."""
    response.force_close()
    return response


def _too_many(message: str) -> web.Response:
    response = unsent(k8s_status(429, message, "TooManyRequests"))
    response.headers["Retry-After"] = str(RETRY_STREAM_AFTER_SECONDS)
    return response
