"""Agent connections: who is connected, and every rule of which CR each may serve.

``ConnectionManager`` is the one place that answers "may connection C serve CR K": it admits
an agent (its leaf checked against each CR's CA of its planeID, separately, and K must be on
the leaf's consent list when it carries one), re-verifies every connection when a CR changes
(notify), and picks a connection for a proxied request among those authorized (checking
consent and the leaf's expiry again). It also counts connections (status, the agents gauge)
and tells subscribers of every change (the push channel the controller listens to).

A CR's status answer is built only from connections its own CA verifies: an agent authorized
for other CRs alone never changes it (docs/security.md, "status").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSCloseCode
from cryptography import x509

from workflowplane.api import ClientCAError
from workflowplane.api.consent import UNRESTRICTED, Consent, consent_of
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.streams import StreamBuffer, StreamEnd
from workflowplane.kits.clock import utcnow
from workflowplane.kits.grouped import Grouped
from workflowplane.pki import ClientCheck, uri_sans
from workflowplane.protocol import Frame, TunnelResponse, encode, encode_binary

log = logging.getLogger(__name__)
ConnectionEvent = dict[str, Any]
CONSENT_REFUSAL = "the agent's allow-list (URI SANs of its certificate) does not name this CR"
# What a refused agent is told when a CA trusted for its planeID verifies its leaf: it holds
# that CA's leaf (and key), so it learns nothing it could not; no CR is named.
CONSENT_REFUSAL_TOLD = "the CRs whose CA verifies it are not on its consent list (URI SANs)"
NOBODY = Consent(frozenset({"-/-"}))  # matches no CR key


class AgentSocket(Protocol):
    """What the manager and the proxy need of an agent's WebSocket."""

    @property
    def closed(self) -> bool: ...

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = b"") -> bool: ...


def _expiry_of(leaf: x509.Certificate) -> tuple[x509.Certificate, dt.datetime, float]:
    not_after = leaf.not_valid_after_utc
    return leaf, not_after, not_after.timestamp()


