"""Several gateway replicas on one control plane (issue #12, docs/ha.md): the Lease
directory, forwarding to the replica that holds a plane's agent, no forwarding loops, the
Unsent marker, and the drain."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap

from tests.integration.harness import (
    RunningGateway,
    apply,
    eventually,
    proxied,
    proxied_watch,
    registered_agent,
    running_gateway,
    start_agent,
    unique,
    workflow_plane_cr,
)
from tests.integration.tunnel.scripted import ScriptedAgent, answer, leaf_of, scripted_agent
from tests.integration.tunnel.scripted import scripted_plane as scripted_plane_on
from workflowplane.pki import generate_ca
from workflowplane.protocol.gateway_client import GATEWAY_NAMESPACE
from workflowplane.protocol.http import FORWARDED_BY_HEADER, UNSENT_HEADER
from workflowplane.protocol.replicas import lease_name, live_replicas
from workflowplane.testenv import ApiServer, free_port
from workflowplane.testenv.tools import async_client, gateway_server_ca

pytestmark = pytest.mark.integration
WP = "workflowplane"


@pytest.fixture
async def pair(
    control_plane: ApiServer, crds: Path, tmp_path: Path
) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    """Replicas A and B on one control plane, each in the other's directory."""
    suffix = uuid.uuid4().hex[:6]
    async with (
        running_gateway(control_plane, tmp_path, replica_name=f"gw-a-{suffix}") as a,
        running_gateway(control_plane, tmp_path, replica_name=f"gw-b-{suffix}") as b,
    ):
        names = {f"gw-a-{suffix}", f"gw-b-{suffix}"}
        await eventually(lambda: _has_replicas(a, names))
        yield a, b


async def _replica_names(gw: RunningGateway) -> set[str]:
    return {r.name for r in await live_replicas(gw.kube, GATEWAY_NAMESPACE)}


async def _has_replicas(gw: RunningGateway, names: set[str]) -> bool:
    return names <= await _replica_names(gw)


async def test_a_request_to_the_replica_without_the_agent_reaches_it_through_its_peer(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    pair: tuple[RunningGateway, RunningGateway],
    namespace: str,
) -> None:
    a, b = pair
    plane_id, prepared = await registered_agent(control_plane, workflow_plane, a, namespace, "ha")
    for gw in (a, b):
        await eventually(lambda gw=gw: gw.gateway.planes.for_plane(plane_id))
    agent = await start_agent(prepared)  # dials A only, as OpenChoreo's agent would
    try:
        assert not b.gateway.connections.for_plane(WP, plane_id)
        answer_ = await proxied(b, plane_id, namespace, "/api/v1/namespaces/default")
        assert answer_.status == 200, answer_.body
        assert answer_.json()["metadata"]["name"] == "default"
        assert UNSENT_HEADER not in answer_.headers

        watched = asyncio.Queue[dict[str, Any]]()

        async def watch() -> None:
            path = "/api/v1/namespaces/default/configmaps"
            async for line in proxied_watch(b, plane_id, namespace, path):
                await watched.put(json.loads(line))

        watching = asyncio.create_task(watch())
        name = f"ha-{uuid.uuid4().hex[:6]}"
        plane = async_client(workflow_plane.kubeconfig, workflow_plane.context)
        try:
            await plane.create(ConfigMap(metadata=ObjectMeta(name=name, namespace="default")))

            async def seen() -> bool:
                while True:
                    event = await watched.get()
                    if event["object"]["metadata"]["name"] == name:
                        return bool(event["type"] == "ADDED")

            assert await asyncio.wait_for(seen(), 20)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await plane.close()
    finally:
        await agent.stop()


async def _scripted_plane(
    control_plane: ApiServer, gws: tuple[RunningGateway, ...], namespace: str
) -> tuple[str, Any]:
    plane_id, ca = await scripted_plane_on(control_plane, gws[0], namespace)
    for gw in gws[1:]:
        await eventually(lambda gw=gw: gw.gateway.planes.for_plane(plane_id))
    return plane_id, ca


async def test_a_forwarded_request_is_never_forwarded_again(
    control_plane: ApiServer,
    pair: tuple[RunningGateway, RunningGateway],
    namespace: str,
    tmp_path: Path,
) -> None:
    a, b = pair
    plane_id, ca = await _scripted_plane(control_plane, pair, namespace)
    async with scripted_agent(a, plane_id, leaf_of(ca), tmp_path) as agent:
        refused = await proxied(
            b, plane_id, namespace, "/api/v1/namespaces", headers={FORWARDED_BY_HEADER: "gw-x"}
        )
        assert refused.status == 502 and refused.headers[UNSENT_HEADER] == "1"
        assert agent.received == []  # A never saw it


