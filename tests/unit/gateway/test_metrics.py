"""Each gateway series moves when its event happens: agent connections and disconnections by
reason, proxied requests by plane, verb and code, latency, requests and streams in flight,
frame sizes both ways, dropped push-channel subscribers; and the push events carry the
moment of the change. Agents are stand-in sockets; the proxy is served by a real aiohttp
server, its agent answers are given by the test."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.gateway.stand_ins import LEAF
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.frames import OversizedMessage
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.kits.clock import parse_rfc3339, utcnow
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol import StreamChunk, TunnelResponse

WP = "workflowplane"


class Agent:
    """Stands in for an agent's WebSocket: keeps what the gateway sends, as JSON."""

    def __init__(self) -> None:
        self.closed = False
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send_str(self, data: str) -> None:
        await self.sent.put(json.loads(data))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True

    async def ping(self) -> None:
        pass


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def connection(plane: str = "p", key: str = "ns/wp") -> AgentConnection:
    """One of our agents (v2: it streams watches rather than answering them whole)."""
    return AgentConnection(WP, plane, Agent(), LEAF, {key}, v2=True)


def manager() -> tuple[ConnectionManager, GatewayMetrics]:
    metrics = GatewayMetrics()
    return ConnectionManager(PlaneCache(None), metrics), metrics  # type: ignore[arg-type]


# ---- connections --------------------------------------------------------------------------

CONNECTIONS = "workflowplane_gateway_agent_connections_total"
DISCONNECTIONS = "workflowplane_gateway_agent_disconnections_total"


def test_connections_and_disconnections_count_per_plane() -> None:
    connections, metrics = manager()
    first, second = connection(), connection()
    connections.connect(first)
    connections.connect(second)
    connections.connect(connection("q"))
    assert sample(metrics, CONNECTIONS, plane_id="p") == 2
    connections.disconnect(first)
    connections.disconnect(first)  # a second time counts nothing
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="connection-closed") == 1
    assert sample(metrics, DISCONNECTIONS, plane_id="q", reason="connection-closed") == 0


async def test_each_close_the_gateway_decides_counts_with_its_reason() -> None:
    connections, metrics = manager()
    revoked, reset, shut = connection(key="ns/gone"), connection("r"), connection("s")
    for conn in (revoked, reset, shut):
        connections.connect(conn)
    await connections.reverify(WP, "p", "ns/gone", None)  # the CR is gone: nothing admits it
    await connections.close_plane(WP, "r", b"reconnect")
    await connections.close_all(b"bye")
    for conn in (revoked, reset, shut):
        assert conn.ws.closed
        connections.disconnect(conn)  # what /ws does when the socket ends
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="not-authorized") == 1
    assert sample(metrics, DISCONNECTIONS, plane_id="r", reason="reconnect-requested") == 1
    assert sample(metrics, DISCONNECTIONS, plane_id="s", reason="gateway-shutdown") == 1


def _endpoint(**config: Any) -> tuple[AgentEndpoint, ConnectionManager, GatewayMetrics]:
    connections, metrics = manager()
    return AgentEndpoint(connections, GatewayConfig(**config), metrics), connections, metrics


async def test_a_silent_agent_is_closed_as_a_heartbeat_timeout() -> None:
    endpoint, connections, metrics = _endpoint(ping_interval_seconds=0.01, dead_after_seconds=1)
    conn = connection()
    connections.connect(conn)
    conn.last_seen = utcnow() - dt.timedelta(seconds=5)
    await endpoint._heartbeat(conn, conn.ws)  # type: ignore[arg-type]
    connections.disconnect(conn)
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="heartbeat-timeout") == 1


async def test_an_expired_leaf_is_closed_as_certificate_expired() -> None:
    endpoint, connections, metrics = _endpoint()
    ago = utcnow() - dt.timedelta(days=2)
    expired = issue_certificate(
        generate_ca("old"), "agent", not_before=ago, valid_for=dt.timedelta(days=1)
    ).certificate
    conn = AgentConnection(WP, "p", Agent(), expired, {"ns/wp"})
    connections.connect(conn)
    await endpoint._close_at_expiry(conn, conn.ws)  # type: ignore[arg-type]
    connections.disconnect(conn)
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="certificate-expired") == 1


