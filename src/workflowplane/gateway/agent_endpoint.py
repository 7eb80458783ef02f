"""The public listener's one route, ``GET /ws``: admit an agent, then carry its frames.

Whatever an admitted agent sends, the connection survives it and the gateway's memory and
log stay bounded: a message over the frame limit fails its own request (``frames.py``), a
frame that does not decode (any depth, any type) is dropped and counted, and problems are
logged at most once per connection and kind per interval, with a count.
"""

from __future__ import annotations

import _ssl
import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web
from cryptography import x509

from workflowplane.api import PLANE_TYPE
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.frames import (
    GuardedWebSocket,
    MalformedAnswer,
    MessageBudget,
    OversizedMessage,
    ResponseTooLarge,
)
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.replica import instance_problem, valid_instance
from workflowplane.gateway.streams import PROBLEM_SHOWN, StreamBuffer, StreamEnd
from workflowplane.kits.clock import utcnow
from workflowplane.kits.corking import cork
from workflowplane.kits.ratelog import LogThrottle
from workflowplane.kits.tasks import TaskSet, cancel_and_wait
from workflowplane.kits.text import decoded, shortened
from workflowplane.pki import name_text
from workflowplane.protocol import (
    TUNNEL_V2,
    TUNNEL_V3,
    BinaryFrameError,
    Frame,
    StreamChunk,
    TunnelResponse,
    classify_gateway_frame,
    decode_binary,
    take_chunk,
)
from workflowplane.protocol.binary import request_id_of as binary_request_id
from workflowplane.protocol.http import AGENT_INSTANCE_HEADER, UNSENT_HEADER
from workflowplane.protocol.messages import MetadataTooLarge, json_request_id

log = logging.getLogger(__name__)
KNOWN_PLANE_TYPES = frozenset({PLANE_TYPE})
# Certificates after the leaf that admission considers (the verifier's own depth bound is 8).
MAX_INTERMEDIATES = 8
EXPIRY_RECHECK_SECONDS = 3600.0  # sleep in steps, so a wall-clock jump is noticed
# What decoding an agent's frame raises on bad input: msgspec's errors, and RecursionError
# for nesting deeper than the decoder's stack (a 5000-deep array).
UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, BinaryFrameError)
# What the gateway selects of what an agent offers (the agent's order decides: v3 first).
SUBPROTOCOLS = (TUNNEL_V3, TUNNEL_V2)
REPLACED = b"replaced by a newer connection of its client certificate"


class JunkBudget:
    """Frames nobody can use (malformed, late, for no stream) an agent may send per second.
    Past it the gateway stops reading that agent for the rest of the second, so TCP pushes
    back on it and the gateway's CPU goes to the other agents (0: no budget)."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._window = clock()
        self._spent = 0

    def spend(self) -> float:
        """Count one such frame; how long to stop reading (0.0: carry on)."""
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._spent = now, 0
        self._spent += 1
        if not self.per_second or self._spent <= self.per_second:
            return 0.0
        return max(0.0, self._window + 1.0 - now)


async def _sleep_until(moment: dt.datetime) -> None:
    """Sleep until a wall-clock moment, in steps, so a clock change is noticed."""
    left = (moment - utcnow()).total_seconds()
    while left > 0:
        await asyncio.sleep(min(left, EXPIRY_RECHECK_SECONDS))
        left = (moment - utcnow()).total_seconds()


def budget_owner(granted: Iterable[str]) -> str:
    """Whose share of the gateway's message budget a connection draws on: the namespaces of
    the CRs it was admitted for (its tenant, however many planeIDs that tenant's CRs name;
    ``/`` for ClusterWorkflowPlanes, the platform's). Not its planeID: any tenant may name
    any planeID, and a squatter on a victim's would spend the victim's share."""
    namespaces = sorted({key.partition("/")[0] or "/" for key in granted})
    return "namespaces " + ",".join(namespaces)


def peer_chain(request: web.Request) -> tuple[x509.Certificate, ...]:
    """The client's certificate and the intermediates it sent after it (leaf first), as
    OpenChoreo's gateway uses them (Go's ``PeerCertificates``); empty without a certificate."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return ()
    return (x509.load_der_x509_certificate(der), *_intermediates(ssl_object))


