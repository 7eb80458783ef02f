"""The agent's health listener over HTTP: a wedged loop fails liveness and heals; readiness
names the missing gateway connection, and /metrics serves the agent's own registry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.unit.agent.stand_ins import Upstream, until
from workflowplane.agent.health import AgentHealth
from workflowplane.agent.metrics import AgentMetrics


@dataclass
class Tunnel:
    """What the health checks read of the agent's tunnel."""

    url: str = "wss://gateway.example:8443/ws?planeType=workflowplane&planeID=p"
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)

    def describe(self) -> str:
        return f"0 of 1 gateway replicas connected: {self.url} down"


async def _get(port: int, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        if path == "/metrics":
            return response.status, await response.text()
        return response.status, await response.json()


async def test_a_wedged_loop_fails_liveness_and_heals() -> None:
    health = AgentHealth(Tunnel(), Upstream(), loop_limit=0.3)  # type: ignore[arg-type]
    await health.start("127.0.0.1", 0)
    assert health.port is not None
    try:
        assert (await _get(health.port, "/healthz"))[0] == 200
        time.sleep(1.0)  # noqa: ASYNC251 - the wedge under test: the loop runs nothing
        status, body = await _get(health.port, "/healthz")
        assert status == 503 and "event loop stalled" in body["failing"]["event-loop"]
        await until(lambda: health.health.loop.verdict().ok)
        assert (await _get(health.port, "/healthz"))[0] == 200
    finally:
        await health.close()


async def test_readiness_names_what_is_missing_and_metrics_are_the_agents() -> None:
    tunnel, upstream = Tunnel(), Upstream()
    upstream.gate.set()
    health = AgentHealth(tunnel, upstream)  # type: ignore[arg-type]
    await health.start("127.0.0.1", 0)
    assert health.port is not None
    try:
        status, body = await _get(health.port, "/readyz")
        assert status == 503 and set(body["failing"]) == {"gateway"}
        detail = body["failing"]["gateway"]
        assert detail.startswith("no connection admitted by the gateway (0 of 1")
        assert "wss://gateway.example:8443/ws?planeType=workflowplane&planeID=p down" in detail
        tunnel.connected.set()
        tunnel.metrics.connection_opened()
        assert (await _get(health.port, "/ready"))[0] == 200  # OpenChoreo's name too
        status, text = await _get(health.port, "/metrics")
        assert status == 200 and "workflowplane_agent_connected 1.0" in text
    finally:
        await health.close()
