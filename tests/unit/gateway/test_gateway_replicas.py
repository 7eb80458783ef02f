"""Replica rules that need no server (issue #12, docs/ha.md): agent instance ids,
status by agent rather than connection, Lease names and liveness, the Unsent marker, no
forwarding loops, and the order of a drain."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.drain import InFlight, drain
from workflowplane.gateway.forwarding import Forwarder, PeerDirectory, peer_server_name
from workflowplane.gateway.kube_proxy import KubeProxy, Target
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.replica import replica_name, valid_instance
from workflowplane.kits.clock import utcnow
from workflowplane.kits.dialing import Connector
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol.http import (
    AGENT_INSTANCE_HEADER,
    FORWARDED_BY_HEADER,
    UNSENT_HEADER,
)
from workflowplane.protocol.replicas import Replica, lease_name, replica_of

WP = "workflowplane"
_LEAF = issue_certificate(generate_ca("ca"), "agent").certificate


class FakeSocket:
    closed = False

    async def send_str(self, data: str) -> None:
        pass

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


def _manager(replica: str = "gw-0") -> ConnectionManager:
    return ConnectionManager(PlaneCache(None), GatewayMetrics(), replica)  # type: ignore[arg-type]


def _conn(instance: str, ident: str, plane: str = "p") -> AgentConnection:
    return AgentConnection(WP, plane, FakeSocket(), _LEAF, {"ns/wp"}, id=ident, instance=instance)


# ---- agent instances ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0f3a9c", "agent-1.a_b", "a" * 64])
def test_plain_instance_ids_pass(value: str) -> None:
    assert valid_instance(value)


@pytest.mark.parametrize("value", ["", "a" * 65, "-lead", "a b", "a\r\nX: y", "ü", "a/b"])
def test_instance_ids_outside_the_alphabet_or_bound_are_refused(value: str) -> None:
    assert not valid_instance(value)


def _endpoint(manager: ConnectionManager) -> AgentEndpoint:
    return AgentEndpoint(manager, GatewayConfig(), GatewayMetrics())


async def test_a_bad_instance_header_is_refused_with_a_400_naming_it() -> None:
    request = make_mocked_request(
        "GET", f"/ws?planeType={WP}&planeID=p", headers={AGENT_INSTANCE_HEADER: "x" * 200}
    )
    answer = await _endpoint(_manager()).handle(request)
    assert isinstance(answer, web.Response) and answer.status == 400
    assert answer.text is not None and "X-Workflowplane-Agent-Instance" in answer.text


async def test_a_draining_replica_sends_agents_elsewhere_with_503_unsent() -> None:
    endpoint = _endpoint(_manager())
    endpoint.draining = True
    answer = await endpoint.handle(make_mocked_request("GET", f"/ws?planeType={WP}&planeID=p"))
    assert isinstance(answer, web.Response) and answer.status == 503
    assert answer.headers[UNSENT_HEADER] == "1"


def test_a_connection_without_an_instance_is_an_agent_of_its_own() -> None:
    first = AgentConnection(WP, "p", FakeSocket(), _LEAF, {"ns/wp"}, id="1")
    second = AgentConnection(WP, "p", FakeSocket(), _LEAF, {"ns/wp"}, id="2")
    assert first.instance and first.instance != second.instance


# ---- status by agent ------------------------------------------------------------------------


def test_status_counts_agents_not_connections_and_names_the_replica() -> None:
    manager = _manager("gw-7")
    events = manager.subscribe()
    for conn in (_conn("agent-a", "1"), _conn("agent-a", "2"), _conn("agent-b", "3")):
        manager.connect(conn)
    for status in (manager.status(WP, "p", None), manager.status(WP, "p", "ns/wp")):
        assert status["replica"] == "gw-7"
        assert status["connectedAgents"] == 2
        assert status["agents"] == ["agent-a", "agent-b"]
    (entry,) = manager.all_status()
    assert entry["agents"] == ["agent-a", "agent-b"] and entry["replica"] == "gw-7"
    last: dict[str, Any] = {}
    while not events.empty():
        last = events.get_nowait()
    assert last["replica"] == "gw-7" and last["connectedAgents"] == 2
    assert last["instance"] == "agent-b" and last["agents"] == ["agent-a", "agent-b"]


def test_a_replica_is_named_by_its_setting_else_host_and_port() -> None:
    assert replica_name("gw-0", 8444) == "gw-0"
    assert replica_name("", 8444).endswith("-8444")


# ---- the Lease directory --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replica", "expected"),
    [
        ("cluster-gateway-6d9f-abcde", "cluster-gateway-cluster-gateway-6d9f-abcde"),
        ("Host.Example:8444", "cluster-gateway-host-example-8444"),
        ("x" * 80, "cluster-gateway-" + "x" * 47),
    ],
)
def test_lease_names_are_dns_labels(replica: str, expected: str) -> None:
    assert lease_name(replica) == expected and len(lease_name(replica)) <= 63


def _lease(renewed_ago: float, url: str = "https://10.0.0.1:8444") -> Lease:
    return Lease(
        metadata=ObjectMeta(
            name="cluster-gateway-a", annotations={"openchoreo.dev/gateway-internal-url": url}
        ),
        spec=LeaseSpec(
            holderIdentity="a",
            leaseDurationSeconds=15,
            renewTime=utcnow() - dt.timedelta(seconds=renewed_ago),
        ),
    )


def test_a_lease_past_its_duration_is_no_live_replica() -> None:
    assert replica_of(_lease(1), utcnow()) == Replica("a", "https://10.0.0.1:8444")
    assert replica_of(_lease(16), utcnow()) is None
    assert replica_of(_lease(1, "http://10.0.0.1:8444"), utcnow()) is None  # mTLS only


def test_peers_are_dialled_by_address_and_verified_by_a_name_of_the_shared_certificate() -> None:
    cert = issue_certificate(
        generate_ca("s"), "gw", client=False, server=True, dns_names=("cluster-gateway",)
    )
    assert peer_server_name(cert.cert_pem) == "cluster-gateway"


# ---- Unsent and loops -----------------------------------------------------------------------


def test_refusals_before_any_agent_are_marked_unsent() -> None:
    manager = _manager()
    proxy = KubeProxy(manager, GatewayConfig(), GatewayMetrics())
    no_agent = proxy.refusal(Target(WP, "p", "ns/wp"))
    assert no_agent is not None and no_agent.status == 502
    assert no_agent.headers[UNSENT_HEADER] == "1"
    manager.connect(_conn("agent-a", "1"))
    not_authorized = proxy.refusal(Target(WP, "p", "ns/other"))
    assert not_authorized is not None and not_authorized.status == 403
    assert not_authorized.headers[UNSENT_HEADER] == "1"


class NoPeers(PeerDirectory):
    def __init__(self) -> None:
        self.asked = 0

    async def candidates(self, target: Target) -> list[Replica]:
        self.asked += 1
        return []


async def test_a_forwarded_request_is_answered_here_and_never_forwarded_again() -> None:
    directory = NoPeers()
    async with aiohttp.ClientSession(connector=Connector()) as session:
        forwarder = Forwarder(directory, "gw-b", session, None, 5.0)  # type: ignore[arg-type]
        refusal = web.Response(status=502, headers={UNSENT_HEADER: "1"})
        forwarded = {FORWARDED_BY_HEADER: "gw-a"}
        request = make_mocked_request("GET", "/api/proxy/x", headers=forwarded)
        assert await forwarder.handle_miss(request, Target(WP, "p", "ns/wp"), refusal) is refusal
        assert directory.asked == 0
        plain = make_mocked_request("GET", "/api/proxy/x")
        assert await forwarder.handle_miss(plain, Target(WP, "p", "ns/wp"), refusal) is refusal
        assert directory.asked == 1


# ---- drain ----------------------------------------------------------------------------------


class Recorder:
    def __init__(self, in_flight: InFlight) -> None:
        self.steps: list[str] = []
        self._in_flight = in_flight
        self.stopped_admitting = asyncio.Event()

    def _note(self, step: str) -> None:
        self.steps.append(f"{step} (in flight: {self._in_flight.count})")

    def unready(self) -> None:
        self._note("unready")

    async def release_lease(self) -> None:
        self._note("release_lease")

    def stop_admitting(self) -> None:
        self._note("stop_admitting")
        self.stopped_admitting.set()

    async def close_agents(self) -> None:
        self._note("close_agents")


async def test_drain_leaves_first_refuses_new_work_and_closes_agents_after_in_flight_ends() -> None:
    in_flight = InFlight()
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="done")

    handler = in_flight.guard(slow)
    request = make_mocked_request("GET", "/api/proxy/x")
    pending = asyncio.create_task(handler(request))
    await asyncio.sleep(0)
    recorder = Recorder(in_flight)
    draining = asyncio.create_task(drain(recorder, in_flight, 30))
    await recorder.stopped_admitting.wait()
    refused = await handler(make_mocked_request("GET", "/api/proxy/y"))
    assert refused.status == 503 and refused.headers[UNSENT_HEADER] == "1"
    assert not draining.done()
    release.set()
    assert (await pending).status == 200
    await draining
    assert recorder.steps == [
        "unready (in flight: 1)",
        "release_lease (in flight: 1)",
        "stop_admitting (in flight: 1)",
        "close_agents (in flight: 0)",
    ]


async def test_drain_closes_agents_when_its_time_is_up() -> None:
    in_flight = InFlight()
    never = asyncio.Event()

    async def stuck(_request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.Response()

    pending = asyncio.create_task(in_flight.guard(stuck)(make_mocked_request("GET", "/x")))
    await asyncio.sleep(0)
    recorder = Recorder(in_flight)
    await drain(recorder, in_flight, 0.01)
    assert recorder.steps[-1] == "close_agents (in flight: 1)"
    pending.cancel()


class TwoPeers:
    async def candidates(self, target: Target) -> list[Replica]:
        return [Replica("gw-a", "https://127.0.0.1:1"), Replica("gw-c", "https://127.0.0.1:2")]


async def test_a_peer_uvloop_cannot_dial_is_passed_like_an_unreachable_one() -> None:
    """uvloop's descriptor bug (MagicStack/uvloop#653) fails a dial before a byte is sent:
    the next peer is tried, and with none left the caller gets the Unsent refusal, not the
    500 that aiohttp's RuntimeError made of it."""
    dialled: list[int] = []

    def clash(addr_info: Any) -> socket.socket:
        dialled.append(addr_info[4][1])
        raise RuntimeError("File descriptor 57 is used by transport <TCPTransport closed=False>")

    async with aiohttp.ClientSession(connector=Connector(socket_factory=clash)) as session:
        forwarder = Forwarder(TwoPeers(), "gw-b", session, None, 5.0)  # type: ignore[arg-type]
        refusal = web.Response(status=502, headers={UNSENT_HEADER: "1"})
        plain = make_mocked_request("GET", "/api/proxy/x")
        answer = await forwarder.handle_miss(plain, Target(WP, "p", "ns/wp"), refusal)
    assert answer.status == 502 and UNSENT_HEADER in answer.headers
    assert dialled == [1, 2]


