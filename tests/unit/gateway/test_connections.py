"""The connection manager's rules, without servers: admission per CR, re-verification on
notify across planeIDs, round-robin, status counts, events and the agents gauge."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from tests.pki_chains import intermediate_ca, root_ca
from workflowplane.api import SecretLocation
from workflowplane.api.consent import parse_allow_list
from workflowplane.gateway.connections import AgentConnection, ConnectionManager, leaf_consent
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache, PlaneEntry
from workflowplane.gateway.streams import StreamBuffer, StreamEnd
from workflowplane.kits.corking import CorkedTransport
from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.protocol import TunnelRequest

WP = "workflowplane"


class FakeSocket:
    """Stands in for an agent's WebSocket: remembers being closed and why."""

    def __init__(self) -> None:
        self.closed = False
        self.close_message: bytes | None = None

    async def send_str(self, data: str) -> None:
        raise AssertionError(f"nothing should be sent here: {data}")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed, self.close_message = True, message
        return True


@pytest.fixture(scope="module")
def ca_a() -> KeyPair:
    return generate_ca("agent-ca-a")


@pytest.fixture(scope="module")
def ca_b() -> KeyPair:
    return generate_ca("agent-ca-b")


def _entry(key: str, plane_id: str, ca: KeyPair | None) -> PlaneEntry:
    namespace, name = key.split("/")
    location = None if ca else SecretLocation(namespace, "missing", "ca.crt")
    return PlaneEntry(
        key, "WorkflowPlane", namespace, name, plane_id, ca.cert_pem if ca else None, location
    )


def _manager(*entries: PlaneEntry) -> tuple[ConnectionManager, PlaneCache, GatewayMetrics]:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    for entry in entries:
        planes.upsert(entry)
    metrics = GatewayMetrics()
    return ConnectionManager(planes, metrics), planes, metrics


def _join(
    manager: ConnectionManager, plane_id: str, ca: KeyPair, ident: str | None = None
) -> AgentConnection:
    """Admit a leaf issued by ``ca`` for ``plane_id`` and connect it, as /ws does."""
    leaf = issue_certificate(ca, f"agent-{plane_id}").certificate
    admission = manager.admit(plane_id, leaf)
    assert admission.granted, admission.why_refused()
    extra = {"id": ident} if ident else {}
    conn = AgentConnection(WP, plane_id, FakeSocket(), leaf, set(admission.granted), **extra)
    manager.connect(conn)
    return conn


_ANY_LEAF = issue_certificate(generate_ca("any"), "agent").certificate


def _conn(plane: str, keys: set[str], ident: str) -> AgentConnection:
    """A connection authorized for ``keys`` by fiat (its leaf is never checked here)."""
    return AgentConnection(WP, plane, FakeSocket(), _ANY_LEAF, keys, id=ident)


def test_each_cr_of_the_plane_id_is_checked_against_its_own_ca(
    ca_a: KeyPair, ca_b: KeyPair
) -> None:
    manager, _, _ = _manager(
        _entry("ns/a", "p", ca_a),
        _entry("ns/b", "p", ca_b),
        _entry("ns/secret", "p", None),  # its Secret is not in the cache
        _entry("ns/elsewhere", "q", ca_a),  # trusts the CA, but for another planeID
    )
    leaf = issue_certificate(ca_a, "agent").certificate
    admission = manager.admit("p", leaf)
    assert admission.granted == {"ns/a"}
    assert set(admission.refused) == {"ns/b", "ns/secret"}
    assert "not signed by this CA" in admission.refused["ns/b"]
    assert "ns/missing not found" in admission.refused["ns/secret"]
    refused = manager.admit("nowhere", leaf)
    assert not refused.granted and refused.why_refused() == "no CR has planeID"