@dataclass(eq=False)
class AgentConnection:
    """One agent's WebSocket, the CRs it is authorized for, and its requests in flight."""

    plane_type: str
    plane_id: str
    ws: AgentSocket
    leaf: x509.Certificate
    authorized: set[str]
    consent: Consent = UNRESTRICTED
    # CRs whose CA verifies the leaf but which the leaf's consent list leaves out:
    consent_refused: set[str] = field(default_factory=set)
    # Why the gateway closed it (metrics' disconnect reasons); "" while it has not.
    close_reason: str = ""
    metrics: GatewayMetrics | None = field(default=None, repr=False)  # set by connect()
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # The agent process it belongs to (one agent may hold a connection to every replica):
    # its X-Workflowplane-Agent-Instance, or one of its own for an agent that sends none.
    instance: str = ""
    connected_at: dt.datetime = field(default_factory=utcnow)
    seen_at: float = field(default_factory=time.time)  # POSIX time of the last frame
    pending: dict[str, asyncio.Future[TunnelResponse]] = field(default_factory=dict)
    # Who answers its caller as soon as a whole answer is read (by requestID; called before
    # the pending future is resolved, in the socket's read callback: no trip through the loop).
    answer_now: dict[str, Callable[[TunnelResponse], None]] = field(default_factory=dict)
    streams: dict[str, StreamBuffer] = field(default_factory=dict)
    # Answers arriving in chunks (v2), by requestID: not streams, so outside the stream caps.
    bodies: dict[str, StreamBuffer] = field(default_factory=dict)
    # The agent offered and the gateway selected ``workflowplane.tunnel.v2`` (docs/streaming.md):
    # chunked answers and watch/follow streams. Otherwise plain v1, as OpenChoreo's agent.
    v2: bool = False
    # ``workflowplane.tunnel.v3`` (v2's meaning, binary frames: ``protocol/binary.py``).
    binary: bool = False
    # Sends what the socket's writer holds for the end of the loop's pass (kits.corking).
    flush_writes: Callable[[], None] | None = field(default=None, repr=False)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.instance = self.instance or f"conn-{self.id}"
        self._expiry = _expiry_of(self.leaf)

    @property
    def expires_at(self) -> dt.datetime:
        """The leaf's notAfter, read once per leaf: every request checks it, and the leaf's
        getter builds a new datetime each time."""
        return self._leaf_expiry()[1]

    def _leaf_expiry(self) -> tuple[x509.Certificate, dt.datetime, float]:
        if self._expiry[0] is not self.leaf:
            self._expiry = _expiry_of(self.leaf)
        return self._expiry

    def may_serve(self, key: str, now: float) -> bool:
        """Authorized for ``key``, on the leaf's consent list, and the leaf still valid at
        ``now`` (POSIX time: a float compare per request, not a datetime)."""
        return key in self.authorized and self.consent.allows(key) and now < self._leaf_expiry()[2]

    @property
    def last_seen(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.seen_at, dt.UTC)

    @last_seen.setter
    def last_seen(self, moment: dt.datetime) -> None:
        self.seen_at = moment.timestamp()

    def settle(self, key: str, *, verified: bool) -> str:
        """Record whether CR ``key`` is served, now that its CA does (``verified``) or does
        not admit the leaf; what changed: granted, revoked, refused (by consent, or no longer),
        or "" for nothing."""
        allowed = verified and self.consent.allows(key)
        refused_before = key in self.consent_refused
        if verified and not allowed:
            self.consent_refused.add(key)
        else:
            self.consent_refused.discard(key)
        if allowed and key not in self.authorized:
            self.authorized.add(key)
            return "granted"
        if not allowed and key in self.authorized:
            self.authorized.discard(key)
            return "revoked"
        return "refused" if refused_before != (key in self.consent_refused) else ""

    def seen(self) -> None:
        """A frame came (every frame: a float, not a datetime)."""
        self.seen_at = time.time()

    def closing(self, reason: str) -> None:
        """Note why the gateway closes it; the first reason given is the one counted."""
        self.close_reason = self.close_reason or reason

    async def send(self, frame: Frame) -> None:
        data = encode_binary(frame) if self.binary else encode(frame)
        async with self._send_lock:
            if self.binary:
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data.decode())
        if self.flush_writes is not None and len(self.pending) <= 1:
            self.flush_writes()  # a lone request: nothing to join its frame with
        if self.metrics is not None:
            self.metrics.frame_out.observe(len(data))

    def fail_all(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        for stream in [*self.streams.values(), *self.bodies.values()]:
            stream.end(StreamEnd(reason))


async def _close_each(
    conns: list[AgentConnection], *, message: bytes, code: int = WSCloseCode.OK
) -> None:
    """Close the connections side by side: each close waits for its agent to read the close
    frame (bounded by the write stall), and one slow agent must not hold the others'."""
    closes = (conn.ws.close(code=code, message=message) for conn in conns)
    await asyncio.gather(*closes, return_exceptions=True)  # each closes, or is gone


def leaf_consent(leaf: x509.Certificate) -> Consent:
    """The consent a leaf carries; a SAN extension that does not parse allows nobody."""
    try:
        return consent_of(uri_sans(leaf))
    except ValueError:
        return NOBODY


@dataclass(frozen=True)
class Admission:
    """The CRs an agent's certificate is admitted for, and why each other CR refused it
    (``consent_refused``: those whose CA verifies it but that its consent leaves out).
    ``leaf_problem``: why no CA without its issuer admits the leaf (it names no CR)."""

    granted: frozenset[str]
    refused: dict[str, str]
    consent_refused: frozenset[str] = frozenset()
    consent: Consent = UNRESTRICTED
    leaf_problem: str = ""

    def why_refused(self) -> str:
        """Every CR's reason: for the gateway's log only (CR keys, Secret names)."""
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.refused.items())) or (
            "no CR has planeID"
        )

    def told(self) -> str:
        """Why the certificate is refused, in terms of the certificate alone: what a client
        not yet authenticated may read. Never a CR, a Secret or a CA's problem, nor whether
        the planeID has CRs (the same answer when it has none)."""
        if self.consent_refused:
            return CONSENT_REFUSAL_TOLD
        return self.leaf_problem or "no CA admits it"


@dataclass(frozen=True)
class Reverification:
    """What one notify changed: grants and revocations of the CR, connections closed."""

    granted: int
    revoked: int
    disconnected: int


def _admits(ca: bytes, leaf: x509.Certificate, seen: dict[x509.Certificate, bool]) -> bool:
    """Whether ``ca`` admits ``leaf``, once per leaf (``seen``) within one notify."""
    verdict = seen.get(leaf)
    if verdict is None:
        verdict = seen[leaf] = ClientCheck([leaf]).refusal(ca) is None
    return verdict