def _intermediates(ssl_object: Any) -> list[x509.Certificate]:
    """What the client sent after its leaf, at most ``MAX_INTERMEDIATES`` of them (a chain
    longer than the verifier's depth cannot be used anyway). Python 3.11 has the chain only
    as a private method of ``_ssl`` (public from 3.13: ``get_unverified_chain``); without it
    the leaf alone is judged. One that cannot be read is left out, as it could not chain."""
    native = getattr(ssl_object, "_sslobj", ssl_object)
    chain_of = getattr(native, "get_unverified_chain", None)
    chain = chain_of() if chain_of is not None else None
    found: list[x509.Certificate] = []
    for cert in (chain or [])[1 : 1 + MAX_INTERMEDIATES]:
        der = cert if isinstance(cert, bytes) else cert.public_bytes(_ssl.ENCODING_DER)
        try:
            found.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return found


class AgentEndpoint:
    """Serves ``/ws`` for agents: the HTTP side of admission (400/401 with the reason, before
    the upgrade), then one connection's frame loop, heartbeat and certificate expiry.

    Whether a certificate is admitted, and for which CRs, is the connection manager's call;
    this class turns its answer into a response, registers the connection while it lasts,
    and hands each response frame to the request waiting for it. It owns the heartbeat and
    expiry tasks.
    """

    def __init__(
        self,
        connections: ConnectionManager,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        budget: MessageBudget | None = None,
    ) -> None:
        self._connections = connections
        self._config = config
        self._metrics = metrics
        # The bytes of agent messages being assembled, all connections together (one per
        # gateway; by default four messages at the frame limit).
        self.budget = (
            budget if budget is not None else MessageBudget.for_frames(config.max_frame_bytes)
        )
        metrics.count_unfinished(lambda: self.budget.held)
        self._watchers = TaskSet("agent-watch")
        self._problems = LogThrottle(log, config.frame_log_interval_seconds)
        # Refusals, one line per reason per interval: anyone reaching the listener may repeat
        # /ws on one keep-alive connection, and each line may list every CR of a planeID.
        self._refusals = LogThrottle(log, config.frame_log_interval_seconds)
        self._serials = itertools.count(1)
        self.draining = False  # set on SIGTERM: new agents are sent to other replicas

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws", self.handle)]

    async def close(self) -> None:
        """Stop every heartbeat and expiry watch still running (their connections close)."""
        await self._watchers.close()

    def _replaced(self, conns: list[AgentConnection]) -> None:
        """Close connections a newer one of their certificate took the place of (each one's
        handler then ends as on any close); logged throttled."""
        cap = self._connections.leaf_cap
        for conn in conns:
            self._refusals.log(
                ("replaced", conn.plane_id),  # one tenant's churn hides no other's line
                logging.WARNING,
                "closing agent connection %s: its client certificate opened more than %d "
                "connections to this replica (the cap per certificate); the oldest go",
                conn.id,
                cap,
            )
            self._watchers.spawn(
                conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=REPLACED),
                f"replace {conn.id}",
            )

    def _refuse(
        self,
        status: int,
        reason: str,
        message: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
    ) -> web.Response:
        """Answer ``message``; the log line (throttled per ``kind``, the reason by default)
        says ``detail`` as well, which is for the gateway's operator only."""
        self._metrics.rejected.labels(reason).inc()
        shown = f"{message}; {detail}" if detail else message
        self._refusals.log(
            kind or reason, logging.WARNING, "agent refused (%d %s): %s", status, reason, shown
        )
        return web.json_response({"error": message, "reason": reason}, status=status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /ws?planeType=&planeID=: 400/401 before the upgrade, with the reason."""
        if self.draining:
            refused = self._refuse(503, "draining", "this gateway replica is shutting down")
            refused.headers[UNSENT_HEADER] = "1"
            return refused
        instance = request.headers.get(AGENT_INSTANCE_HEADER)
        if instance is not None and not valid_instance(instance):
            return self._refuse(400, "bad-instance", instance_problem(instance))
        plane_type = request.query.get("planeType", "")
        plane_id = request.query.get("planeID", "")
        if not plane_type or not plane_id:
            return self._refuse(400, "missing-params", "planeType and planeID are required")
        if plane_type not in KNOWN_PLANE_TYPES:
            return self._refuse(400, "unknown-plane-type", f"unknown planeType {plane_type!r}")
        chain = peer_chain(request)
        if not chain:
            return self._refuse(401, "no-certificate", "a client certificate is required")
        leaf, intermediates = chain[0], chain[1:]
        admission = self._connections.admit(plane_id, leaf, intermediates)
        if not admission.granted:  # the client is told of its certificate, the log of each CR
            return self._refuse(
                401,
                "not-authorized",
                f"certificate {name_text(leaf)} for planeID {plane_id!r} "
                f"verifies against no CR's CA that it may serve ({admission.told()})",
                f"by CR: {admission.why_refused()}",
                # a line per planeID that has CRs (a bounded number): a stranger repeating
                # /ws must not take the one line an operator's own agent needs
                kind=f"not-authorized {plane_id}" if admission.refused else None,
            )
        ws = GuardedWebSocket(
            limit=self._config.max_frame_bytes,
            message_timeout=self._config.request_timeout_seconds,
            budget=self.budget,
            owner=budget_owner(admission.granted),
            autoping=False,
            protocols=SUBPROTOCOLS,
        )
        await ws.prepare(request)
        # Admitted again: a CR deleted or its CA rotated while the upgrade was written was
        # re-verified on the connections registered then, and this one was not among them.
        admission = self._connections.admit(plane_id, leaf, intermediates)
        if not admission.granted:
            self._refusals.log(
                "after-upgrade",
                logging.WARNING,
                "agent refused after its upgrade: %s",
                admission.why_refused(),
            )
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no longer authorized")
            return ws
        replaced = self._connections.make_room(leaf)  # its certificate's cap: oldest go
        if replaced:
            self._replaced(replaced)
        corked = cork(ws._writer)  # frames written in one pass leave as one write
        conn = AgentConnection(
            plane_type,
            plane_id,
            ws,
            leaf,
            set(admission.granted),
            consent=admission.consent,
            intermediates=intermediates,
            consent_refused=set(admission.consent_refused),
            v2=ws.ws_protocol in SUBPROTOCOLS,
            binary=ws.ws_protocol == TUNNEL_V3,
            instance=instance or f"conn-{self._connections.replica}-{next(self._serials)}",
            flush_writes=corked.flush if corked is not None else None,
        )
        self._connections.connect(conn)
        if conn.binary and ws.guard is not None:
            ws.guard.direct = partial(self._direct, conn)
        log.info(
            "agent %s connected for planeID %s (%s), authorized for %s%s",
            conn.id,
            plane_id,
            ws.ws_protocol or "v1",
            sorted(admission.granted),
            f", refused by its consent list: {sorted(admission.consent_refused)}"
            if admission.consent_refused
            else "",
        )
        watchers = [
            self._watchers.spawn(self._heartbeat(conn, ws), f"heartbeat {conn.id}"),
            self._watchers.spawn(self._close_at_expiry(conn, ws), f"expiry {conn.id}"),
        ]
        try:
            await self._read_frames(conn, ws)
        finally:
            if ws.write_stalled:
                log.warning("agent %s read nothing sent to it: cut off", conn.id)
                conn.closing("write-stalled")
            await cancel_and_wait(watchers)
            self._connections.disconnect(conn)
            self._problems.forget(lambda key: isinstance(key, tuple) and key[0] == conn.id)
            log.info("agent %s (planeID %s) disconnected", conn.id, plane_id)
        return ws

    async def _heartbeat(self, conn: AgentConnection, ws: web.WebSocketResponse) -> None:
        """Ping periodically; close a connection silent for longer than ``dead_after``."""
        dead_after = dt.timedelta(seconds=self._config.dead_after_seconds)
        while not ws.closed:
            await asyncio.sleep(self._config.ping_interval_seconds)
            if utcnow() - conn.last_seen > dead_after:
                log.warning("agent %s silent for %s: closing", conn.id, dead_after)
                conn.closing("heartbeat-timeout")
                await ws.close()
                return
            try:
                await ws.ping()
            except ConnectionError:
                return

    async def _close_at_expiry(self, conn: AgentConnection, ws: web.WebSocketResponse) -> None:
        """Close the connection when its client certificate expires: the handshake checked
        it once, but the connection may outlive it (the agent reconnects with its renewed
        leaf; ``pick`` stops using it at the same moment)."""
        await _sleep_until(conn.expires_at)
        self._metrics.expired.inc()
        conn.closing("certificate-expired")
        log.warning(
            "agent %s (planeID %s): its client certificate expired at %s; closing",
            conn.id,
            conn.plane_id,
            conn.expires_at.isoformat(),
        )
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"client certificate expired")

    async def _read_frames(self, conn: AgentConnection, ws: web.WebSocketResponse) -> None:
        junk = JunkBudget(self._config.max_junk_frames_per_second)
        async for message in ws:
            conn.seen()
            if isinstance(message.data, OversizedMessage):
                self._metrics.frame_in.observe(message.data.at_least)
                self._oversized(conn, message.data)
            elif message.type in {WSMsgType.TEXT, WSMsgType.BINARY}:
                self._metrics.frame_in.observe(len(message.data))
                binary = conn.binary and message.type == WSMsgType.BINARY
                if not self._route_frame(conn, message.data, binary):
                    await self._spend(conn, junk)
            elif message.type in {WSMsgType.PING, WSMsgType.PONG}:
                # a few a minute keep a connection alive; a flood of them is junk too
                if message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                await self._spend(conn, junk)
            elif message.type == WSMsgType.ERROR:
                log.warning("agent %s websocket error: %s", conn.id, ws.exception())
                conn.closing("protocol-error")

    async def _spend(self, conn: AgentConnection, junk: JunkBudget) -> None:
        """Count a frame nobody could use; over the budget, stop reading this agent a while
        (its socket fills, TCP pushes back on it)."""
        if not (pause := junk.spend()):
            return
        self._metrics.throttled.inc()
        self._problem(
            conn,
            "throttled",
            "over %d useless frames/s: not read for %.1fs",
            junk.per_second,
            pause,
        )
        await asyncio.sleep(pause)

    def _problem(self, conn: AgentConnection, kind: str, msg: str, *args: object) -> None:
        """One warning per connection and kind per interval (the rest are counted in it)."""
        self._problems.log((conn.id, kind), logging.WARNING, "agent %s: " + msg, conn.id, *args)

    def _direct(self, conn: AgentConnection, data: bytearray) -> bool:
        """A v3 message somebody waits for, delivered as the socket's bytes are read: no hop
        through aiohttp's queue and the reader task. Anything else is declined (False) and
        goes the queued way, which counts useless frames and throttles them."""
        rid = binary_request_id(data)
        if rid is None:
            return False
        stream = conn.streams.get(rid) or conn.bodies.get(rid)
        future = conn.pending.get(rid) if stream is None else None
        if stream is None and (future is None or future.done()):
            return False
        size = len(data)
        try:  # a body's bytes stay in the message (take_chunk), not copied out of it
            taken = take_chunk(data) if stream is not None and not stream.whole_chunks else None
            frame = decode_binary(data) if taken is None else taken[0]
        except UNDECODABLE:
            return False
        if taken is not None and stream is not None:  # data was cut: it is not declined now
            if not _feed_chunk(stream, *taken):
                return False  # useless: the queued way counts it (once)
            conn.seen()
            self._metrics.frame_in.observe(size)
            return True
        if stream is None and not isinstance(frame, TunnelResponse):
            return False
        if _second_head(stream, frame) or (
            stream is not None
            and isinstance(frame, StreamChunk)
            and _useless_chunk(frame, frame.data)
        ):
            return False  # useless: the queued way counts it (once)
        conn.seen()
        delivered = self._dispatch(conn, frame)
        self._metrics.frame_in.observe(size)
        return delivered

    def _route_frame(
        self, conn: AgentConnection, raw: str | bytes | bytearray, binary: bool = False
    ) -> bool:
        """Deliver a response or chunk to whoever waits for it; drop (and count) the rest.
        Whether anyone could use it. ``binary``: a v3 message (else v1 JSON)."""
        try:
            frame = (
                decode_binary(raw)
                if binary and isinstance(raw, bytes | bytearray)
                else classify_gateway_frame(bytes(raw) if isinstance(raw, bytearray) else raw)
            )
        except MetadataTooLarge as exc:  # not decoded: its request fails, the rest carry on
            self._metrics.dropped_frames.inc()
            self._fail_one(conn, exc.request_id, f"the agent's answer: {exc}", "oversized")
            return False
        except UNDECODABLE as exc:
            self._metrics.dropped_frames.inc()
            rid = _answered_id(raw, binary)
            if rid is not None and (
                rid in conn.pending or rid in conn.streams or rid in conn.bodies
            ):
                problem = f"the agent's answer did not decode: {shortened(str(exc), 200)}"
                self._fail_one(conn, rid, problem, "malformed", MalformedAnswer)
                return False
            self._problem(conn, "malformed", "malformed frame dropped: %.200s", exc)
            return False
        return self._dispatch(conn, frame)

    def _dispatch(self, conn: AgentConnection, frame: Frame) -> bool:
        rid = frame.request_id
        stream = conn.streams.get(rid) or conn.bodies.get(rid)
        if stream is not None:
            if _second_head(stream, frame):
                self._metrics.dropped_frames.inc()
                self._problem(conn, "second-head", "response for a stream that has begun dropped")
                return False
            if not _feed(stream, frame):
                self._metrics.dropped_frames.inc()
                self._problem(conn, "empty-chunk", "chunks that carry nothing dropped")
                return False
            return True
        future = conn.pending.get(rid)
        if isinstance(frame, TunnelResponse) and future is not None and not future.done():
            if frame.chunked and conn.v2:  # the body follows as chunks: catch them from now on
                conn.bodies[rid] = StreamBuffer(rid, self._config.max_frame_bytes, headed=True)
            elif (answer_now := conn.answer_now.pop(rid, None)) is not None:
                answer_now(frame)
            future.set_result(frame)
            return True
        if isinstance(frame, TunnelResponse):
            self._metrics.late.inc()
            self._problem(conn, "late", "response for an unknown or timed-out request dropped")
        else:
            self._metrics.dropped_frames.inc()
            self._problem(conn, "unexpected", "chunk for an unknown stream dropped")
        return False

    def _oversized(self, conn: AgentConnection, oversized: OversizedMessage) -> None:
        """Fail the one request whose answer was too large; the connection carries on."""
        self._metrics.oversized.inc()
        self._fail_one(conn, oversized.request_id or "", oversized.describe(), "oversized")

    def _fail_one(
        self,
        conn: AgentConnection,
        rid: str,
        problem: str,
        kind: str,
        error: type[ResponseTooLarge] = ResponseTooLarge,
    ) -> None:
        """Fail the request ``rid`` of this connection (its caller is told ``problem``)."""
        stream = conn.streams.get(rid) or conn.bodies.get(rid)
        future = conn.pending.get(rid)
        if stream is not None:
            stream.end(StreamEnd(problem))
        elif future is not None and not future.done():
            future.set_exception(error(problem))
        shown = shortened(rid, 64) or "(unknown)"
        self._problem(conn, kind, "%s; request %s failed", problem, shown)


def _answered_id(raw: str | bytes | bytearray, binary: bool) -> str | None:
    """The requestID an undecodable answer names, when it names one."""
    if binary:
        return None if isinstance(raw, str) else binary_request_id(raw)
    return json_request_id(bytes(raw) if isinstance(raw, bytearray) else raw)


def _feed(stream: StreamBuffer, frame: Frame) -> bool:
    """One frame into a stream's buffer; whether it was of use. An ``isClose`` with ``data``
    ends it with that reason (OpenChoreo's convention: the error); exec streams take chunks
    whole."""
    if isinstance(frame, TunnelResponse):
        stream.put(frame)
        return True
    if not isinstance(frame, StreamChunk):
        return True
    if stream.whole_chunks:
        if _useless_chunk(frame, frame.data):
            return False
        stream.put(frame)
        if frame.is_close is True:
            stream.end()
        return True
    return _feed_chunk(stream, frame, frame.data)


def _useless_chunk(chunk: StreamChunk, data: bytes | bytearray | None) -> bool:
    """Carries nothing and ends nothing: counted as junk (a flood of empty chunks on an open
    stream went past the useless-frame budget). One for a stream that ended here (it fell
    behind) is still taken: the agent, told to stop, may have more on the way."""
    return not data and chunk.is_close is not True


def _second_head(stream: StreamBuffer | None, frame: Frame) -> bool:
    """A response for a stream that has its head (or is over): nobody will read it, so it
    is useless (counted and throttled as such), never queued."""
    return isinstance(frame, TunnelResponse) and stream is not None and not stream.wants_head()


def _feed_chunk(stream: StreamBuffer, chunk: StreamChunk, data: bytes | bytearray | None) -> bool:
    """A body's chunk (``data`` may have come apart from it: take_chunk); whether it was of
    use."""
    if _useless_chunk(chunk, data):
        return False
    if chunk.is_close is True:
        stream.end(StreamEnd(decoded(data, PROBLEM_SHOWN) if data else None))
    elif data:
        stream.put(data)
    return True
