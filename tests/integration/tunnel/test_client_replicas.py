"""Callers over two gateway replicas (real gateways, agents and API servers): a request that
reaches the replica without the agent is answered by the other, and a watch whose replica
stops resumes on the other with no event lost or repeated (docs/ha.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.harness import (
    RunningGateway,
    eventually,
    registered_agent,
    start_agent,
    start_gateway,
)
from workflowplane.protocol.gateway_client import GatewayClient
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
WP = "workflowplane"


@pytest.fixture
async def second_gateway(
    control_plane: ApiServer, crds: Path, tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    """Another replica of the same gateway (its PKI from the same Secrets)."""
    gateway = await start_gateway(control_plane, tmp_path)
    try:
        yield gateway
    finally:
        await gateway.stop()


async def callers_client(gw: RunningGateway, *replicas: RunningGateway) -> GatewayClient:
    return await GatewayClient.from_secret(gw.kube, [r.internal_url for r in replicas])


def route(plane_id: str, namespace: str) -> dict[str, str]:
    """The proxy route to the plane, on the connection authorized for CR ``namespace/wp``."""
    return {"plane_type": WP, "plane_id": plane_id, "cr_namespace": namespace, "cr_name": "wp"}


def create_configmap(workflow_plane: ApiServer, namespace: str, name: str) -> None:
    kubectl(
        workflow_plane.kubeconfig,
        workflow_plane.context,
        "create",
        "configmap",
        name,
        "-n",
        namespace,
    )


async def test_a_get_reaches_the_replica_with_the_agent(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    second_gateway: RunningGateway,
    namespace: str,
) -> None:
    second = second_gateway
    plane_id, agent = await registered_agent(control_plane, workflow_plane, gw, namespace, "ha")
    running = await start_agent(agent)  # dials gw only
    client = await callers_client(gw, second, gw)  # the replica without the agent first
    try:
        alone = await second.client.plane_status(WP, plane_id, namespace=namespace, name="wp")
        assert alone["connectedAgents"] == 0
        for _ in range(3):
            answer = await client.proxy("GET", **route(plane_id, namespace), path="api/v1")
            assert answer.status == 200, answer.body
        status = await client.plane_status(WP, plane_id, namespace=namespace, name="wp")
        assert status["connectedAgents"] == 1
        assert len(status["replicas"]) == 2
    finally:
        await client.close()
        await running.stop()


async def test_a_watch_resumes_on_another_replica(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    tmp_path: Path,
    make_namespace: Callable[[ApiServer, str], str],
) -> None:
    plane_id, agent = await registered_agent(control_plane, workflow_plane, gw, namespace, "ha")
    second = await start_gateway(control_plane, tmp_path)
    second_running = True
    on_first = await start_agent(agent)
    on_second = await start_agent(replace(agent.config, server_url=second.public_url))
    watched = make_namespace(workflow_plane, "w")
    client = await callers_client(gw, second, gw)  # the watch opens on `second`
    names = [f"cm-{i}" for i in range(6)]
    seen: list[str] = []
    try:
        await eventually(lambda: second.gateway.connections.for_plane(WP, plane_id))
        stream = client.proxy_stream(
            "GET",
            **route(plane_id, namespace),
            path=f"api/v1/namespaces/{watched}/configmaps",
            query="watch=true&allowWatchBookmarks=true&timeoutSeconds=300",
        )
        create_configmap(workflow_plane, watched, names[0])
        async for line in stream:
            event = json.loads(line)
            if event["type"] != "ADDED":
                continue
            seen.append(event["object"]["metadata"]["name"])
            if len(seen) == 3:  # the replica serving the watch goes away
                await second.stop()
                second_running = False
            if len(seen) == len(names):
                break
            create_configmap(workflow_plane, watched, names[len(seen)])
        await stream.aclose()
    finally:
        await client.close()
        await on_first.stop()
        await on_second.stop()
        if second_running:
            await second.stop()
    assert seen == names
