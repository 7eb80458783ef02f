"""Each agent series moves when its event happens: a connection admitted and ended (by
reason), requests and streams in flight, frame sizes both ways, upstream requests by verb
and code; and the readiness checks (gateway connection, API server) fail and recover. The
gateway is an aiohttp WebSocket server on loopback; the API server a local aiohttp app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.agent.stand_ins import Gateway, Upstream, plain_fleet, plain_tunnel, serving, until
from workflowplane.agent.health import AgentHealth, ApiServerCheck
from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.metrics import AgentMetrics
from workflowplane.agent.tunnel import AgentTunnel, FrameServer
from workflowplane.agent.upstream import Upstream as RealUpstream
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.protocol import StreamChunk, StreamInit, TunnelRequest, encode


def value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ---- requests and streams in flight -------------------------------------------------------


async def test_requests_and_streams_are_in_flight_until_they_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream()
    sent: list[dict[str, Any]] = []

    async def send(data: bytes) -> None:
        sent.append(json.loads(data))

    server = FrameServer(upstream, send, timeout=5, max_concurrent=4)  # type: ignore[arg-type]
    metrics = server.metrics
    with caplog.at_level(logging.DEBUG, logger="workflowplane.agent.metrics"):
        server.dispatch(encode(TunnelRequest(request_id="r1", path="/api/v1/pods")))
        server.dispatch(encode(StreamInit(request_id="s1", path="/api/v1/pods", query="watch=1")))
        assert value(metrics, "workflowplane_agent_requests_in_flight") == 1
        assert value(metrics, "workflowplane_agent_streams_in_flight") == 1
        upstream.gate.set()
        await until(lambda: value(metrics, "workflowplane_agent_requests_in_flight") == 0)
        assert value(metrics, "workflowplane_agent_streams_in_flight") == 1
        server.dispatch(encode(StreamChunk(request_id="s1", is_close=True)))  # the gateway's
        await server.idle()
    assert value(metrics, "workflowplane_agent_streams_in_flight") == 0
    ends = {
        r.request_id: r.getMessage()  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "workflowplane.agent.metrics"
    }
    assert ends["r1"].startswith("served GET /api/v1/pods (request r1)")
    assert ends["s1"].startswith("served GET /api/v1/pods (request s1)")  # its end is a stop


async def test_a_request_the_agent_fails_is_one_warning_with_its_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send(_: bytes) -> None:
        pass

    server = FrameServer(Upstream(), send, timeout=5, max_concurrent=1)  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="workflowplane.agent.tunnel"):
        server.dispatch(encode(TunnelRequest(request_id="r9", target="nowhere")))
        await server.idle()
    (line,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (line.request_id, line.code) == ("r9", 404)  # type: ignore[attr-defined]


# ---- upstream requests --------------------------------------------------------------------

UPSTREAM = "workflowplane_agent_upstream_request_duration_seconds_count"


async def test_upstream_requests_are_timed_by_verb_and_code() -> None:
    metrics = AgentMetrics()

    async def pods(request: web.Request) -> web.Response:
        return web.Response(status=404 if "name" in request.match_info else 200)

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    app.router.add_get("/api/v1/namespaces/ns/pods/{name}", pods)
    async with TestServer(app) as api:
        port = api.port
        upstream = RealUpstream(KubeTarget.from_server(f"http://127.0.0.1:{port}"), 1 << 20)
        upstream.observe(metrics.upstream_observed)
        try:
            for path, query in (
                ("/api/v1/pods", ""),
                ("/api/v1/namespaces/ns/pods/p", ""),
                ("/api/v1/pods", "watch=1"),
            ):
                await upstream.request("GET", path, query, None, b"", 10)
        finally:
            await upstream.close()
    closed = RealUpstream(KubeTarget.from_server(f"http://127.0.0.1:{port}"), 1 << 20)
    closed.observe(metrics.upstream_observed)
    with pytest.raises(ConnectionRefusedError):
        await closed.request("GET", "/", "", None, b"", 10)
    await closed.close()
    assert value(metrics, UPSTREAM, verb="list", code="200") == 1
    assert value(metrics, UPSTREAM, verb="get", code="404") == 1
    assert value(metrics, UPSTREAM, verb="watch", code="200") == 1
    assert value(metrics, UPSTREAM, verb="get", code="error") == 1


# ---- the connection to the gateway ---------------------------------------------------------


@contextlib.asynccontextmanager
async def tunnel_to(
    gateway: Gateway, **options: Any
) -> AsyncIterator[tuple[AgentTunnel, asyncio.Task[None]]]:
    async with serving(gateway):
        tunnel = plain_tunnel(gateway.url, **options)
        task = asyncio.create_task(tunnel.run())
        try:
            yield tunnel, task
        finally:
            await cancel_and_wait([task])


DISCONNECTIONS = "workflowplane_agent_disconnections_total"


async def _serve_until_closed(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


async def test_connections_and_their_ends_are_counted_by_reason() -> None:
    hold = asyncio.Event()

    async def first(ws: web.WebSocketResponse) -> None:
        # an upgrade the agent refuses (a frame each way), then close when told to
        await ws.send_bytes(encode(StreamInit(request_id="x", is_upgrade=True)))
        await hold.wait()
        await ws.close()

    gateway = Gateway(first)
    async with tunnel_to(gateway) as (tunnel, task):
        metrics = tunnel.metrics

        def connections(count: int) -> Callable[[], bool]:
            total = "workflowplane_agent_connections_total"
            return lambda: value(metrics, total) == count and tunnel.connected.is_set()

        await until(connections(1))
        assert value(metrics, "workflowplane_agent_connected") == 1
        out = "workflowplane_agent_frame_bytes_count"
        await until(lambda: value(metrics, out, direction="out") == 1)
        assert value(metrics, out, direction="in") == 1
        gateway.script = _serve_until_closed  # the next connections stay open
        hold.set()  # the gateway closes the first one
        await until(connections(2))
        assert value(metrics, DISCONNECTIONS, reason="gateway-closed") == 1
        tunnel.reconnect_requested.set()  # a new certificate: the agent closes and redials
        await until(connections(3))
        assert value(metrics, DISCONNECTIONS, reason="reconnect-requested") == 1
        await cancel_and_wait([task])  # the agent stops
    assert value(metrics, DISCONNECTIONS, reason="shutdown") == 1
    assert value(metrics, "workflowplane_agent_connected") == 0


async def test_a_silent_gateway_ends_the_connection_as_a_timeout() -> None:
    async with tunnel_to(Gateway(_serve_until_closed), dead_after=0.2) as (tunnel, _):
        await until(lambda: value(tunnel.metrics, DISCONNECTIONS, reason="timeout") >= 1)


async def test_traffic_keeps_the_connection_alive_longer_than_the_silence_allowed() -> None:
    """Every message counts as traffic: pings for five times the dead-after keep the
    connection, and the silence after them ends it."""
    pinged = asyncio.Event()

    async def ping_then_fall_silent(ws: web.WebSocketResponse) -> None:
        for _ in range(20):
            await ws.ping()
            await asyncio.sleep(0.05)
        pinged.set()
        await _serve_until_closed(ws)

    async with tunnel_to(Gateway(ping_then_fall_silent), dead_after=0.2) as (tunnel, _):
        timeouts = partial(value, tunnel.metrics, DISCONNECTIONS, reason="timeout")
        await until(lambda: pinged.is_set() or timeouts() >= 1)
        assert pinged.is_set() and timeouts() == 0
        await until(lambda: value(tunnel.metrics, DISCONNECTIONS, reason="timeout") >= 1)


# ---- readiness --------------------------------------------------------------------------------


async def test_ready_only_with_an_admitted_connection() -> None:
    upstream = Upstream()
    upstream.gate.set()
    gateway = Gateway(_serve_until_closed)
    async with serving(gateway):
        tunnel = plain_fleet((gateway.url,))
        task = asyncio.create_task(tunnel.run())
        health = AgentHealth(tunnel, upstream)  # type: ignore[arg-type]
        await tunnel.connected.wait()
        ready = await health.health.ready()
        assert all(v.ok for v in ready.values()), ready
        gateway.script = lambda ws: ws.close()  # from now on, every connection ends at once
        for ws in gateway.sockets:
            await ws.close()
        await until(lambda: not tunnel.connected.is_set())
        verdicts = await health.health.ready()
        assert not verdicts["gateway"].ok and "no connection admitted" in verdicts["gateway"].detail
        assert (await health.health.live())["event-loop"].ok  # a gateway down is no restart
        await cancel_and_wait([task])


async def test_the_api_server_check_fails_recovers_and_is_cached() -> None:
    upstream = Upstream(status=503)
    upstream.gate.set()
    check = ApiServerCheck(upstream, cache=0.0)  # type: ignore[arg-type]
    failing = await check()
    assert not failing.ok and "answered 503: not ready" in failing.detail
    upstream.status = 200
    assert (await check()).ok
    cached = ApiServerCheck(upstream, cache=60.0)  # type: ignore[arg-type]
    await asyncio.gather(cached(), cached(), cached())
    assert upstream.asked == 3  # two above, then one for three concurrent probes