async def test_without_any_agent_the_answer_says_it_was_never_sent(
    control_plane: ApiServer,
    pair: tuple[RunningGateway, RunningGateway],
    namespace: str,
) -> None:
    a, b = pair
    plane_id, _ = await _scripted_plane(control_plane, pair, namespace)
    for gw in (a, b):
        refused = await proxied(gw, plane_id, namespace, "/api/v1/namespaces", method="POST")
        assert refused.status == 502 and refused.headers[UNSENT_HEADER] == "1"


async def _lease_exists(gw: RunningGateway, name: str) -> bool:
    return await _lease_present(gw.kube, name)


async def test_drain_leaves_the_directory_and_lets_the_request_in_flight_finish(
    control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def slow(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
        await release.wait()
        await agent.send(answer(frame["requestID"], body=b'{"done": true}'))

    name = f"gw-drain-{uuid.uuid4().hex[:6]}"
    async with running_gateway(control_plane, tmp_path, replica_name=name) as gw:
        lease = lease_name(name)
        assert await _lease_exists(gw, lease)
        plane_id, ca = await _scripted_plane(control_plane, (gw,), namespace)
        async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, slow) as agent:
            in_flight = asyncio.create_task(proxied(gw, plane_id, namespace, "/api/v1/namespaces"))
            await eventually(lambda: agent.received)
            draining = asyncio.create_task(gw.gateway.drain())

            health = f"http://127.0.0.1:{gw.gateway.ports['health']}/readyz"
            async with aiohttp.ClientSession() as session:

                async def unready() -> bool:
                    async with session.get(health) as response:
                        return response.status == 503

                await eventually(unready)
            await eventually(lambda: _lease_gone(gw, lease))
            late = await proxied(gw, plane_id, namespace, "/api/v1/namespaces")
            assert late.status == 503 and late.headers[UNSENT_HEADER] == "1"
            assert not agent.ws.closed and not draining.done()

            release.set()
            finished = await in_flight
            assert finished.status == 200 and finished.json() == {"done": True}
            await draining
            await eventually(lambda: agent.ws.closed)
            assert agent.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY


async def _lease_gone(gw: RunningGateway, name: str) -> bool:
    return not await _lease_exists(gw, name)


async def test_sigterm_drains_the_process_and_agents_are_told_it_goes_away(
    control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    """The signal path end to end: ``cluster-gateway`` as its own process, SIGTERM, and the
    agent's connection closed with 1001 (a plain stop would close it with 1000)."""
    name = f"gw-term-{uuid.uuid4().hex[:6]}"
    public = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workflowplane.gateway",
        f"--kubeconfig={control_plane.kubeconfig}",
        f"--context={control_plane.context}",
        "--host=127.0.0.1",
        f"--public-port={public}",
        f"--internal-port={free_port()}",
        f"--health-port={free_port()}",
        f"--replica-name={name}",
        "--drain-seconds=5",
    )
    kube = async_client(control_plane.kubeconfig, control_plane.context)
    try:
        await eventually(lambda: _lease_present(kube, lease_name(name)), timeout=60)
        ca = generate_ca("term-agent-ca")
        apply(
            control_plane,
            workflow_plane_cr(
                "wp", namespace, plane_id := unique("term"), ca_pem=ca.cert_pem.decode()
            ),
        )
        server_ca = gateway_server_ca(
            control_plane.kubeconfig, control_plane.context, tmp_path / "ca.crt"
        )
        context = ssl.create_default_context(cafile=str(server_ca))
        leaf = leaf_of(ca)
        (tmp_path / "a.crt").write_bytes(leaf.cert_pem)
        (tmp_path / "a.key").write_bytes(leaf.key_pem)
        context.load_cert_chain(tmp_path / "a.crt", tmp_path / "a.key")
        url = f"wss://127.0.0.1:{public}/ws?planeType={WP}&planeID={plane_id}"
        async with aiohttp.ClientSession() as session:

            async def connected() -> aiohttp.ClientWebSocketResponse | None:
                try:
                    return await session.ws_connect(url, ssl=context)
                except aiohttp.WSServerHandshakeError:
                    return None  # the CR is not in its cache yet

            ws = await eventually(connected, timeout=20)
            process.send_signal(signal.SIGTERM)
            message = await asyncio.wait_for(ws.receive(), 60)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == aiohttp.WSCloseCode.GOING_AWAY
            await ws.close()
        assert await asyncio.wait_for(process.wait(), 60) == 0
        assert not await _lease_present(kube, lease_name(name))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await kube.close()


async def _lease_present(kube: Any, name: str) -> bool:
    leases = [lease async for lease in kube.list(Lease, namespace=GATEWAY_NAMESPACE)]
    return name in {lease.metadata.name for lease in leases if lease.metadata}
