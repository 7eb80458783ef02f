"""The proxy's plain requests on the lean HTTP server (``kits/http1_server.py``).

A plain proxied request (not a watch or follow, not an upgrade) to a CR that a local agent
connection is authorized for is most of what the internal listener serves; aiohttp's server
machinery around it cost more of the gateway's CPU than the proxying. Such a request is
served here, through the same ``KubeProxy`` steps (the frame, the wait for the answer, a
chunked answer's relay) and counted by the same ``AnswerLog`` and ``InFlight``. Everything
else, and anything this router is not sure about, goes to aiohttp (its routes, its 4xx
answers, forwarding to peer replicas, the drain's 503), unchanged: the router declines.

The router takes a target only when aiohttp would read it the same way: a path without
``%`` (aiohttp decodes one). The query goes on as sent, percent-encoded, on both paths.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any, Final

from aiohttp import web

from workflowplane.gateway.answers import PROXY_PREFIX, Answered, AnswerLog
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.drain import InFlight
from workflowplane.gateway.kube_proxy import (
    KubeProxy,
    Target,
    bad_path,
    blocked_path,
    final_status,
    reply_headers,
)
from workflowplane.gateway.streams import StreamBuffer
from workflowplane.kits.http1 import Headers
from workflowplane.kits.http1_server import Abort, Handler, Request, Responder
from workflowplane.protocol import TunnelResponse
from workflowplane.protocol.http import ALLOWED_METHODS, is_streaming_query
from workflowplane.protocol.verbs import kube_verb

log = logging.getLogger(__name__)
# aiohttp's pattern for PROXY_ROUTE: each {name} is one segment, {path:.*} the rest.
_PROXY_PATH: Final = re.compile(
    r"/api/proxy/(?P<planeType>[^{}/]+)/(?P<planeID>[^{}/]+)/(?P<crNamespace>[^{}/]+)"
    r"/(?P<crName>[^{}/]+)/k8s/(?P<path>.*)"
)
# aiohttp's: upgrades, 100-continue, and request bodies it decompresses before a handler reads
_DECLINED_HEADERS: Final = frozenset({"upgrade", "expect", "content-encoding"})


_Read = tuple[Target, Answered, str]  # the CR, the answer's log facts, the query to send
_UNREAD: Final[Any] = object()
READS_KEPT: Final = 4096  # targets remembered (all forgotten at once when full)
# and their characters: a target may be as long as a request head (64 KiB), and each is kept
# about three times over (the key, the path, the query)
READ_CHARS_KEPT: Final = 1 << 20


def _read_target(method: str, target: str) -> _Read | None:
    """A target as aiohttp's router reads it, or None when the lean path must not take it."""
    if not target.startswith(PROXY_PREFIX) or method not in ALLOWED_METHODS:
        return None
    path, _, query = target.partition("?")
    if "%" in path or "#" in target or not target.isascii():
        return None
    match = _PROXY_PATH.fullmatch(path)
    if match is None or is_streaming_query(query, path) or bad_path(target):
        return None
    info = match.groupdict()
    if blocked_path("/" + info["path"]):
        return None  # aiohttp's path refuses it
    where = Target.of(info)
    namespace, name, path = info["crNamespace"], info["crName"], "/" + info["path"]
    verb = kube_verb(method, path, query)
    return where, Answered(method, path, where.plane_id, namespace, name, verb, None), query


