"""A squatter on a victim's planeID costs the victim nothing per request, stream or event.

Anyone with a CA of its own can make a CR with a victim's planeID and hold as many agent
connections on it as it likes. Each of the victim's requests looked through all of them
(``pick``, ``serves``: 281 µs at 3,000), each stream counted every stream of the plane
(``streams_of``), each connect counted the plane's instances, and each event named every
one of them (38 KB at 3,000). Here the squatter's connections record every attribute read
of them, and the victim's answers must read none; one client certificate may hold at most
``leaf_cap`` connections to a replica (429 before the upgrade, 1013 after it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from aiohttp import WSCloseCode, web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.unit.agent.stand_ins import until
from workflowplane.gateway import agent_endpoint
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import (
    EVENT_AGENTS,
    MAX_CONNECTIONS_PER_LEAF,
    AgentConnection,
    ConnectionManager,
)
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache, PlaneEntry
from workflowplane.gateway.streams import StreamBuffer
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

WP = "workflowplane"
PLANE = "shared"
VICTIM, SQUAT = "victim/wp", "squat/wp"
SQUATTERS = 3000


class FakeSocket:
    closed = False

    async def send_str(self, data: str) -> None:
        raise AssertionError(f"nothing should be sent here: {data}")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


class Squatter(AgentConnection):
    """A squatter's connection: while ``watching``, every attribute read of it is counted."""

    watching: ClassVar[bool] = False
    looked_at: ClassVar[int] = 0

    def __getattribute__(self, name: str) -> Any:
        if Squatter.watching:
            Squatter.looked_at += 1
        return super().__getattribute__(name)


class watched:
    """``with watched():`` counts the squatters' attribute reads inside it (``.reads``)."""

    def __enter__(self) -> watched:
        Squatter.looked_at, Squatter.watching = 0, True
        return self

    def __exit__(self, *_: object) -> None:
        Squatter.watching = False

    @property
    def reads(self) -> int:
        return Squatter.looked_at


@pytest.fixture(scope="module")
def victim_ca() -> KeyPair:
    return generate_ca("victim-ca")


@pytest.fixture(scope="module")
def squat_ca() -> KeyPair:
    return generate_ca("squatter-ca")


def _entry(key: str, ca: KeyPair) -> PlaneEntry:
    namespace, name = key.split("/")
    return PlaneEntry(key, "WorkflowPlane", namespace, name, PLANE, ca.cert_pem, None)


def _manager(victim_ca: KeyPair, squat_ca: KeyPair) -> tuple[ConnectionManager, GatewayMetrics]:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    planes.upsert(_entry(VICTIM, victim_ca))
    planes.upsert(_entry(SQUAT, squat_ca))
    metrics = GatewayMetrics()
    return ConnectionManager(planes, metrics), metrics


def _admitted(
    manager: ConnectionManager,
    leaf: x509.Certificate,
    kind: type[AgentConnection] = AgentConnection,
    instance: str = "",
) -> AgentConnection:
    """What /ws makes of an admitted leaf (not yet connected)."""
    admission = manager.admit(PLANE, leaf)
    assert admission.granted, admission.why_refused()
    return kind(WP, PLANE, FakeSocket(), leaf, set(admission.granted), instance=instance)


def _squat(manager: ConnectionManager, squat_ca: KeyPair) -> list[AgentConnection]:
    """SQUATTERS connections of the squatter, two per instance, each carrying a stream."""
    leaf = issue_certificate(squat_ca, "squatter").certificate
    conns = []
    for n in range(SQUATTERS):
        conn = _admitted(manager, leaf, Squatter, instance=f"squat-{n // 2}")
        manager.connect(conn)
        conn.streams[f"s{n}"] = StreamBuffer(SQUAT, 1024)
        conns.append(conn)
    return conns


@pytest.fixture
def crowded(victim_ca: KeyPair, squat_ca: KeyPair) -> Iterator[tuple[ConnectionManager, Any]]:
    manager, metrics = _manager(victim_ca, squat_ca)
    _squat(manager, squat_ca)
    yield manager, metrics
    Squatter.watching = False


