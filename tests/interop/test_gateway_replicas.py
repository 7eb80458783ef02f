"""OpenChoreo's Go agent behind two of our gateway replicas (issue #12): it dials one
replica, and a request sent to the other reaches its plane by forwarding."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from tests.integration.harness import apply, eventually, unique, workflow_plane_cr
from tests.interop.peers import AgentProcess, GatewayPKI, InternalAPI, OurGateway, tail
from workflowplane.protocol.gateway_client import GATEWAY_NAMESPACE, INTERNAL_CLIENT_SECRET
from workflowplane.protocol.http import UNSENT_HEADER
from workflowplane.testenv import ApiServer
from workflowplane.testenv.peer import PeerBinaries
from workflowplane.testenv.tools import async_client

pytestmark = [pytest.mark.integration, pytest.mark.interop]


@dataclass
class Replica(OurGateway):
    """Our gateway with OpenChoreo's chart command line, named as a pod would name it."""

    replica: str = ""

    def argv(self) -> list[str]:
        return [*super().argv(), f"--replica-name={self.replica}"]


async def _internal_client_secret(control_plane: ApiServer, pki: GatewayPKI) -> None:
    """What the chart's own-certificates mode provides: the internal callers' credential
    (the server CA and a client certificate of the internal CA), which peers use too."""
    data = {
        "ca.crt": pki.file("server-ca.crt").read_bytes(),
        "tls.crt": pki.file("caller.crt").read_bytes(),
        "tls.key": pki.file("caller.key").read_bytes(),
    }
    secret = Secret(
        metadata=ObjectMeta(name=INTERNAL_CLIENT_SECRET, namespace=GATEWAY_NAMESPACE),
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )
    kube = async_client(control_plane.kubeconfig, control_plane.context)
    try:
        with contextlib.suppress(ApiError):  # the chart's namespace (it exists there)
            await kube.create(Namespace(metadata=ObjectMeta(name=GATEWAY_NAMESPACE)))
        try:
            await kube.create(secret)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            await kube.replace(secret)
    finally:
        await kube.close()


@pytest.fixture
async def replicas(
    control_plane: ApiServer, crds: Path, gateway_pki: GatewayPKI, tmp_path: Path
) -> AsyncIterator[tuple[Replica, Replica]]:
    await _internal_client_secret(control_plane, gateway_pki)
    suffix = uuid.uuid4().hex[:6]
    a = Replica(control_plane, gateway_pki, tmp_path / "a.log", replica=f"gw-a-{suffix}")
    b = Replica(control_plane, gateway_pki, tmp_path / "b.log", replica=f"gw-b-{suffix}")
    try:
        for gateway in (a, b):
            await asyncio.to_thread(gateway.start)
        yield a, b
    finally:
        b.stop()
        a.stop()


async def test_openchoreos_agent_on_one_replica_is_reached_through_the_other(
    replicas: tuple[Replica, Replica],
    peer_binaries: PeerBinaries,
    gateway_pki: GatewayPKI,
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    a, b = replicas
    plane_id = unique("ha")
    agent = AgentProcess(
        kind="go",
        binaries=peer_binaries,
        gateway_url=a.public_url,
        server_ca=gateway_pki.file("server-ca.crt"),
        plane_id=plane_id,
        kubeconfig=workflow_plane.kubeconfig,
        directory=tmp_path / "agent",
    )
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, agent.ca_pem))
    api_a = InternalAPI(a.internal_url, gateway_pki.caller_ssl())
    api_b = InternalAPI(b.internal_url, gateway_pki.caller_ssl())
    agent.start()
    try:
        cr = (namespace, "wp")
        try:
            await eventually(lambda: api_a.connected(plane_id, cr), timeout=30, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{tail(agent.log)}") from None
        assert not await api_b.connected(plane_id, cr)  # B holds no connection of it

        reply = await api_b.proxy(plane_id, cr, "GET", "/api/v1/namespaces/default")
        assert reply.status == 200, (reply.body, tail(b.log))
        assert reply.json()["metadata"]["name"] == "default"
        assert UNSENT_HEADER not in reply.headers
    finally:
        agent.stop()
        await api_a.close()
        await api_b.close()