@dataclass
class Message:
    type: WSMsgType
    data: Any = None


@dataclass
class Inbox:
    """What an agent's socket yields to the frame loop."""

    messages: list[Message] = field(default_factory=list)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._each()

    async def _each(self) -> AsyncIterator[Message]:
        for message in self.messages:
            yield message

    def exception(self) -> Exception:
        return ConnectionResetError("reset")


async def test_frames_from_agents_are_measured_and_a_websocket_error_is_the_reason() -> None:
    endpoint, connections, metrics = _endpoint()
    conn = connection()
    connections.connect(conn)
    inbox = Inbox(
        [
            Message(WSMsgType.TEXT, b'{"requestID": "late", "statusCode": 200}'),
            Message(WSMsgType.BINARY, OversizedMessage("r", 5000, 4000)),
            Message(WSMsgType.ERROR),
        ]
    )
    await endpoint._read_frames(conn, inbox)  # type: ignore[arg-type]
    connections.disconnect(conn)
    assert sample(metrics, "workflowplane_gateway_frame_bytes_count", direction="in") == 2
    assert sample(metrics, "workflowplane_gateway_frame_bytes_sum", direction="in") == 5000 + 40
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="protocol-error") == 1


# ---- the push channel -----------------------------------------------------------------------


def test_push_events_say_when_the_change_happened() -> None:
    connections, _ = manager()
    queue = connections.subscribe()
    before = utcnow()
    conn = connection()
    connections.connect(conn)
    connections.disconnect(conn)
    for _ in range(2):
        stamp = parse_rfc3339(queue.get_nowait()["time"])
        assert before <= stamp <= utcnow()  # sub-second: the lag is measured from it


def test_a_subscriber_that_does_not_read_is_dropped_and_counted() -> None:
    connections, metrics = manager()
    queue = connections.subscribe()
    for _ in range(queue.maxsize):
        queue.put_nowait({})  # events nobody read
    connections.connect(connection())
    assert sample(metrics, "workflowplane_gateway_event_subscribers_dropped_total") == 1
    connections.connect(connection())  # gone: not counted again
    assert sample(metrics, "workflowplane_gateway_event_subscribers_dropped_total") == 1


# ---- the proxy ------------------------------------------------------------------------------

REQUESTS = "workflowplane_gateway_proxy_requests_total"
IN_FLIGHT = "workflowplane_gateway_proxy_requests_in_flight"
STREAMS = "workflowplane_gateway_streams_in_flight"
BASE = "/api/proxy/workflowplane/p/ns/wp/k8s"


@dataclass
class Proxy:
    client: TestClient[web.Request, web.Application]
    metrics: GatewayMetrics
    conn: AgentConnection

    @property
    def agent(self) -> Agent:
        assert isinstance(self.conn.ws, Agent)
        return self.conn.ws

    def answer(self, frame: TunnelResponse | StreamChunk) -> None:
        """Deliver the agent's frame as the /ws handler would."""
        stream = self.conn.streams.get(frame.request_id)
        if stream is not None:
            if isinstance(frame, TunnelResponse):
                stream.put(frame)
            elif frame.data:
                stream.put(frame.data)
            else:
                stream.end()
            return
        assert isinstance(frame, TunnelResponse)
        self.conn.pending[frame.request_id].set_result(frame)


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    connections, metrics = manager()
    conn = connection()
    connections.connect(conn)
    app = web.Application()
    app.add_routes(KubeProxy(connections, GatewayConfig(), metrics).routes())
    app.on_response_prepare.append(AnswerLog(metrics).on_response_prepare)  # as server.py
    async with TestClient(TestServer(app)) as client:
        yield Proxy(client, metrics, conn)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG, logger="workflowplane.gateway.answers"):
        yield caplog