def test_the_victims_requests_look_at_no_squatter_connection(
    crowded: tuple[ConnectionManager, Any], victim_ca: KeyPair
) -> None:
    manager, _ = crowded
    leaf = issue_certificate(victim_ca, "victim").certificate
    first, second = (_admitted(manager, leaf) for _ in range(2))
    manager.connect(first)
    manager.connect(second)
    with watched() as seen:
        picks = {manager.pick(WP, PLANE, VICTIM) for _ in range(4)}
        assert picks == {first, second}  # round-robin over the victim's own
        assert manager.serves(WP, PLANE, VICTIM)
        assert set(manager.authorized(WP, PLANE, VICTIM)) == {first, second}
        first.streams["v1"] = StreamBuffer(VICTIM, 1024)
        assert manager.pick(WP, PLANE, VICTIM, stream_cap=1) is second
        status = manager.status(WP, PLANE, VICTIM)
        assert status["connectedAgents"] == 2 and status["consentRefusedAgents"] == 0
        assert manager.pick(WP, PLANE, "nobody/here") is None
        assert not manager.serves(WP, PLANE, "nobody/here")
    assert seen.reads == 0
    squatter = manager.pick(WP, PLANE, SQUAT)  # the squatter's own CR is served as before
    assert isinstance(squatter, Squatter) and manager.serves(WP, PLANE, SQUAT)


async def test_the_victims_cr_follows_notify_without_looking_at_squatters(
    crowded: tuple[ConnectionManager, Any], victim_ca: KeyPair
) -> None:
    manager, _ = crowded
    planes = manager._planes
    planes.upsert(_entry("victim/second", victim_ca))
    victim = _admitted(manager, issue_certificate(victim_ca, "victim").certificate)
    manager.connect(victim)
    assert victim.authorized == {VICTIM, "victim/second"}
    rotated = generate_ca("victim-ca-rotated")
    await manager.reverify(WP, PLANE, VICTIM, rotated.cert_pem)  # its CA changed: revoked
    with watched() as seen:
        assert manager.pick(WP, PLANE, VICTIM) is None
        assert not manager.serves(WP, PLANE, VICTIM)
        assert manager.pick(WP, PLANE, "victim/second") is victim  # the other CR stays
    assert seen.reads == 0 and not victim.ws.closed
    await manager.reverify(WP, PLANE, VICTIM, victim_ca.cert_pem)  # and back: granted
    planes.upsert(_entry("victim/later", victim_ca))  # a CR made after the agent connected
    await manager.reverify(WP, PLANE, "victim/later", victim_ca.cert_pem)
    with watched() as seen:
        assert manager.pick(WP, PLANE, VICTIM) is victim
        assert manager.pick(WP, PLANE, "victim/later") is victim
    assert seen.reads == 0
    manager.disconnect(victim)
    with watched() as seen:
        assert manager.pick(WP, PLANE, VICTIM) is None
        assert manager.pick(WP, PLANE, "victim/second") is None
        assert manager.status(WP, PLANE, VICTIM)["connected"] is False
    assert seen.reads == 0


