"""Three gateway replicas as processes, planes whose agents dial all of them or one, and the
real controller given every replica (issue #12's "Done when", docs/ha.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import AsyncClient

from tests.integration.ha.fleet import Fleet, fleet_of
from tests.integration.harness import (
    RunningAgent,
    agent_ca,
    apply,
    eventually,
    prepare_agent,
    start_agent,
    unique,
    workflow_plane_cr,
)
from tests.integration.runs.conftest import plane_crds  # noqa: F401 (a fixture used here)
from workflowplane.agent.config import AgentConfig
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import async_client, gateway_server_ca


@pytest.fixture
async def kube(control_plane: ApiServer) -> AsyncIterator[AsyncClient]:
    client = async_client(control_plane.kubeconfig, control_plane.context)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def fleet(
    control_plane: ApiServer, crds: Path, kube: AsyncClient, tmp_path: Path
) -> AsyncIterator[Fleet]:
    async with fleet_of(control_plane, kube, tmp_path, f"gw-{uuid.uuid4().hex[:6]}", 3) as f:
        yield f


@dataclass
class Planes:
    """Makes agents for planes behind the fleet, and stops them when the test ends."""

    control_plane: ApiServer
    workflow_plane: ApiServer
    fleet: Fleet
    server_ca: Path
    agents: list[RunningAgent]

    def config(self, plane_id: str, urls: str) -> AgentConfig:
        """Our agent dialling ``urls``: every replica (comma-separated) or one."""
        several = "," in urls
        return AgentConfig(
            server_url="" if several else urls,
            server_urls=(urls,) if several else (),
            plane_id=plane_id,
            server_ca_file=self.server_ca,
            secret_name=unique("agent-tls"),
            kubeconfig=self.workflow_plane.kubeconfig,
            context=self.workflow_plane.context,
            reconnect_initial_seconds=0.2,
            reconnect_max_seconds=2.0,
        )

    async def agent(self, urls: str, cr: dict[str, object]) -> RunningAgent:
        """An agent for the plane of CR ``cr`` (its client CA filled in), connected to every
        replica in ``urls``."""
        spec = cr["spec"]
        assert isinstance(spec, dict)
        prepared = await prepare_agent(self.config(spec["planeID"], urls))
        ca = agent_ca(self.workflow_plane, prepared.config.secret_name)
        spec["clusterAgent"] = {"clientCA": {"value": ca}}
        apply(self.control_plane, cr)
        running = await start_agent(prepared, wait=False)
        self.agents.append(running)
        await eventually(lambda: _all_up(running.agent.tunnel.replicas), timeout=60)
        return running

    async def workflow_plane_agent(self, namespace: str, name: str, urls: str) -> str:
        """WorkflowPlane ``namespace/name`` and its agent; its planeID."""
        plane_id = unique("ha")
        await self.agent(urls, workflow_plane_cr(name, namespace, plane_id, ca_pem=""))
        return plane_id


def _all_up(replicas: dict[object, bool]) -> bool:
    return bool(replicas) and all(replicas.values())


@pytest.fixture
async def planes(
    control_plane: ApiServer, workflow_plane: ApiServer, fleet: Fleet, tmp_path: Path
) -> AsyncIterator[Planes]:
    server_ca = gateway_server_ca(
        control_plane.kubeconfig, control_plane.context, tmp_path / "server-ca.crt"
    )
    made = Planes(control_plane, workflow_plane, fleet, server_ca, [])
    try:
        yield made
    finally:
        for running in made.agents:
            await running.stop()