class ConnectionManager:
    """Owns the open agent connections and every authorization decision about them.

    Connections come and go through ``connect``/``disconnect`` (the /ws handler); what a
    connection may serve changes only here: at admission (``admit``) and on notify
    (``reverify``). ``pick`` and ``status`` read the result. CAs come from the plane cache;
    this class keeps no copy of them.
    """

    def __init__(self, planes: PlaneCache, metrics: GatewayMetrics, replica: str = "") -> None:
        self.replica = replica  # this gateway replica's name, in every status answer
        self._planes = planes
        self._metrics = metrics
        # By id, and by planeID: every proxied request looks up its plane's connections.
        self._connections: Grouped[str, str, AgentConnection] = Grouped(lambda c: c.plane_id)
        self._turns: defaultdict[tuple[str, str], itertools.count[int]] = defaultdict(
            itertools.count
        )
        self._subscribers: set[asyncio.Queue[ConnectionEvent]] = set()
        self._none_left = asyncio.Event()
        self._none_left.set()

    # ---- authorization --------------------------------------------------------------------

    def admit(self, plane_id: str, leaf: x509.Certificate) -> Admission:
        """Check ``leaf`` against the CA of each CR of ``plane_id`` separately; a CR its CA
        admits is granted only if the leaf's consent list (when it has one) names it.

        Each distinct CA is judged once (CRs sharing one are common), from bundles parsed
        once per process: a client repeating /ws costs no parsing and no chain search for
        CAs that cannot have signed its leaf."""
        consent = leaf_consent(leaf)
        check = ClientCheck([leaf])
        granted: set[str] = set()
        refused: dict[str, str] = {}
        by_consent: set[str] = set()
        for entry in self._planes.for_plane(plane_id):
            try:
                reason = check.refusal(self._planes.ca_of(entry))
            except ClientCAError as exc:
                reason = str(exc)
            if reason is None and not consent.allows(entry.key):
                by_consent.add(entry.key)
                reason = CONSENT_REFUSAL
            if reason is None:
                granted.add(entry.key)
            else:
                refused[entry.key] = reason
        leaf_problem = "" if granted else check.leaf_problem()
        return Admission(frozenset(granted), refused, frozenset(by_consent), consent, leaf_problem)

    async def reverify(
        self, plane_type: str, plane_id: str, key: str, ca: bytes | None
    ) -> Reverification:
        """Grant or revoke CR ``key`` (now of ``plane_type``/``plane_id``, trusting ``ca``,
        None when it is gone) on every connection; other CRs are untouched.

        Connections of the CR's plane are re-verified against its CA and their consent list;
        connections of any other planeID lose the CR (its planeID changed), so requests for it
        can only reach its plane. A connection left authorized for no CR is closed.
        """
        granted: list[str] = []
        revoked: list[str] = []
        closing: list[AgentConnection] = []
        seen: dict[x509.Certificate, bool] = {}  # leaves shared by connections: judged once
        for conn in list(self._connections.by_key.values()):
            known = key in conn.authorized or key in conn.consent_refused
            if not known and conn.plane_id != plane_id:
                continue
            same_plane = (conn.plane_type, conn.plane_id) == (plane_type, plane_id)
            verified = same_plane and ca is not None and _admits(ca, conn.leaf, seen)
            change = conn.settle(key, verified=verified)
            if change == "granted":
                granted.append(conn.id)
            elif change == "revoked":
                revoked.append(conn.id)
            if not conn.authorized:
                closing.append(conn)
            elif change:
                self._publish("authorization", conn)
        for conn in closing:
            log.info("closing agent %s: no CR authorizes it any more", conn.id)
            conn.closing("not-authorized")
        await _close_each(closing, message=b"no longer authorized")
        return Reverification(len(granted), len(revoked), len(closing))

    def authorized(self, plane_type: str, plane_id: str, key: str) -> list[AgentConnection]:
        """The connections of this plane that may serve CR ``key`` right now."""
        now = time.time()
        return [c for c in self.for_plane(plane_type, plane_id) if c.may_serve(key, now)]

    def serves(self, plane_type: str, plane_id: str, key: str) -> bool:
        """Whether any connection of this plane may serve CR ``key`` right now."""
        now = time.time()
        return any(c.may_serve(key, now) for c in self.for_plane(plane_type, plane_id))

    def pick(
        self, plane_type: str, plane_id: str, key: str, *, stream_cap: int | None = None
    ) -> AgentConnection | None:
        """Round-robin over the connections authorized for one CR; with ``stream_cap``, only
        over those carrying fewer streams than that."""
        candidates = sorted(self.authorized(plane_type, plane_id, key), key=lambda c: c.id)
        if stream_cap is not None:
            candidates = [c for c in candidates if len(c.streams) < stream_cap]
        if not candidates:
            return None
        return candidates[next(self._turns[(plane_id, key)]) % len(candidates)]

    def streams_of(self, plane_type: str, plane_id: str, key: str) -> int:
        """Streams open for CR ``key`` on every connection of its plane (its caller's share)."""
        return sum(
            1
            for c in self.for_plane(plane_type, plane_id)
            for stream in c.streams.values()
            if stream.key == key
        )

    # ---- lifecycle ------------------------------------------------------------------------

    def connect(self, conn: AgentConnection) -> None:
        """Register an admitted connection (its ``authorized`` from ``admit``)."""
        self._connections.put(conn.id, conn)
        self._none_left.clear()
        conn.metrics = self._metrics
        self._metrics.agent_connected(conn.plane_id)
        self._count_agents(conn.plane_id)
        self._publish("connected", conn)

    def disconnect(self, conn: AgentConnection) -> None:
        """Forget a connection; its requests in flight fail at once."""
        if self._connections.pop(conn.id) is not None:
            if not self._connections.by_key:
                self._none_left.set()
            conn.fail_all("agent disconnected")
            self._metrics.agent_disconnected(conn.plane_id, conn.close_reason)
            self._count_agents(conn.plane_id)
            self._publish("disconnected", conn)

    async def close_plane(self, plane_type: str, plane_id: str, message: bytes) -> int:
        """Close every connection of one plane (agents reconnect); how many there were."""
        conns = self.for_plane(plane_type, plane_id)
        for conn in conns:
            conn.closing("reconnect-requested")
        await _close_each(conns, message=message)
        return len(conns)

    async def close_all(self, message: bytes, code: int = WSCloseCode.OK) -> None:
        conns = list(self._connections.by_key.values())
        for conn in conns:
            conn.closing("gateway-shutdown")
        await _close_each(conns, code=code, message=message)

    async def all_gone(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) until no connection is left: closed connections finish
        their close handshake before the listener goes (else agents see 1006, not our code)."""
        try:
            await asyncio.wait_for(self._none_left.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _count_agents(self, plane_id: str) -> None:
        instances = {c.instance for c in self._connections.group(plane_id).values()}
        self._metrics.agents.labels(plane_id).set(len(instances))

    # ---- status ---------------------------------------------------------------------------

    def for_plane(self, plane_type: str, plane_id: str) -> list[AgentConnection]:
        same_plane = self._connections.group(plane_id)
        return [c for c in same_plane.values() if c.plane_type == plane_type]

    def status(self, plane_type: str, plane_id: str, key: str | None) -> dict[str, Any]:
        """Connections of a plane, or, for CR ``key``, what only its own CA's agents say."""
        if key is None:
            return self._summary(plane_type, plane_id, self.for_plane(plane_type, plane_id))
        mine = self.authorized(plane_type, plane_id, key)
        refusing = [c for c in self.for_plane(plane_type, plane_id) if key in c.consent_refused]
        return {
            **self._summary(plane_type, plane_id, mine),
            "consentRefused": bool(refusing),
            "consentRefusedAgents": len(refusing),
            "unrestrictedSharedCA": _shared_without_consent(mine),
        }

    def _agents_of(self, conns: list[AgentConnection]) -> dict[str, Any]:
        """Agents, not connections: one agent connected here twice is one."""
        agents = sorted({c.instance for c in conns})
        return {"replica": self.replica, "connectedAgents": len(agents), "agents": agents}

    def _summary(
        self, plane_type: str, plane_id: str, conns: list[AgentConnection]
    ) -> dict[str, Any]:
        last_seen = max((c.last_seen for c in conns), default=None)
        return {
            "planeType": plane_type,
            "planeID": plane_id,
            "connected": bool(conns),
            **self._agents_of(conns),
            "lastSeen": last_seen.isoformat() if last_seen else None,
        }

    def all_status(self) -> list[dict[str, Any]]:
        planes = sorted({(c.plane_type, c.plane_id) for c in self._connections.by_key.values()})
        result = []
        for plane_type, plane_id in planes:
            entry = self.status(plane_type, plane_id, None)
            entry["crs"] = sorted(
                {k for c in self.for_plane(plane_type, plane_id) for k in c.authorized}
            )
            result.append(entry)
        return result

    # ---- events ---------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[ConnectionEvent]:
        queue: asyncio.Queue[ConnectionEvent] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ConnectionEvent]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, kind: str, conn: AgentConnection) -> None:
        event = {
            "type": kind,
            "planeType": conn.plane_type,
            "planeID": conn.plane_id,
            "crKeys": sorted(conn.authorized),
            "consentRefusedKeys": sorted(conn.consent_refused),
            "agentID": conn.id,
            "instance": conn.instance,
            **self._agents_of(self.for_plane(conn.plane_type, conn.plane_id)),
            "lastSeen": conn.last_seen.isoformat(),
            # When the change happened (RFC 3339, microseconds): the controller's status lag
            # is measured from here, not from the event's arrival.
            "time": utcnow().isoformat(timespec="microseconds").replace("+00:00", "Z"),
        }
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("an event subscriber is not reading; dropping it")
                self._metrics.subscribers_dropped.inc()
                self._subscribers.discard(queue)


def _shared_without_consent(conns: list[AgentConnection]) -> list[str]:
    """Namespaces whose CRs share an agent with no consent list, when there are several:
    each of them can use the agent (the same CA, public material, admits them all)."""
    namespaces = {
        key.partition("/")[0]
        for conn in conns
        if not conn.consent.restricted
        for key in conn.authorized
        if not key.startswith("/")
    }
    return sorted(namespaces) if len(namespaces) > 1 else []