def test_the_victims_streams_are_counted_without_looking_at_squatters(
    crowded: tuple[ConnectionManager, Any], victim_ca: KeyPair
) -> None:
    manager, _ = crowded
    victim = _admitted(manager, issue_certificate(victim_ca, "victim").certificate)
    victim.streams["before"] = StreamBuffer(VICTIM, 1024)  # opened before it was registered
    manager.connect(victim)
    with watched() as seen:
        assert manager.streams_of(WP, PLANE, VICTIM) == 1
        victim.streams["a"] = StreamBuffer(VICTIM, 1024)
        victim.streams["b"] = StreamBuffer(VICTIM, 1024)
        assert manager.streams_of(WP, PLANE, VICTIM) == 3
        assert victim.streams.pop("a", None) is not None
        assert victim.streams.pop("a", None) is None  # released twice: counted once
        del victim.streams["b"]
        assert manager.streams_of(WP, PLANE, VICTIM) == 1
        assert manager.streams_of(WP, PLANE, "nobody/here") == 0
    assert seen.reads == 0
    assert manager.streams_of(WP, PLANE, SQUAT) == SQUATTERS  # theirs, on their connections
    manager.disconnect(victim)  # its streams end with it
    assert manager.streams_of(WP, PLANE, VICTIM) == 0
    victim.streams["late"] = StreamBuffer(VICTIM, 1024)  # a connection gone counts nothing
    assert manager.streams_of(WP, PLANE, VICTIM) == 0
    victim.streams.pop("before")
    assert manager.streams_of(WP, PLANE, VICTIM) == 0


def test_a_connect_or_disconnect_looks_at_no_other_connection(
    crowded: tuple[ConnectionManager, Any], victim_ca: KeyPair, squat_ca: KeyPair
) -> None:
    manager, metrics = crowded
    gauge = "workflowplane_gateway_connected_agents"
    agents = SQUATTERS // 2
    assert metrics.registry.get_sample_value(gauge, {"plane_id": PLANE}) == agents
    victim = _admitted(manager, issue_certificate(victim_ca, "victim").certificate)
    one_more = _admitted(manager, issue_certificate(squat_ca, "s").certificate, instance="x")
    with watched() as seen:
        manager.connect(victim)
        manager.connect(one_more)
        manager.connect(one_more)  # registered again: counted once
        assert metrics.registry.get_sample_value(gauge, {"plane_id": PLANE}) == agents + 2
        manager.disconnect(one_more)
        manager.disconnect(victim)
    assert seen.reads == 0
    assert metrics.registry.get_sample_value(gauge, {"plane_id": PLANE}) == agents


def test_an_event_names_a_bounded_number_of_agents(
    crowded: tuple[ConnectionManager, Any], victim_ca: KeyPair
) -> None:
    manager, _ = crowded
    events = manager.subscribe()
    victim = _admitted(manager, issue_certificate(victim_ca, "victim").certificate, instance="v")
    manager.connect(victim)
    manager.disconnect(victim)
    connected, disconnected = events.get_nowait(), events.get_nowait()
    agents = SQUATTERS // 2
    assert (connected["connectedAgents"], disconnected["connectedAgents"]) == (agents + 1, agents)
    for event in (connected, disconnected):
        assert len(event["agents"]) == EVENT_AGENTS and event["agents"] == sorted(event["agents"])
        assert event["agentsOmitted"] == event["connectedAgents"] - EVENT_AGENTS
        assert len(json.dumps(event)) < 1500  # 38 KB at 3,000 connections before
    assert connected["crKeys"] == [VICTIM] and connected["planeID"] == PLANE
    assert set(connected["agents"]) <= {f"squat-{n}" for n in range(agents)}


def test_an_event_names_every_agent_up_to_the_cap(victim_ca: KeyPair, squat_ca: KeyPair) -> None:
    """Below the cap an event lists all of a plane's instances, sorted, as before; one agent
    connected twice is one; and its size stops growing at the cap."""
    manager, _ = _manager(victim_ca, squat_ca)
    events = manager.subscribe()
    leaf = issue_certificate(squat_ca, "squatter").certificate
    sizes = []
    for n in range(EVENT_AGENTS * 3):
        manager.connect(_admitted(manager, leaf, instance=f"i-{n:03}"))
        manager.connect(_admitted(manager, leaf, instance=f"i-{n:03}"))  # the same agent
        event = events.get_nowait()
        assert event["connectedAgents"] == n + 1
        assert event["agents"] == [f"i-{k:03}" for k in range(min(n + 1, EVENT_AGENTS))]
        events.get_nowait()
        sizes.append(len(json.dumps(event)))
    past_the_cap = sizes[EVENT_AGENTS:]
    assert max(past_the_cap) - min(past_the_cap) <= 2  # the counts' digits, no more