def test_round_robin_only_over_connections_authorized_for_the_cr() -> None:
    manager, _, _ = _manager()
    for conn in (
        _conn("p", {"a/x"}, "1"),
        _conn("p", {"a/x", "b/y"}, "2"),
        _conn("p", {"b/y"}, "3"),
        _conn("q", {"a/x"}, "4"),
    ):
        manager.connect(conn)
    picks = [manager.pick(WP, "p", "a/x").id for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["1", "2"] * 3  # alternates; "3" and plane q are never chosen
    assert manager.pick(WP, "p", "c/z") is None
    status = manager.status(WP, "p", "b/y")
    assert status["connectedAgents"] == 2 and status["connected"] is True
    assert manager.status(WP, "p", None)["connectedAgents"] == 3
    assert manager.status(WP, "r", None) == {
        "planeType": WP,
        "planeID": "r",
        "connected": False,
        "replica": "",
        "connectedAgents": 0,
        "agents": [],
        "lastSeen": None,
    }


def test_all_status_counts_each_plane_and_lists_its_crs() -> None:
    manager, _, _ = _manager()
    for conn in (_conn("p", {"a/x"}, "1"), _conn("p", {"b/y"}, "2"), _conn("q", {"c/z"}, "3")):
        manager.connect(conn)
    summary = {(s["planeID"], s["connectedAgents"]): s["crs"] for s in manager.all_status()}
    assert summary == {("p", 2): ["a/x", "b/y"], ("q", 1): ["c/z"]}


def test_events_reach_subscribers_with_the_cr_keys() -> None:
    manager, _, _ = _manager()
    queue = manager.subscribe()
    conn = _conn("p", {"a/x"}, "1")
    manager.connect(conn)
    manager.disconnect(conn)
    manager.disconnect(conn)  # a second time is no event
    first: dict[str, Any] = queue.get_nowait()
    second: dict[str, Any] = queue.get_nowait()
    assert queue.empty()
    assert (first["type"], second["type"]) == ("connected", "disconnected")
    assert first["crKeys"] == ["a/x"] and first["planeID"] == "p"
    assert (first["connectedAgents"], second["connectedAgents"]) == (1, 0)
    assert dt.datetime.fromisoformat(second["lastSeen"])
    manager.unsubscribe(queue)
    manager.connect(_conn("p", {"a/x"}, "2"))
    assert queue.empty()


def test_the_agents_gauge_follows_connections_per_plane_id() -> None:
    manager, _, metrics = _manager()
    gauge = "workflowplane_gateway_connected_agents"
    first, second = _conn("p", {"a/x"}, "1"), _conn("p", {"a/x"}, "2")
    manager.connect(first)
    manager.connect(second)
    manager.connect(_conn("q", {"b/y"}, "3"))
    assert metrics.registry.get_sample_value(gauge, {"plane_id": "p"}) == 2
    manager.disconnect(first)
    assert metrics.registry.get_sample_value(gauge, {"plane_id": "p"}) == 1
    assert metrics.registry.get_sample_value(gauge, {"plane_id": "q"}) == 1


async def test_a_disconnect_fails_the_requests_in_flight() -> None:
    manager, _, _ = _manager()
    conn = _conn("p", {"a/x"}, "1")
    manager.connect(conn)
    waiting = asyncio.get_running_loop().create_future()
    conn.pending["r"] = waiting
    conn.streams["s"] = StreamBuffer("a/x", 1024)
    manager.disconnect(conn)
    with pytest.raises(ConnectionError, match="agent disconnected"):
        await waiting
    assert await conn.streams["s"].get() == StreamEnd("agent disconnected")


async def test_notify_grants_a_new_cr_to_the_connections_its_ca_verifies(
    ca_a: KeyPair, ca_b: KeyPair
) -> None:
    manager, planes, _ = _manager(_entry("ns/a", "p", ca_a), _entry("ns/b", "p", ca_b))
    by_a, by_b = _join(manager, "p", ca_a), _join(manager, "p", ca_b)
    queue = manager.subscribe()
    planes.upsert(_entry("ns/new", "p", ca_a))
    result = await manager.reverify(WP, "p", "ns/new", ca_a.cert_pem)
    assert (result.granted, result.revoked, result.disconnected) == (1, 0, 0)
    assert by_a.authorized == {"ns/a", "ns/new"} and by_b.authorized == {"ns/b"}
    event = queue.get_nowait()
    assert event["type"] == "authorization" and event["agentID"] == by_a.id
    assert event["crKeys"] == ["ns/a", "ns/new"] and queue.empty()
    again = await manager.reverify(WP, "p", "ns/new", ca_a.cert_pem)
    assert (again.granted, again.revoked, again.disconnected) == (0, 0, 0)
    assert queue.empty()  # nothing changed, nothing published


async def test_notify_with_a_rotated_ca_revokes_only_that_cr(ca_a: KeyPair, ca_b: KeyPair) -> None:
    manager, _, _ = _manager(_entry("ns/a", "p", ca_a), _entry("ns/other", "p", ca_a))
    conn = _join(manager, "p", ca_a)
    assert conn.authorized == {"ns/a", "ns/other"}
    result = await manager.reverify(WP, "p", "ns/other", ca_b.cert_pem)
    assert (result.granted, result.revoked, result.disconnected) == (0, 1, 0)
    assert conn.authorized == {"ns/a"} and not conn.ws.closed
    assert manager.pick(WP, "p", "ns/other") is None
    assert manager.pick(WP, "p", "ns/a") is conn


async def test_a_leaf_an_intermediate_issued_chains_through_what_the_agent_sent() -> None:
    """OpenChoreo's gateway verifies an agent's leaf with the intermediates of its handshake
    (Go's ``PeerCertificates[1:]``), at connect and on notify: a CR whose CA is the root
    admits a leaf an intermediate issued, with that intermediate and only with it."""
    root = root_ca("org-root")
    inter = intermediate_ca(root, "org-agents")
    manager, _, _ = _manager(_entry("ns/a", "p", root), _entry("ns/b", "p", root))
    leaf = issue_certificate(inter, "agent").certificate
    assert manager.admit("p", leaf).granted == set()
    admission = manager.admit("p", leaf, [inter.certificate])
    assert admission.granted == {"ns/a", "ns/b"}
    conn = AgentConnection(
        WP, "p", FakeSocket(), leaf, set(admission.granted), intermediates=(inter.certificate,)
    )
    manager.connect(conn)
    kept = await manager.reverify(WP, "p", "ns/a", root.cert_pem)
    assert (kept.granted, kept.revoked) == (0, 0) and conn.authorized == {"ns/a", "ns/b"}
    rotated = await manager.reverify(WP, "p", "ns/a", root_ca("another-root").cert_pem)
    assert rotated.revoked == 1 and conn.authorized == {"ns/b"}
    back = await manager.reverify(WP, "p", "ns/a", root.cert_pem)
    assert back.granted == 1 and manager.pick(WP, "p", "ns/a") is conn


async def test_a_cr_moved_to_another_plane_id_leaves_the_old_plane(ca_a: KeyPair) -> None:
    manager, _, _ = _manager(
        _entry("ns/moving", "p", ca_a), _entry("ns/stays", "p", ca_a), _entry("ns/q", "q", ca_a)
    )
    on_p, on_q = _join(manager, "p", ca_a, "on-p"), _join(manager, "q", ca_a, "on-q")
    only_moving = AgentConnection(WP, "p", FakeSocket(), on_p.leaf, {"ns/moving"}, id="lone")
    manager.connect(only_moving)
    result = await manager.reverify(WP, "q", "ns/moving", ca_a.cert_pem)
    assert on_p.authorized == {"ns/stays"} and not on_p.ws.closed
    assert on_q.authorized == {"ns/q", "ns/moving"}
    assert only_moving.authorized == set()
    assert only_moving.ws.closed and only_moving.ws.close_message == b"no longer authorized"  # type: ignore[attr-defined]
    assert (result.granted, result.revoked, result.disconnected) == (1, 2, 1)
    assert manager.pick(WP, "p", "ns/moving") is None
    assert manager.pick(WP, "q", "ns/moving") is on_q


async def test_a_deleted_cr_is_revoked_and_connections_left_with_none_are_closed(
    ca_a: KeyPair,
) -> None:
    manager, _, _ = _manager(_entry("ns/keep", "p", ca_a), _entry("ns/drop", "p", ca_a))
    both = _join(manager, "p", ca_a)
    only_drop = AgentConnection(WP, "p", FakeSocket(), both.leaf, {"ns/drop"})
    manager.connect(only_drop)
    result = await manager.reverify(WP, "p", "ns/drop", None)
    assert (result.granted, result.revoked, result.disconnected) == (0, 2, 1)
    assert both.authorized == {"ns/keep"} and not both.ws.closed
    assert only_drop.ws.closed
    # closing is the /ws handler's cue to disconnect; until then status still counts it
    manager.disconnect(only_drop)
    assert manager.status(WP, "p", None)["connectedAgents"] == 1


async def test_reconnect_closes_every_connection_of_one_plane() -> None:
    manager, _, _ = _manager()
    conns = [_conn("p", {"a/x"}, "1"), _conn("p", {"b/y"}, "2"), _conn("q", {"a/x"}, "3")]
    for conn in conns:
        manager.connect(conn)
    assert await manager.close_plane(WP, "p", b"reconnect requested") == 2
    assert [c.ws.closed for c in conns] == [True, True, False]
    await manager.close_all(b"bye")
    assert conns[2].ws.closed


# ---- consent (issue #10: a CA is public, so a CR naming it proves nothing) -----------------


def _consenting_leaf(ca: KeyPair, *entries: str, **kwargs: Any) -> Any:
    return issue_certificate(ca, "agent", uris=parse_allow_list(entries).uris(), **kwargs)


def _connect_leaf(manager: ConnectionManager, plane_id: str, leaf: Any) -> AgentConnection:
    """What /ws does with an admitted leaf."""
    admission = manager.admit(plane_id, leaf)
    assert admission.granted, admission.why_refused()
    conn = AgentConnection(
        WP,
        plane_id,
        FakeSocket(),
        leaf,
        set(admission.granted),
        consent=admission.consent,
        consent_refused=set(admission.consent_refused),
    )
    manager.connect(conn)
    return conn


def test_a_cr_with_the_victims_ca_is_refused_when_the_leaf_names_only_the_victim(
    ca_a: KeyPair,
) -> None:
    manager, _, _ = _manager(
        _entry("tenant-b/victim", "p", ca_a), _entry("tenant-a/hijack", "p", ca_a)
    )
    leaf = _consenting_leaf(ca_a, "tenant-b/victim").certificate
    admission = manager.admit("p", leaf)
    assert admission.granted == {"tenant-b/victim"}
    assert admission.consent_refused == {"tenant-a/hijack"}
    assert "allow-list" in admission.refused["tenant-a/hijack"]
    conn = _connect_leaf(manager, "p", leaf)
    assert manager.pick(WP, "p", "tenant-a/hijack") is None
    assert manager.pick(WP, "p", "tenant-b/victim") is conn
    hijack = manager.status(WP, "p", "tenant-a/hijack")
    assert hijack["connected"] is False and hijack["connectedAgents"] == 0
    assert hijack["consentRefused"] is True and hijack["consentRefusedAgents"] == 1
    victim = manager.status(WP, "p", "tenant-b/victim")
    assert victim["connected"] is True and victim["consentRefused"] is False
    assert victim["unrestrictedSharedCA"] == []


def test_a_leaf_whose_list_names_no_cr_of_the_plane_is_not_admitted(ca_a: KeyPair) -> None:
    manager, _, _ = _manager(_entry("tenant-a/hijack", "p", ca_a))
    admission = manager.admit("p", _consenting_leaf(ca_a, "tenant-b").certificate)
    assert not admission.granted and admission.consent_refused == {"tenant-a/hijack"}


async def test_notify_does_not_grant_a_cr_the_consent_list_leaves_out(ca_a: KeyPair) -> None:
    manager, planes, _ = _manager(_entry("tenant-b/victim", "p", ca_a))
    conn = _connect_leaf(manager, "p", _consenting_leaf(ca_a, "tenant-b/*").certificate)
    queue = manager.subscribe()
    planes.upsert(_entry("tenant-a/hijack", "p", ca_a))
    result = await manager.reverify(WP, "p", "tenant-a/hijack", ca_a.cert_pem)
    assert (result.granted, result.revoked) == (0, 0)
    assert conn.authorized == {"tenant-b/victim"} and conn.consent_refused == {"tenant-a/hijack"}
    event = queue.get_nowait()  # the controller hears of the refusal without polling
    assert event["consentRefusedKeys"] == ["tenant-a/hijack"]
    assert event["crKeys"] == ["tenant-b/victim"]
    planes.remove("tenant-a/hijack")
    await manager.reverify(WP, "p", "tenant-a/hijack", None)
    assert conn.consent_refused == set()
    assert manager.status(WP, "p", "tenant-a/hijack")["consentRefused"] is False
    # A second CR of a namespace the list names is granted as usual.
    planes.upsert(_entry("tenant-b/second", "p", ca_a))
    granted = await manager.reverify(WP, "p", "tenant-b/second", ca_a.cert_pem)
    assert granted.granted == 1 and conn.authorized == {"tenant-b/victim", "tenant-b/second"}


def test_pick_checks_consent_and_expiry_on_every_request(ca_a: KeyPair) -> None:
    manager, _, _ = _manager(_entry("tenant-b/victim", "p", ca_a))
    conn = _connect_leaf(manager, "p", _consenting_leaf(ca_a, "tenant-b/victim").certificate)
    conn.authorized.add("tenant-a/hijack")  # however it got there, it is not served
    assert manager.pick(WP, "p", "tenant-a/hijack") is None
    soon = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    short = _consenting_leaf(ca_a, valid_for=dt.timedelta(minutes=1, seconds=30), not_before=soon)
    lasting = _connect_leaf(manager, "p", short.certificate)
    assert manager.pick(WP, "p", "tenant-b/victim", stream_cap=None) in {conn, lasting}
    lasting.leaf = issue_certificate(
        ca_a, "old", not_before=soon, valid_for=dt.timedelta(seconds=1)
    ).certificate  # as if its notAfter had passed while connected
    assert {manager.pick(WP, "p", "tenant-b/victim").id for _ in range(4)} == {conn.id}  # type: ignore[union-attr]


def test_an_unrestricted_agent_serving_several_namespaces_is_pointed_out(ca_a: KeyPair) -> None:
    manager, _, _ = _manager(
        _entry("tenant-b/victim", "p", ca_a),
        _entry("tenant-a/hijack", "p", ca_a),
        _entry("tenant-b/other", "p", ca_a),
    )
    _connect_leaf(manager, "p", issue_certificate(ca_a, "agent").certificate)
    for key in ("tenant-b/victim", "tenant-a/hijack"):
        assert manager.status(WP, "p", key)["unrestrictedSharedCA"] == ["tenant-a", "tenant-b"]


def test_a_squatter_does_not_change_the_victims_answer(ca_a: KeyPair, ca_b: KeyPair) -> None:
    """The squatter owns its CA, so it can put the victim on its consent list; the victim's
    answer must still not move (only agents the victim's own CA verifies count)."""
    manager, _, _ = _manager(_entry("victim/wp", "p", ca_b), _entry("squat/wp", "p", ca_a))
    before = manager.status(WP, "p", "victim/wp")
    _connect_leaf(manager, "p", _consenting_leaf(ca_a, "squat/wp", "victim/wp").certificate)
    assert manager.status(WP, "p", "victim/wp") == before
    assert before["consentRefused"] is False and before["connectedAgents"] == 0
    assert manager.status(WP, "p", None)["connectedAgents"] == 1  # the plane-wide count moves


class CorkedSocket:
    """An agent socket whose writes are held for the loop's pass, as ``cork`` makes them."""

    def __init__(self) -> None:
        self.transport = RecordingTransport()
        self.corked = CorkedTransport(self.transport, asyncio.get_running_loop())  # type: ignore[arg-type]

    async def send_bytes(self, data: bytes) -> None:
        self.corked.write(data)


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_a_lone_requests_frame_leaves_at_once_frames_of_many_wait_to_be_joined() -> None:
    """Holding a frame for the end of the loop's pass only pays when other frames may join
    it; a request alone on its connection must not wait for the rest of the pass."""
    socket = CorkedSocket()
    conn = AgentConnection(
        WP, "p", socket, _ANY_LEAF, {"ns/wp"}, binary=True, flush_writes=socket.corked.flush
    )
    loop = asyncio.get_running_loop()
    conn.pending["lone"] = loop.create_future()
    await conn.send(TunnelRequest(request_id="lone", method="GET", path="/api"))
    assert len(socket.transport.written) == 1  # sent before the loop's next pass
    conn.pending.update(one=loop.create_future(), two=loop.create_future())
    await conn.send(TunnelRequest(request_id="one", method="GET", path="/api"))
    await conn.send(TunnelRequest(request_id="two", method="GET", path="/api"))
    assert len(socket.transport.written) == 1  # both held...
    await asyncio.sleep(0)
    assert len(socket.transport.written) == 2  # ...and joined into one write
    assert b"one" in socket.transport.written[1] and b"two" in socket.transport.written[1]


class _Watched(AgentConnection):
    """A connection that counts how often anything asks which plane it belongs to."""

    looked_at = 0

    @property  # type: ignore[override]
    def plane_id(self) -> str:
        type(self).looked_at += 1
        return self._plane_id

    @plane_id.setter
    def plane_id(self, value: str) -> None:
        self._plane_id = value


def test_a_planes_requests_never_look_at_other_planes_connections(ca_a: KeyPair) -> None:
    """Every proxied request looks up its plane's connections; a scan of all of them cost
    each request of each tenant time in the number of all tenants' agents."""
    manager, _, _ = _manager(_entry("ns/mine", "mine", ca_a))
    mine = _join(manager, "mine", ca_a)
    for n in range(50):
        manager.connect(_Watched(WP, f"other-{n}", FakeSocket(), _ANY_LEAF, {f"o/{n}"}))
    _Watched.looked_at = 0
    assert manager.pick(WP, "mine", "ns/mine") is mine
    assert manager.serves(WP, "mine", "ns/mine")
    assert _Watched.looked_at == 0
    assert [c.authorized for c in manager.for_plane(WP, "other-7")] == [{"o/7"}]
    manager.disconnect(mine)
    assert manager.for_plane(WP, "mine") == []


async def test_a_notify_never_looks_at_other_planes_connections(ca_a: KeyPair) -> None:
    """A notify of one tenant's CR (each change of it or of its CA Secret) re-verifies the
    connections of its planeID and those holding the CR; a scan of every connection cost
    each notify time in the number of all tenants' agents, on the loop they share."""
    manager, _, _ = _manager(_entry("ns/mine", "mine", ca_a), _entry("ns/moved", "old", ca_a))
    mine = _join(manager, "mine", ca_a)
    moved = _join(manager, "old", ca_a)
    for n in range(50):
        manager.connect(_Watched(WP, f"other-{n}", FakeSocket(), _ANY_LEAF, {f"o/{n}"}))
    _Watched.looked_at = 0
    result = await manager.reverify(WP, "mine", "ns/moved", ca_a.cert_pem)
    assert (result.granted, result.revoked, result.disconnected) == (1, 1, 1)
    assert mine.authorized == {"ns/mine", "ns/moved"} and moved.ws.closed
    await manager.reverify(WP, "mine", "ns/mine", None)
    assert mine.authorized == {"ns/moved"}
    assert _Watched.looked_at == 0
    manager.disconnect(moved)
    manager.disconnect(mine)
    result = await manager.reverify(WP, "mine", "ns/moved", ca_a.cert_pem)
    assert (result.granted, result.revoked, result.disconnected) == (0, 0, 0)
    assert _Watched.looked_at == 0


def test_a_crs_planeid_change_moves_it_to_its_new_planes_admissions(ca_a: KeyPair) -> None:
    manager, planes, _ = _manager(_entry("ns/a", "old", ca_a), _entry("ns/b", "other", ca_a))
    planes.upsert(_entry("ns/a", "new", ca_a))
    assert [e.key for e in planes.for_plane("new")] == ["ns/a"]
    assert planes.for_plane("old") == []
    leaf = issue_certificate(ca_a, "agent").certificate
    assert manager.admit("new", leaf).granted == {"ns/a"}
    assert manager.admit("old", leaf).granted == set()
    planes.remove("ns/a")
    assert planes.for_plane("new") == [] and [e.key for e in planes.for_plane("other")] == ["ns/b"]


class _WatchedEntry(PlaneEntry):
    """A CR that counts how often anything asks for its planeID."""

    looked_at = 0

    @property  # type: ignore[override]
    def plane_id(self) -> str:
        type(self).looked_at += 1
        return self.__dict__["_plane_id"]

    @plane_id.setter
    def plane_id(self, value: str) -> None:
        self.__dict__["_plane_id"] = value


def test_an_agents_admission_never_looks_at_other_planes_crs(ca_a: KeyPair) -> None:
    """An admission reads the CRs of its planeID; a scan of every CR cost each admission
    time in the number of all tenants' CRs."""
    manager, planes, _ = _manager(_entry("ns/mine", "mine", ca_a))
    for n in range(50):
        planes.upsert(_WatchedEntry(f"o/{n}", "WorkflowPlane", "o", str(n), f"o-{n}", None, None))
    _WatchedEntry.looked_at = 0
    assert manager.admit("mine", issue_certificate(ca_a, "agent").certificate).granted == {
        "ns/mine"
    }
    assert _WatchedEntry.looked_at == 0


def _expired_leaf(ca: KeyPair) -> Any:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    return issue_certificate(
        ca, "agent", not_before=start, valid_for=dt.timedelta(days=1)
    ).certificate


def test_a_refused_certificate_of_the_crs_own_ca_is_told_in_its_status_only(
    ca_a: KeyPair, ca_b: KeyPair
) -> None:
    """An expired leaf signed by CR a's CA: a's status says why it was refused, once per
    news (an event), and a valid leaf's admission clears it. A stranger's expired leaf,
    signed by a CA of the same (public) name, changes nothing."""
    manager, _, _ = _manager(_entry("ns/a", "p", ca_a), _entry("ns/b", "p", ca_b))
    events = manager.subscribe()
    impostor = generate_ca("agent-ca-a")  # the same subject as ca_a, another key
    assert not manager.admit("p", _expired_leaf(impostor)).granted
    assert "certificateRejected" not in manager.status(WP, "p", "ns/a")
    assert events.empty()

    assert not manager.admit("p", _expired_leaf(ca_a)).granted
    rejected = manager.status(WP, "p", "ns/a")["certificateRejected"]
    assert rejected.startswith("client certificate expired at")
    assert "certificateRejected" not in manager.status(WP, "p", "ns/b")  # not b's CA
    assert "certificateRejected" not in manager.status(WP, "q", "ns/a")  # not its planeID
    event = events.get_nowait()
    assert (event["type"], event["planeID"], event["crKeys"]) == ("rejected", "p", ["ns/a"])
    manager.admit("p", _expired_leaf(ca_a))  # the agent redials: no news, no event
    assert events.empty()

    _join(manager, "p", ca_a)
    assert "certificateRejected" not in manager.status(WP, "p", "ns/a")


def test_refusals_are_told_in_one_event_at_most_once_a_while(ca_a: KeyPair) -> None:
    """Two agents refused for different reasons in turn, for two CRs of one CA: one event
    naming both, then none until REJECTION_TELL_SECONDS passed."""
    manager, _, _ = _manager(_entry("ns/a", "p", ca_a), _entry("ns/b", "p", ca_a))
    now = [1000.0]
    manager.clock = lambda: now[0]
    events = manager.subscribe()
    no_client_auth = issue_certificate(ca_a, "srv", client=False, server=True).certificate
    for leaf in (_expired_leaf(ca_a), no_client_auth, _expired_leaf(ca_a)):
        manager.admit("p", leaf)
    assert events.get_nowait()["crKeys"] == ["ns/a", "ns/b"]
    assert events.empty()
    assert manager.status(WP, "p", "ns/b")["certificateRejected"].startswith("client certificate")
    now[0] += 31
    manager.admit("p", no_client_auth)
    assert events.get_nowait()["crKeys"] == ["ns/a", "ns/b"]


def test_a_refusal_is_not_told_to_a_cr_its_leaf_does_not_allow(ca_a: KeyPair) -> None:
    """CRs a and b share a CA; b's agent's leaf allows only b: its expired leaf is b's
    news, never a's."""
    manager, _, _ = _manager(_entry("ns/a", "p", ca_a), _entry("ns/b", "p", ca_a))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    leaf = issue_certificate(
        ca_a,
        "b-agent",
        not_before=start,
        valid_for=dt.timedelta(days=1),
        uris=["urn:openchoreo:workflowplane:allow:ns/b"],
    ).certificate
    assert leaf_consent(leaf).restricted
    manager.admit("p", leaf)
    assert "certificateRejected" in manager.status(WP, "p", "ns/b")
    assert "certificateRejected" not in manager.status(WP, "p", "ns/a")


def test_a_refusal_goes_with_the_ca_that_signed_it(ca_a: KeyPair, ca_b: KeyPair) -> None:
    """The CR's CA rotated (or a namesake trusts another): the old CA's refusal is not its."""
    manager, planes, _ = _manager(_entry("ns/a", "p", ca_a))
    manager.admit("p", _expired_leaf(ca_a))
    assert "certificateRejected" in manager.status(WP, "p", "ns/a")
    planes.upsert(_entry("ns/a", "p", ca_b))
    assert "certificateRejected" not in manager.status(WP, "p", "ns/a")


def test_a_refusal_is_forgotten_after_a_while(ca_a: KeyPair) -> None:
    manager, _, _ = _manager(_entry("ns/a", "p", ca_a))
    now = [1000.0]
    manager.clock = lambda: now[0]
    manager.admit("p", _expired_leaf(ca_a))
    assert "certificateRejected" in manager.status(WP, "p", "ns/a")
    now[0] += 301
    assert "certificateRejected" not in manager.status(WP, "p", "ns/a")


def test_a_pinned_leaf_without_client_auth_is_its_crs_own_refusal() -> None:
    """OpenChoreo's chart registers the agent's own leaf as the CR's CA: a pinned leaf that
    may not authenticate clients is told to that CR."""
    ca = generate_ca("server-only")
    leaf = issue_certificate(ca, "agent", client=False, server=True)
    manager, _, _ = _manager(
        PlaneEntry("ns/a", "WorkflowPlane", "ns", "a", "p", leaf.cert_pem, None)
    )
    assert not manager.admit("p", leaf.certificate).granted
    assert "ClientAuth" in manager.status(WP, "p", "ns/a")["certificateRejected"]