async def test_a_request_moves_the_counter_latency_in_flight_and_frame_sizes(
    proxy: Proxy, debug_logs: pytest.LogCaptureFixture
) -> None:
    call = asyncio.create_task(proxy.client.get(f"{BASE}/api/v1/namespaces/ns/configmaps"))
    sent = await proxy.agent.sent.get()
    assert sample(proxy.metrics, IN_FLIGHT, plane_id="p") == 1
    assert sample(proxy.metrics, "workflowplane_gateway_frame_bytes_count", direction="out") == 1
    proxy.answer(TunnelResponse(request_id=sent["requestID"], status_code=200, body=b"{}"))
    assert (await call).status == 200
    assert sample(proxy.metrics, IN_FLIGHT, plane_id="p") == 0
    assert sample(proxy.metrics, REQUESTS, plane_id="p", verb="list", code="200") == 1
    latency = "workflowplane_gateway_proxy_request_seconds_count"
    assert sample(proxy.metrics, latency, plane_id="p", verb="list") == 1
    (line,) = [r for r in debug_logs.records if r.getMessage().startswith("proxied")]
    assert line.levelno == logging.DEBUG
    assert (line.plane, line.cr, line.request_id) == ("p", "ns/wp", sent["requestID"])  # type: ignore[attr-defined]


async def test_a_stream_counts_when_it_starts_and_is_in_flight_until_it_ends(proxy: Proxy) -> None:
    path = f"{BASE}/api/v1/namespaces/ns/configmaps?watch=true"
    call = asyncio.create_task(proxy.client.get(path))
    init = await proxy.agent.sent.get()
    assert sample(proxy.metrics, STREAMS, plane_id="p") == 1
    rid = init["requestID"]
    proxy.answer(TunnelResponse(request_id=rid, status_code=200))
    response = await call  # its head is out: counted, even if the caller left now
    assert sample(proxy.metrics, REQUESTS, plane_id="p", verb="watch", code="200") == 1
    proxy.answer(StreamChunk(request_id=rid, data=b'{"type":"ADDED"}\n'))
    proxy.answer(StreamChunk(request_id=rid, is_close=True))
    assert await response.read() == b'{"type":"ADDED"}\n'
    close = await proxy.agent.sent.get()  # the gateway's own close: the handler is done
    assert close["requestID"] == rid and close["isClose"] is True
    assert sample(proxy.metrics, STREAMS, plane_id="p") == 0
    assert sample(proxy.metrics, REQUESTS, plane_id="p", verb="watch", code="200") == 1


async def test_a_failure_the_gateway_gives_itself_is_counted_and_logged_as_a_warning(
    proxy: Proxy, debug_logs: pytest.LogCaptureFixture
) -> None:
    unauthorized = await proxy.client.delete("/api/proxy/workflowplane/p/ns/other/k8s/api/v1/x/y")
    assert unauthorized.status == 403
    missing = await proxy.client.post("/api/proxy/workflowplane/nowhere/ns/wp/k8s/api/v1/pods")
    assert missing.status == 502
    assert sample(proxy.metrics, REQUESTS, plane_id="p", verb="delete", code="403") == 1
    # a planeID no agent ever connected with is not a label value of its own
    assert sample(proxy.metrics, REQUESTS, plane_id="unknown", verb="create", code="502") == 1
    lines = [r for r in debug_logs.records if r.getMessage().startswith("proxied")]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    assert lines[0].cr == "ns/other" and lines[0].request_id is None  # type: ignore[attr-defined]


async def test_an_agent_that_never_answers_gets_its_caller_a_502_and_nothing_stays() -> None:
    connections, metrics = manager()
    conn = connection()
    connections.connect(conn)
    app = web.Application()
    config = GatewayConfig(request_timeout_seconds=0.2)
    app.add_routes(KubeProxy(connections, config, metrics).routes())
    async with TestClient(TestServer(app)) as client:
        response = await client.get(f"{BASE}/api/v1/namespaces/ns/configmaps")
        assert response.status == 502
        assert "did not answer within" in (await response.json())["message"]
    assert conn.pending == {}
    assert sample(metrics, IN_FLIGHT, plane_id="p") == 0


def test_a_replaced_or_write_stalled_connection_counts_with_its_own_reason() -> None:
    """Both were counted as ``connection-closed``: an agent's own close, to a reader."""
    connections, metrics = manager()
    replaced, stalled = connection(), connection()
    for conn, why in ((replaced, "replaced"), (stalled, "write-stalled")):
        connections.connect(conn)
        conn.closing(why)
        connections.disconnect(conn)
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="replaced") == 1
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="write-stalled") == 1
    assert sample(metrics, DISCONNECTIONS, plane_id="p", reason="connection-closed") == 0