class CuttingPeer:
    """A peer that reads a request's head and then dies (kill -9 mid-request): its
    connection ends with no answer, so the request may have reached its agent."""

    def __init__(self) -> None:
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.transport.abort()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


class NoAgentPeer:
    """A peer that has no agent of the plane either: 502, Unsent."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=502, text="no agent at gw-c", headers={UNSENT_HEADER: "1"})


class ListedPeers:
    def __init__(self, *urls: str) -> None:
        self.urls = urls

    async def candidates(self, target: Target) -> list[Replica]:
        return [Replica(f"gw-{i}", url) for i, url in enumerate(self.urls)]


async def _miss_with(
    method: str, first: contextlib.AbstractAsyncContextManager[str]
) -> tuple[web.StreamResponse, int]:
    """``method`` missed locally, forwarded to ``first`` (a peer that fails in some way),
    then to a peer with no agent either: the answer, and how often that second peer was
    asked."""
    no_agent = NoAgentPeer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", no_agent.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with first as url, aiohttp.ClientSession(connector=Connector()) as session:
            peers = ListedPeers(url, f"http://127.0.0.1:{port}")
            forwarder = Forwarder(peers, "gw-b", session, None, 5.0)  # type: ignore[arg-type]
            refusal = web.Response(status=502, headers={UNSENT_HEADER: "1"})
            request = make_mocked_request(method, "/api/proxy/x")
            answer = await forwarder.handle_miss(request, Target(WP, "p", "ns/wp"), refusal)
    finally:
        await runner.cleanup()
    return answer, no_agent.requests


async def _miss_after_a_peer_dies(method: str) -> tuple[web.StreamResponse, int, int]:
    cutting = CuttingPeer()
    answer, next_asked = await _miss_with(method, cutting)
    return answer, cutting.requests, next_asked


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_a_read_whose_peer_died_mid_request_goes_on_to_the_next_peer(method: str) -> None:
    """The replica holding a one-connection agent killed while a forwarded GET was on it: the
    GET may run again, so the next peer is asked, and its "no agent" (Unsent) lets the
    caller wait for the agent instead of failing with "peer replica failed"."""
    answer, dying_asked, next_asked = await _miss_after_a_peer_dies(method)
    assert dying_asked == 1 and next_asked == 1
    assert answer.status == 502 and answer.headers.get(UNSENT_HEADER) == "1"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_a_write_whose_peer_died_mid_request_is_not_sent_again(method: str) -> None:
    answer, dying_asked, next_asked = await _miss_after_a_peer_dies(method)
    assert dying_asked == 1 and next_asked == 0
    assert answer.status == 502 and UNSENT_HEADER not in answer.headers
    assert b"peer replica gw-0 failed" in answer.body  # type: ignore[attr-defined]


class SilentPeer:
    """A peer that accepts the connection and never answers the TLS handshake (a replica
    black-holed by the network while its Lease is still live)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def _hold(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        for writer in self.held:
            writer.transport.abort()
        self.server.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_peer_that_never_completes_the_connection_is_passed_for_the_next(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's connect timeout is a TimeoutError, not a connector error: it had become a
    502 "Timeout" for every method, though nothing was sent to that peer."""
    monkeypatch.setattr("workflowplane.gateway.forwarding.CONNECT_SECONDS", 0.2)
    answer, next_asked = await _miss_with(method, SilentPeer())
    assert next_asked == 1
    assert answer.status == 502 and answer.headers.get(UNSENT_HEADER) == "1"
