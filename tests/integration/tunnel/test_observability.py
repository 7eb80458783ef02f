"""Health and metrics of a real gateway and agent: the agent is ready only while it holds an
admitted connection (and again once it has one), every series moves when its event happens,
and one request's requestID is on the gateway's and the agent's log lines alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    RunningGateway,
    agent_ca,
    apply,
    eventually,
    registered_agent,
    workflow_plane_cr,
)
from workflowplane.agent.runner import Agent
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
WP = "workflowplane"


@contextlib.asynccontextmanager
async def serving(prepared: Agent) -> AsyncIterator[Agent]:
    """The agent as ``wpctl agent`` runs it (``serve``: with its health listener), on a free
    loopback port; ``prepared``'s identity Secret exists already."""
    await prepared.upstream.close()
    agent = Agent(replace(prepared.config, health_host="127.0.0.1", health_port=0))
    task = asyncio.create_task(agent.serve())
    try:
        await eventually(lambda: agent.health.port is not None)
        yield agent
    finally:
        await cancel_and_wait([task])


async def probe(agent: Agent, path: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{agent.health.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if path == "/metrics":
            return response.status, await response.text()
        return response.status, await response.json()


def gateway_sample(gw: RunningGateway, name: str, **labels: str) -> float:
    return gw.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def agent_sample(agent: Agent, name: str, **labels: str) -> float:
    return agent.tunnel.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_agent_is_ready_only_while_it_holds_an_admitted_connection(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id, prepared = await registered_agent(
        control_plane, workflow_plane, gw, namespace, "health"
    )
    await eventually(lambda: gw.gateway.planes.for_plane(plane_id))
    async with serving(prepared) as agent:

        async def ready() -> bool:
            return (await probe(agent, "/readyz"))[0] == 200

        await eventually(ready, timeout=15)
        status, metrics = await probe(agent, "/metrics")
        assert status == 200 and "workflowplane_agent_connected 1.0" in metrics

        # The CR goes: the gateway's own watch revokes it, and closes the agent it leaves
        # authorized for nothing (no notify needed); every redial is refused.
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "delete",
            "workflowplanes.openchoreo.dev",
            "wp",
            "-n",
            namespace,
        )
        await eventually(lambda: not gw.gateway.planes.for_plane(plane_id))

        async def unready() -> Any:
            status, body = await probe(agent, "/readyz")
            return status == 503 and body

        body = await eventually(unready, timeout=15)
        assert "no connection admitted by the gateway" in body["failing"]["gateway"]
        assert (await probe(agent, "/healthz"))[0] == 200  # not wedged: no restart
        assert agent_sample(agent, "workflowplane_agent_connected") == 0
        disconnected = "workflowplane_gateway_agent_disconnections_total"
        assert gateway_sample(gw, disconnected, plane_id=plane_id, reason="not-authorized") == 1
        assert (
            agent_sample(agent, "workflowplane_agent_disconnections_total", reason="gateway-closed")
            == 1
        )

        # The CR is back: the agent is admitted at its next attempt, and ready again.
        ca = agent_ca(workflow_plane, agent.config.secret_name)
        apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=ca))
        await eventually(ready, timeout=15)
        connections = "workflowplane_gateway_agent_connections_total"
        assert gateway_sample(gw, connections, plane_id=plane_id) == 2
        assert agent_sample(agent, "workflowplane_agent_connections_total") == 2


async def test_one_request_is_counted_on_both_sides_and_joined_by_its_request_id(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane_id, prepared = await registered_agent(
        control_plane, workflow_plane, gw, namespace, "metrics"
    )
    await eventually(lambda: gw.gateway.planes.for_plane(plane_id))
    async with serving(prepared) as agent:
        await asyncio.wait_for(agent.tunnel.connected.wait(), 15)
        caplog.set_level(logging.DEBUG, logger="workflowplane.gateway.answers")
        caplog.set_level(logging.DEBUG, logger="workflowplane.agent.metrics")
        reply = await gw.client.proxy(
            "GET",
            plane_type=WP,
            plane_id=plane_id,
            cr_namespace=namespace,
            cr_name="wp",
            path="/api/v1/namespaces",
        )
        assert reply.status == 200
        (gateway_line,) = [
            r
            for r in caplog.records
            if r.name.endswith("gateway.answers") and getattr(r, "plane", None) == plane_id
        ]
        rid = gateway_line.request_id  # type: ignore[attr-defined]
        assert gateway_line.levelno == logging.DEBUG and gateway_line.cr == f"{namespace}/wp"  # type: ignore[attr-defined]
        await eventually(
            lambda: any(
                getattr(r, "request_id", None) == rid
                for r in caplog.records
                if r.name.endswith("agent.metrics")
            )
        )

        requests = "workflowplane_gateway_proxy_requests_total"
        assert gateway_sample(gw, requests, plane_id=plane_id, verb="list", code="200") == 1
        latency = "workflowplane_gateway_proxy_request_seconds_count"
        assert gateway_sample(gw, latency, plane_id=plane_id, verb="list") == 1
        frames = "workflowplane_gateway_frame_bytes_count"
        assert gateway_sample(gw, frames, direction="out") >= 1
        assert gateway_sample(gw, frames, direction="in") >= 1
        upstream = "workflowplane_agent_upstream_request_duration_seconds_count"
        assert agent_sample(agent, upstream, verb="list", code="200") >= 1
        assert agent_sample(agent, "workflowplane_agent_frame_bytes_count", direction="in") >= 1
        assert agent_sample(agent, "workflowplane_agent_requests_in_flight") == 0
        assert (
            gateway_sample(gw, "workflowplane_gateway_proxy_requests_in_flight", plane_id=plane_id)
            == 0
        )
