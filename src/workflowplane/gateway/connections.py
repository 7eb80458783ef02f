"""Agent connections: who is connected, and every rule of which CR each may serve.

``ConnectionManager`` is the one place that answers "may connection C serve CR K": it admits
an agent (its leaf checked against each CR's CA of its planeID, separately, and K must be on
the leaf's consent list when it carries one), re-verifies every connection when a CR changes
(notify), and picks a connection for a proxied request among those authorized (checking
consent and the leaf's expiry again). It also counts connections (status, the agents gauge)
and tells subscribers of every change (the push channel the controller listens to).

A CR's status answer is built only from connections its own CA verifies: an agent authorized
for other CRs alone never changes it (docs/security.md, "status").

Nothing one tenant adds costs another tenant's requests anything: anyone with a CA of its own
can make a CR with a victim's planeID and hold thousands of connections on it. So every
per-request and per-event answer is kept as connections come, go and change, never found by
looking through the plane's connections: the connections authorized for each CR (and those
its CA verifies but whose consent list leaves it out), the streams open per CR
(``StreamTable``), the agent instances per plane, and the connections per client certificate
(at most ``MAX_CONNECTIONS_PER_LEAF``: /ws closes the oldest past it). An event names at most
``EVENT_AGENTS`` instances of its plane, with the count of them all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, Self

from aiohttp import WSCloseCode
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from workflowplane.api import ClientCAError
from workflowplane.api.consent import UNRESTRICTED, Consent, consent_of
from workflowplane.api.constants import PLANE_TYPE
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.streams import StreamBuffer, StreamEnd
from workflowplane.kits.clock import utcnow
from workflowplane.kits.grouped import Grouped
from workflowplane.kits.tasks import TaskSet
from workflowplane.pki import ClientCheck, uri_sans
from workflowplane.protocol import Frame, TunnelResponse, encode, encode_binary

log = logging.getLogger(__name__)
ConnectionEvent = dict[str, Any]
CONSENT_REFUSAL = "the agent's allow-list (URI SANs of its certificate) does not name this CR"
# What a refused agent is told when a CA trusted for its planeID verifies its leaf: it holds
# that CA's leaf (and key), so it learns nothing it could not; no CR is named.
CONSENT_REFUSAL_TOLD = "the CRs whose CA verifies it are not on its consent list (URI SANs)"
NOBODY = Consent(frozenset({"-/-"}))  # matches no CR key
# Connections one client certificate may hold to one replica at once: an agent holds one per
# replica, and a few more while it reconnects (the old one not yet seen to be gone).
MAX_CONNECTIONS_PER_LEAF = 16
# Instances an event names (those of its plane connected the longest), with the count of all:
# the controller reads an event's type, planeID and time; every instance of a plane in each
# event made it grow with the plane's connections (38 KB at 3,000), anyone's to add.
EVENT_AGENTS = 20
# A refused certificate that a CR's own CA signed (expired, not yet valid, without
# ClientAuth) is told in that CR's status for this long after its last attempt: an agent
# redials well within it, so an older refusal is no longer one.
REJECTION_MEMORY_SECONDS = 300.0
MAX_REJECTIONS = 10_000  # CRs told of a refusal at once (the oldest go first)
REJECTION_TELL_SECONDS = 30.0  # an event names a CR for its refusals at most this often
Plane = tuple[str, str]  # (planeType, planeID)
Slot = tuple[str, str, str]  # (planeType, planeID, CR key)


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


def fingerprint_of(leaf: x509.Certificate) -> bytes:
    """What tells client certificates apart (the per-certificate connection cap)."""
    return leaf.fingerprint(hashes.SHA256())


class StreamTable(dict[str, StreamBuffer]):
    """A connection's streams by requestID (``AgentConnection.streams``) that tells its
    manager of each stream put in or taken out (``tally``: the stream's CR key, +1 or -1),
    so a CR's open streams are counted as they open and close, not looked for on every
    connection of its plane. Reads are a dict's own (a lookup per frame)."""

    __slots__ = ("tally",)

    def __init__(self, streams: dict[str, StreamBuffer] | None = None) -> None:
        super().__init__()
        self.tally: Callable[[str, int], None] | None = None
        if streams:
            self.update(streams)

    def _told(self, stream: StreamBuffer, change: int) -> None:
        if self.tally is not None:
            self.tally(stream.key, change)

    def __setitem__(self, rid: str, stream: StreamBuffer) -> None:
        before = self.get(rid)
        super().__setitem__(rid, stream)
        if before is not None:
            self._told(before, -1)
        self._told(stream, 1)

    def __delitem__(self, rid: str) -> None:
        stream = self[rid]
        super().__delitem__(rid)
        self._told(stream, -1)

    def pop(self, rid: str, *default: Any) -> Any:
        if rid not in self:
            return super().pop(rid, *default)  # the default, or KeyError
        stream = super().pop(rid)
        self._told(stream, -1)
        return stream

    def popitem(self) -> tuple[str, StreamBuffer]:
        rid, stream = super().popitem()
        self._told(stream, -1)
        return rid, stream

    def clear(self) -> None:
        streams = list(self.values())
        super().clear()
        for stream in streams:
            self._told(stream, -1)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for rid, stream in dict(*args, **kwargs).items():
            self[rid] = stream

    def setdefault(self, rid: str, *default: Any) -> Any:
        if rid not in self:
            (stream,) = default  # a table of streams holds no None
            self[rid] = stream
        return self[rid]

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        self.update(other)
        return self


@dataclass(eq=False)
class AgentConnection:
    """One agent's WebSocket, the CRs it is authorized for, and its requests in flight."""

    plane_type: str
    plane_id: str
    ws: AgentSocket
    leaf: x509.Certificate
    authorized: set[str]
    consent: Consent = UNRESTRICTED
    # What the agent sent after its leaf in the handshake (Go's PeerCertificates[1:]): a leaf
    # issued by an intermediate chains to a CR's CA through them, at admission and notify.
    intermediates: tuple[x509.Certificate, ...] = ()
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
    # Its streams (watch/follow, exec), each counted for its CR while it is connected.
    streams: dict[str, StreamBuffer] = field(default_factory=StreamTable)
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
        self.fingerprint = fingerprint_of(self.leaf)  # the leaf it was admitted with
        if not isinstance(self.streams, StreamTable):
            self.streams = StreamTable(self.streams)

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


@dataclass(frozen=True)
class _Rejection:
    """The last refusal of a certificate a CR's own CA signed."""

    plane_id: str
    reason: str
    ca: bytes  # the CA that signed it (the CR's, as the cache held it)
    at: float  # the clock's time of the attempt
    told_at: float  # when an event last named the CR for it


@dataclass
class _Held:
    """What the manager counted a connection under, to take back exactly that when it goes
    (whatever was done to the connection meanwhile)."""

    conn: AgentConnection
    plane: Plane
    instance: str
    fingerprint: bytes
    serving: set[str]  # the CRs it is in ``_serving`` for
    refusing: set[str]  # the CRs it is in ``_refusing`` for
    streams: StreamTable | None  # the table whose streams are counted


def _add(index: dict[Any, dict[str, AgentConnection]], slot: Any, conn: AgentConnection) -> None:
    index.setdefault(slot, {})[conn.id] = conn


def _drop(index: dict[Any, dict[str, AgentConnection]], slot: Any, conn: AgentConnection) -> None:
    members = index.get(slot)
    if members is not None and members.pop(conn.id, None) is not None and not members:
        del index[slot]


def _count(counts: dict[Any, int], key: Any, change: int) -> None:
    """Add ``change`` to ``counts[key]``; a count that reaches 0 is removed (no key stays
    for something gone)."""
    left = counts.get(key, 0) + change
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


Chain = tuple[x509.Certificate, ...]


def _admits(ca: bytes, chain: Chain, seen: dict[Chain, bool]) -> bool:
    """Whether ``ca`` admits ``chain`` (leaf first), once per chain (``seen``) within one
    notify."""
    verdict = seen.get(chain)
    if verdict is None:
        verdict = seen[chain] = ClientCheck(chain).refusal(ca) is None
    return verdict


class ConnectionManager:
    """Owns the open agent connections and every authorization decision about them.

    Connections come and go through ``connect``/``disconnect`` (the /ws handler); what a
    connection may serve changes only here: at admission (``admit``) and on notify
    (``reverify``). ``pick`` and ``status`` read the result. CAs come from the plane cache;
    this class keeps no copy of them.

    What requests and events ask is kept up to date as connections change (``_hold``,
    ``_unhold``, ``_settled``), so that it costs the CR's own connections, never the plane's.
    """

    def __init__(
        self,
        planes: PlaneCache,
        metrics: GatewayMetrics,
        replica: str = "",
        leaf_cap: int = MAX_CONNECTIONS_PER_LEAF,
    ) -> None:
        self.replica = replica  # this gateway replica's name, in every status answer
        self.leaf_cap = leaf_cap  # connections one client certificate may hold here
        self._planes = planes
        self._metrics = metrics
        # By id, and by plane: a request refused, a status, a reconnect look at its plane's.
        self._connections: Grouped[str, Plane, AgentConnection] = Grouped(
            lambda c: (c.plane_type, c.plane_id)
        )
        self._held: dict[str, _Held] = {}  # by connection id
        # The connections of a plane authorized for a CR (every proxied request asks), and
        # those its CA verifies but whose consent list leaves it out (its status asks).
        self._serving: dict[Slot, dict[str, AgentConnection]] = {}
        self._refusing: dict[Slot, dict[str, AgentConnection]] = {}
        # What a notify of a CR looks at: the connections of its planeID (of any plane type),
        # and those of any plane authorized for it or refusing it (it may have moved).
        self._knowing: dict[str, dict[str, AgentConnection]] = {}
        self._streams: dict[Slot, int] = {}  # streams open per CR on its plane's connections
        # Connections per agent instance: per planeID (the agents gauge), per plane (events).
        self._instances: dict[str, dict[str, int]] = {}
        self._plane_instances: dict[Plane, dict[str, int]] = {}
        # Connections per client certificate, by id.
        self._leaves: dict[bytes, dict[str, AgentConnection]] = {}
        self._turns: defaultdict[tuple[str, str], itertools.count[int]] = defaultdict(
            itertools.count
        )
        self._subscribers: set[asyncio.Queue[ConnectionEvent]] = set()
        self._none_left = asyncio.Event()
        self._none_left.set()
        self._closing = TaskSet("connections")
        # By CR key: its own agent's last refused certificate (``admit``).
        self._rejections: OrderedDict[str, _Rejection] = OrderedDict()
        self.clock: Callable[[], float] = time.monotonic
        planes.on_judge_again(self._judge_again)

    # ---- authorization --------------------------------------------------------------------

    def admit(
        self,
        plane_id: str,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> Admission:
        """Check ``leaf`` (with the ``intermediates`` the agent sent) against the CA of each
        CR of ``plane_id`` separately; a CR its CA admits is granted only if the leaf's
        consent list (when it has one) names it.

        Each distinct CA is judged once (CRs sharing one are common), from bundles parsed
        once per process: a client repeating /ws costs no parsing and no chain search for
        CAs that cannot have signed its leaf."""
        consent = leaf_consent(leaf)
        check = ClientCheck([leaf, *intermediates])
        granted: set[str] = set()
        refused: dict[str, str] = {}
        faults: dict[str, tuple[str, bytes]] = {}  # the CRs' own agents' refusals
        by_consent: set[str] = set()
        for entry in self._planes.for_plane(plane_id):
            try:
                ca = self._planes.ca_of(entry)
                reason = check.refusal(ca)
            except ClientCAError as exc:
                refused[entry.key] = str(exc)
                continue
            if reason is None and not consent.allows(entry.key):
                by_consent.add(entry.key)
                reason = CONSENT_REFUSAL
            if reason is None:
                granted.add(entry.key)
                self._rejections.pop(entry.key, None)
            else:
                refused[entry.key] = reason
                fault = (
                    check.own_fault(ca)
                    if reason != CONSENT_REFUSAL and consent.allows(entry.key)
                    else None
                )
                if fault is not None:
                    faults[entry.key] = (fault, ca)
        if faults:
            self._rejected(plane_id, faults)
        leaf_problem = "" if granted else check.leaf_problem()
        return Admission(frozenset(granted), refused, frozenset(by_consent), consent, leaf_problem)

    def _rejected(self, plane_id: str, faults: dict[str, tuple[str, bytes]]) -> None:
        """Remember why each CR's own agent was refused (and by which of its CAs); one event
        names the CRs not told of a refusal lately, so an agent redialing, or two agents
        refused for different reasons in turn, re-read their status at most once a while."""
        now = self.clock()
        news: list[str] = []
        for key, (reason, ca) in faults.items():
            before = self._rejections.pop(key, None)
            told = before.told_at if before is not None and before.plane_id == plane_id else None
            if told is None or now - told > REJECTION_TELL_SECONDS:
                news.append(key)
                told = now
            self._rejections[key] = _Rejection(plane_id, reason, ca, now, told)
        while len(self._rejections) > MAX_REJECTIONS:
            self._rejections.popitem(last=False)
        if news:
            self._tell(
                {
                    "type": "rejected",
                    "planeType": PLANE_TYPE,
                    "planeID": plane_id,
                    "crKeys": sorted(news),
                    "consentRefusedKeys": [],
                    "replica": self.replica,
                }
            )

    def rejection(self, plane_id: str, key: str) -> str | None:
        """Why CR ``key``'s own agent was last refused: lately, for this planeID, by the CA
        the CR trusts now (not one rotated away, nor a deleted namesake's)."""
        found = self._rejections.get(key)
        if found is None or found.plane_id != plane_id:
            return None
        ca = self._planes.ca_or_none(self._planes.entries.get(key))
        if self.clock() - found.at > REJECTION_MEMORY_SECONDS or ca != found.ca:
            del self._rejections[key]
            return None
        return found.reason

    def _judge_again(self, key: str, plane_id: str) -> None:
        """The plane cache's own watches saw what admits agents for CR ``key`` change (it
        went, another object took its name, its CA Secret changed): its connections are
        judged again now, against what the cache holds. The controller's notify does the
        same, but one that did not reach this replica (another answered) left an agent
        admitted by a deleted CR's CA serving a new CR of its name."""
        ca = self._planes.ca_or_none(self._planes.entries.get(key))
        granted, revoked, closing = self._rejudge(PLANE_TYPE, plane_id, key, ca)
        if granted or revoked:
            log.info("CR %s changed: %d granted, %d revoked", key, granted, revoked)
        if closing:
            self._closing.spawn(_close_each(closing, message=b"no longer authorized"), "close")

    async def reverify(
        self, plane_type: str, plane_id: str, key: str, ca: bytes | None
    ) -> Reverification:
        """Grant or revoke CR ``key`` (now of ``plane_type``/``plane_id``, trusting ``ca``,
        None when it is gone) on every connection; other CRs are untouched.

        Connections of the CR's plane are re-verified against its CA and their consent list;
        connections of any other planeID lose the CR (its planeID changed), so requests for it
        can only reach its plane. A connection left authorized for no CR is closed. Only
        those connections are looked at: a tenant's notify costs no other tenant's agents.
        """
        granted, revoked, closing = self._rejudge(plane_type, plane_id, key, ca)
        await _close_each(closing, message=b"no longer authorized")
        return Reverification(granted, revoked, len(closing))

    def _rejudge(
        self, plane_type: str, plane_id: str, key: str, ca: bytes | None
    ) -> tuple[int, int, list[AgentConnection]]:
        """``reverify``'s decisions: how many were granted and revoked, and the connections
        to close (marked closing)."""
        granted: list[str] = []
        revoked: list[str] = []
        closing: list[AgentConnection] = []
        seen: dict[Chain, bool] = {}  # chains shared by connections: judged once
        own_plane = self._connections.group((plane_type, plane_id))
        concerned = {**own_plane, **self._knowing.get(key, {})}
        for conn in concerned.values():
            same_plane = (conn.plane_type, conn.plane_id) == (plane_type, plane_id)
            chain = (conn.leaf, *conn.intermediates)
            verified = same_plane and ca is not None and _admits(ca, chain, seen)
            change = conn.settle(key, verified=verified)
            self._settled(conn, key)
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
        return len(granted), len(revoked), closing

    def authorized(self, plane_type: str, plane_id: str, key: str) -> list[AgentConnection]:
        """The connections of this plane that may serve CR ``key`` right now: of those
        authorized for it (no other connection is looked at), those its consent list and
        the leaf's expiry still allow."""
        conns = self._serving.get((plane_type, plane_id, key))
        if not conns:
            return []
        now = time.time()
        return [c for c in conns.values() if c.may_serve(key, now)]

    def serves(self, plane_type: str, plane_id: str, key: str) -> bool:
        """Whether any connection of this plane may serve CR ``key`` right now."""
        conns = self._serving.get((plane_type, plane_id, key))
        if not conns:
            return False
        now = time.time()
        return any(c.may_serve(key, now) for c in conns.values())

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
        """Streams open for CR ``key`` on every connection of its plane (its caller's share):
        counted as they open and close (``StreamTable``)."""
        return self._streams.get((plane_type, plane_id, key), 0)

    def make_room(self, leaf: x509.Certificate) -> list[AgentConnection]:
        """Take out the connections of ``leaf`` that one more would put past ``leaf_cap``,
        the least recently heard first, and return them for closing. One client
        certificate's connections cost every tenant of its plane's events, and an agent
        needs one per replica; the newest is kept, not refused: the old ones may be
        half-open, unnoticed until dead-after, and refusing the new one kept a live agent
        out for that long. Only that certificate's holder loses connections by it."""
        held = self._leaves.get(fingerprint_of(leaf), {})
        surplus = len(held) + 1 - self.leaf_cap
        if surplus <= 0:
            return []
        oldest = sorted(held.values(), key=lambda c: c.seen_at)[:surplus]
        for conn in oldest:
            conn.closing("replaced")
            self.disconnect(conn, "replaced by a newer connection of its client certificate")
        return oldest

    # ---- lifecycle ------------------------------------------------------------------------

    def connect(self, conn: AgentConnection) -> None:
        """Register an admitted connection (its ``authorized`` from ``admit``)."""
        if conn.id in self._held:  # registered again: counted once
            self._unhold(conn.id)
        self._connections.put(conn.id, conn)
        self._hold(conn)
        self._none_left.clear()
        conn.metrics = self._metrics
        self._metrics.agent_connected(conn.plane_id)
        self._count_agents(conn.plane_id)
        self._publish("connected", conn)

    def disconnect(self, conn: AgentConnection, why: str = "agent disconnected") -> None:
        """Forget a connection; its requests in flight fail at once (saying ``why``)."""
        if self._connections.pop(conn.id) is not None:
            self._unhold(conn.id)
            if not self._connections.by_key:
                self._none_left.set()
            conn.fail_all(why)
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
        await self._closing.close()  # the watches' closes: their sockets are closed above

    async def all_gone(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) until no connection is left: closed connections finish
        their close handshake before the listener goes (else agents see 1006, not our code)."""
        try:
            await asyncio.wait_for(self._none_left.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _count_agents(self, plane_id: str) -> None:
        self._metrics.agents.labels(plane_id).set(len(self._instances.get(plane_id, ())))

    # ---- what is kept as connections change -----------------------------------------------

    def _hold(self, conn: AgentConnection) -> None:
        """Count a connection in: its CRs, its instance, its certificate, its streams."""
        plane = (conn.plane_type, conn.plane_id)
        table = conn.streams if isinstance(conn.streams, StreamTable) else None
        self._held[conn.id] = _Held(
            conn, plane, conn.instance, conn.fingerprint, set(), set(), table
        )
        for key in conn.authorized | conn.consent_refused:
            self._settled(conn, key)
        _count(self._instances.setdefault(conn.plane_id, {}), conn.instance, 1)
        _count(self._plane_instances.setdefault(plane, {}), conn.instance, 1)
        _add(self._leaves, conn.fingerprint, conn)
        if table is not None:
            for stream in table.values():
                self._tally_stream(plane, stream.key, 1)
            table.tally = partial(self._tally_stream, plane)

    def _unhold(self, conn_id: str) -> None:
        """Take back all that ``_hold`` and ``_settled`` counted for a connection."""
        held = self._held.pop(conn_id)
        conn, plane, instance = held.conn, held.plane, held.instance
        for key in held.serving:
            _drop(self._serving, (*plane, key), conn)
            _drop(self._knowing, key, conn)
        for key in held.refusing:
            _drop(self._refusing, (*plane, key), conn)
            _drop(self._knowing, key, conn)
        by_id, by_plane = self._instances[plane[1]], self._plane_instances[plane]
        _count(by_id, instance, -1)
        _count(by_plane, instance, -1)
        if not by_id:
            del self._instances[plane[1]]
        if not by_plane:
            del self._plane_instances[plane]
        _drop(self._leaves, held.fingerprint, conn)
        if held.streams is not None:
            held.streams.tally = None
            for stream in held.streams.values():
                self._tally_stream(plane, stream.key, -1)

    def _settled(self, conn: AgentConnection, key: str) -> None:
        """Whether the connection is authorized for CR ``key``, or refused it by its consent
        list, now that this may have changed (``settle``)."""
        held = self._held[conn.id]
        slot = (*held.plane, key)
        for index, listed, now in (
            (self._serving, held.serving, key in conn.authorized),
            (self._refusing, held.refusing, key in conn.consent_refused),
        ):
            if now and key not in listed:
                listed.add(key)
                _add(index, slot, conn)
            elif not now and key in listed:
                listed.discard(key)
                _drop(index, slot, conn)
        if key in held.serving or key in held.refusing:
            _add(self._knowing, key, conn)
        else:
            _drop(self._knowing, key, conn)

    def _tally_stream(self, plane: Plane, key: str, change: int) -> None:
        _count(self._streams, (*plane, key), change)

    # ---- status ---------------------------------------------------------------------------

    def for_plane(self, plane_type: str, plane_id: str) -> list[AgentConnection]:
        return list(self._connections.group((plane_type, plane_id)).values())

    def connected(self, plane_type: str, plane_id: str) -> bool:
        """Whether any agent of the plane is connected (no list of them built)."""
        return bool(self._connections.group((plane_type, plane_id)))

    def status(self, plane_type: str, plane_id: str, key: str | None) -> dict[str, Any]:
        """Connections of a plane, or, for CR ``key``, what only its own CA's agents say."""
        if key is None:
            return self._summary(plane_type, plane_id, self.for_plane(plane_type, plane_id))
        mine = self.authorized(plane_type, plane_id, key)
        refusing = list(self._refusing.get((plane_type, plane_id, key), {}).values())
        answer = {
            **self._summary(plane_type, plane_id, mine),
            "consentRefused": bool(refusing),
            "consentRefusedAgents": len(refusing),
            "unrestrictedSharedCA": _shared_without_consent(mine),
        }
        rejected = self.rejection(plane_id, key) if plane_type == PLANE_TYPE else None
        if rejected is not None:
            answer["certificateRejected"] = rejected
        return answer

    def _agents_of(self, conns: list[AgentConnection]) -> dict[str, Any]:
        """Agents, not connections: one agent connected here twice is one."""
        agents = sorted({c.instance for c in conns})
        return {"replica": self.replica, "connectedAgents": len(agents), "agents": agents}

    def _agents_told(self, plane: Plane) -> dict[str, Any]:
        """An event's agents of its plane: how many, and at most ``EVENT_AGENTS`` of them by
        name (those connected the longest), sorted; ``agentsOmitted`` the others."""
        instances = self._plane_instances.get(plane, {})
        named = sorted(itertools.islice(instances, EVENT_AGENTS))
        return {
            "replica": self.replica,
            "connectedAgents": len(instances),
            "agents": named,
            "agentsOmitted": len(instances) - len(named),
        }

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
            **self._agents_told((conn.plane_type, conn.plane_id)),
            "lastSeen": conn.last_seen.isoformat(),
        }
        self._tell(event)

    def _tell(self, event: ConnectionEvent) -> None:
        # When the change happened (RFC 3339, microseconds): the controller's status lag is
        # measured from here, not from the event's arrival.
        event["time"] = utcnow().isoformat(timespec="microseconds").replace("+00:00", "Z")
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
