"""One agent, several of our gateway replicas (issue #12): the agent holds a connection to
every replica it finds, by list or by every address of a DNS name (each dialled with the
name as TLS server name), re-joins a replica that restarts, and drops one that leaves the
discovery; any replica then serves the plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    RunningGateway,
    eventually,
    registered_agent,
    start_agent,
    start_gateway,
)
from tests.integration.tunnel.test_proxy import _proxy
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import Agent
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration
WP = "workflowplane"


@dataclass
class Replicas:
    """Gateway replicas on the session's control plane (stopped when the test ends), and one
    plane every replica knows."""

    control_plane: ApiServer
    workflow_plane: ApiServer
    tmp_path: Path
    namespace: str
    gateways: list[RunningGateway] = field(default_factory=list)

    async def start(self, **overrides: Any) -> RunningGateway:
        """One more replica (``host``, ``public_port``: a headless Service's shape)."""
        self.gateways.append(await start_gateway(self.control_plane, self.tmp_path, **overrides))
        return self.gateways[-1]

    async def stop(self, index: int) -> int:
        """Stop replica ``index``; its public port, to start it again on."""
        await self.gateways[index].stop()
        return self.gateways[index].gateway.ports["public"]

    async def start_again(self, index: int, public_port: int) -> RunningGateway:
        self.gateways[index] = await start_gateway(
            self.control_plane, self.tmp_path, public_port=public_port
        )
        return self.gateways[index]

    async def plane(self) -> tuple[str, AgentConfig]:
        """A new plane (CR ``wp`` trusting a new agent identity) every replica knows, and the
        agent's settings, to be given the replicas."""
        plane_id, prepared = await registered_agent(
            self.control_plane, self.workflow_plane, self.gateways[0], self.namespace, "ha"
        )
        for gateway in self.gateways:  # every replica knows the CR before the agent dials
            await eventually(lambda gateway=gateway: gateway.gateway.planes.for_plane(plane_id))
        await prepared.upstream.close()  # it made the identity; the agent under test runs
        return plane_id, prepared.config


@pytest.fixture
async def ha(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    crds: Path,
    tmp_path: Path,
    namespace: str,
) -> AsyncIterator[Replicas]:
    replicas = Replicas(control_plane, workflow_plane, tmp_path, namespace)
    try:
        yield replicas
    finally:
        for gateway in replicas.gateways:
            await gateway.stop()


def agents_on(replica: RunningGateway, plane_id: str) -> int:
    """Connections of the plane's agents this replica holds (its status' connectedAgents)."""
    return len(replica.gateway.connections.for_plane(WP, plane_id))


async def wait_connected(replica: RunningGateway, plane_id: str, count: int = 1) -> None:
    await eventually(lambda: agents_on(replica, plane_id) == count, timeout=20)


async def test_the_agent_connects_to_every_listed_replica_and_rejoins_a_restarted_one(
    ha: Replicas,
) -> None:
    gateways, namespace = ha.gateways, ha.namespace
    for _ in range(3):
        await ha.start()
    plane_id, config = await ha.plane()
    urls = ",".join(f"{g.public_url}/ws" for g in gateways)
    config = replace(config, server_url="", server_urls=(urls,))
    running = await start_agent(Agent(config))
    agent = running.agent
    try:
        for gateway in gateways:
            await wait_connected(gateway, plane_id)
            status = await gateway.client.plane_status(WP, plane_id, namespace=namespace, name="wp")
            assert status["connected"] and status["connectedAgents"] == 1
            # the gateway's side of the contract reports it once merged (ha-gw)
            assert status.get("agents", [agent.instance]) == [agent.instance]
            listed = await _proxy(gateway, plane_id, namespace, "GET", "/api/v1/namespaces")
            assert listed.status == 200  # any replica serves the plane
        assert sum(agent.tunnel.replicas.values()) == 3

        port = await ha.stop(1)
        await eventually(lambda: sum(agent.tunnel.replicas.values()) == 2)
        assert agent.tunnel.connected.is_set()  # still ready: two replicas left
        await ha.start_again(1, port)
        await eventually(lambda: gateways[1].gateway.planes.for_plane(plane_id))
        await wait_connected(gateways[1], plane_id)
        # the gateway counts the connection as it upgrades it; the agent a moment later
        await eventually(lambda: sum(agent.tunnel.replicas.values()) == 3)
    finally:
        await running.stop()


async def test_every_address_of_a_name_is_a_replica_and_one_gone_is_dropped(
    ha: Replicas,
) -> None:
    gateways = ha.gateways
    port = (await ha.start(host="127.0.0.1")).gateway.ports["public"]
    for host in ("127.0.0.2", "127.0.0.3"):  # a headless Service: one port, many pods
        await ha.start(host=host, public_port=port)
    plane_id, config = await ha.plane()
    addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]

    async def resolve(host: str, asked_port: int) -> list[str]:
        # the server certificate names "localhost", not these addresses: TLS checks the name
        assert (host, asked_port) == ("localhost", port)
        return list(addresses)

    config = replace(
        config,
        server_url="",
        server_dns_name=f"localhost:{port}",
        server_resolve_seconds=0.2,
    )
    running = await start_agent(Agent(config, resolver=resolve))
    agent = running.agent
    try:
        for gateway in gateways:
            await wait_connected(gateway, plane_id)
        assert {a.url for a in agent.tunnel.replicas} == {f"wss://{ip}:{port}" for ip in addresses}

        addresses.remove("127.0.0.3")  # its pod is gone from the Service
        await eventually(lambda: len(agent.tunnel.replicas) == 2)
        assert agents_on(gateways[2], plane_id) == 1  # not cut: it closes it (drain)
        await gateways[2].gateway.connections.close_all(b"draining")
        await eventually(lambda: agent.tunnel.leaving == 0)  # no redial after the close
        assert agents_on(gateways[2], plane_id) == 0
        assert agents_on(gateways[0], plane_id) == agents_on(gateways[1], plane_id) == 1
    finally:
        await running.stop()