class FastProxy:
    """Router and handler of plain proxied requests for the lean server."""

    def __init__(
        self,
        proxy: KubeProxy,
        connections: ConnectionManager,
        in_flight: InFlight,
        answers: AnswerLog,
    ) -> None:
        self._proxy = proxy
        self._connections = connections
        self._in_flight = in_flight
        self._answers = answers
        # What each (method, target) reads as, or None when aiohttp must read it: callers
        # repeat targets (lists, gets, the same objects), and reading one is a regex, a
        # percent-decoding and a verb.
        self._reads: dict[tuple[str, str], _Read | None] = {}
        self._read_chars = 0

    def route(self, method: str, target: str, headers: Headers) -> Handler | None:
        """The handler of a plain proxied request this replica can serve, else None."""
        if self._in_flight.draining:
            return None
        key = (method, target)
        read = self._reads.get(key, _UNREAD)
        if read is _UNREAD:
            read = _read_target(method, target)
            self._read_chars += len(target)
            if len(self._reads) >= READS_KEPT or self._read_chars > READ_CHARS_KEPT:
                self._reads.clear()
                self._read_chars = len(target)
            self._reads[key] = read
        if read is None or any(name.lower() in _DECLINED_HEADERS for name, _ in headers):
            return None
        where, what, query = read
        if not self._connections.serves(where.plane_type, where.plane_id, where.key):
            return None  # aiohttp's path says 502 or 403, or forwards to a peer replica
        return partial(self._serve, where, what, query)

    async def _serve(
        self, where: Target, what: Answered, query: str, request: Request, respond: Responder
    ) -> None:
        if self._in_flight.draining:  # began while its body was still arriving
            self._error(what, self._in_flight.refusal(), respond)
            return
        self._in_flight.enter()
        try:
            await self._exchange(where, what, query, request, respond)
        finally:
            self._in_flight.leave()

    async def _exchange(
        self, where: Target, what: Answered, query: str, request: Request, respond: Responder
    ) -> None:
        sending = self._proxy.plain_request(
            where, request.method, what.path, query, request.headers, request.body
        )
        if isinstance(sending, web.Response):
            self._error(what, sending, respond)
            return
        conn, frame = sending
        what = what._replace(request_id=frame.request_id)
        answered: list[TunnelResponse] = []

        def answer_now(reply: TunnelResponse) -> None:
            """A plain whole answer, written to the caller as the agent's answer is read (in
            the socket's read callback), not a pass of the loop later when this task resumes.
            An error or a status HTTP cannot carry is left to the task, as before."""
            if reply.error is None and final_status(reply.status_code):
                answered.append(reply)
                self._answer(what, self._proxy.plain_answer(reply), respond)

        conn.answer_now[frame.request_id] = answer_now
        try:
            reply = await self._proxy.ask(conn, frame, what.verb)
        finally:
            conn.answer_now.pop(frame.request_id, None)
        if answered:
            return
        if isinstance(reply, web.Response):  # ask dropped any body buffer
            self._error(what, reply, respond)
            return
        answer = await self._proxy.answer_of(
            conn, reply, f"a request of {what.path}", method=request.method
        )
        if isinstance(answer, StreamBuffer):
            await self._relay(conn, what, reply, answer, respond)
        else:
            self._answer(what, answer, respond)

    def _answer(
        self, what: Answered, answer: tuple[int, Headers, bytes] | web.Response, respond: Responder
    ) -> None:
        """A whole answer: the plane's, or the gateway's own error; counted once it is sent."""
        if isinstance(answer, web.Response):
            self._error(what, answer, respond)
            return
        status, headers, payload = answer
        respond.whole(status, headers, payload)
        self._answers.record(what, status)

    async def _relay(
        self,
        conn: AgentConnection,
        what: Answered,
        head: TunnelResponse,
        body: StreamBuffer,
        respond: Responder,
    ) -> None:
        """A chunked answer, as its chunks come; cut off (not ended) when it fails."""

        async def start() -> None:
            self._answers.record(what, head.status_code)
            respond.stream(head.status_code, reply_headers(head.headers))

        problem = await self._proxy.relay_body(conn, head.request_id, body, start, respond.chunk)
        if problem is not None:
            log.warning("answer to %s: %s: the caller's connection is closed", what.path, problem)
            raise Abort(problem)
        respond.end()

    def _error(self, what: Answered, answer: web.Response, respond: Responder) -> None:
        """One of the gateway's own answers (a ``k8s_status``), written by the lean server."""
        self._answers.record(what, answer.status, gateway_error=True)
        headers = [
            (name, value)
            for name, value in answer.headers.items()
            if name.lower() not in ("content-length", "transfer-encoding")
        ]
        body = answer.body if isinstance(answer.body, bytes) else b""
        respond.whole(answer.status, headers, body)