# ---- one certificate's connections ---------------------------------------------------------


def _peer(leaf: x509.Certificate) -> Any:
    der = leaf.public_bytes(serialization.Encoding.DER)

    class Peer:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            return der

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self if name == "ssl_object" else default

    return Peer()


def _fill(manager: ConnectionManager, leaf: x509.Certificate, n: int) -> list[AgentConnection]:
    conns = [_admitted(manager, leaf) for _ in range(n)]
    for conn in conns:
        manager.connect(conn)
    return conns


def test_one_certificate_holds_at_most_the_cap_and_its_least_recently_heard_go_first(
    victim_ca: KeyPair, squat_ca: KeyPair
) -> None:
    """Refusing the newcomer kept a live agent out while its half-open connections lingered
    (until dead-after); its own oldest connections go instead, and only its own."""
    manager, _ = _manager(victim_ca, squat_ca)
    leaf = issue_certificate(victim_ca, "agent").certificate
    other = _fill(manager, issue_certificate(victim_ca, "another").certificate, 3)
    held = _fill(manager, leaf, MAX_CONNECTIONS_PER_LEAF)
    for n, conn in enumerate(held):
        conn.seen_at = 1000.0 + n
    held[5].seen_at = 1.0  # heard from least recently
    assert manager.make_room(issue_certificate(victim_ca, "a third").certificate) == []
    replaced = manager.make_room(leaf)
    assert replaced == [held[5]] and held[5].close_reason == "replaced"
    assert held[5] not in manager.for_plane(WP, PLANE)
    assert all(conn in manager.for_plane(WP, PLANE) for conn in other)
    newest = _fill(manager, leaf, 1)[0]
    assert len([c for c in manager.for_plane(WP, PLANE) if c.leaf == leaf]) == (
        MAX_CONNECTIONS_PER_LEAF
    )
    assert newest in manager.for_plane(WP, PLANE)


async def test_an_upgrade_past_its_certificates_cap_closes_the_oldest_and_is_served(
    victim_ca: KeyPair, squat_ca: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, metrics = _manager(victim_ca, squat_ca)
    endpoint = AgentEndpoint(manager, GatewayConfig(), metrics)
    leaf = issue_certificate(victim_ca, "agent").certificate
    held = _fill(manager, leaf, MAX_CONNECTIONS_PER_LEAF)
    closed: list[int] = []

    async def close(*, code: int = 1000, message: bytes = b"") -> bool:
        closed.append(code)
        return True

    for conn in held:
        conn.ws.close = close  # type: ignore[method-assign]
    monkeypatch.setattr(agent_endpoint, "peer_chain", lambda _request: (leaf,))
    app = web.Application()
    app.router.add_routes(endpoint.routes())
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect(f"/ws?planeType={WP}&planeID={PLANE}")
        await until(lambda: closed == [WSCloseCode.POLICY_VIOLATION])
        mine = [c for c in manager.for_plane(WP, PLANE) if c.leaf == leaf]
        assert len(mine) == MAX_CONNECTIONS_PER_LEAF and held[0] not in mine
        await ws.close()
        await endpoint.close()


def test_a_certificates_connections_that_ended_leave_its_count(
    victim_ca: KeyPair, squat_ca: KeyPair
) -> None:
    """Kept after they ended, they would be counted, and chosen, as the oldest to close."""
    manager, _ = _manager(victim_ca, squat_ca)
    leaf = issue_certificate(victim_ca, "agent").certificate
    held = _fill(manager, leaf, MAX_CONNECTIONS_PER_LEAF)
    manager.disconnect(held[0])
    assert manager.make_room(leaf) == []
    assert manager._leaves[held[1].fingerprint].keys() == {c.id for c in held[1:]}
    for conn in held[1:]:
        manager.disconnect(conn)
    assert manager._leaves == {}
