"""kill -9 of the replica that holds an agent's only connection (issue #12): OpenChoreo's Go
agent dials a Service in front of three replicas; its replica is killed under steady GET load
through the callers' client. The agent redials through the Service after its fixed
``--reconnect-delay`` (5 s, its default) and lands on a live replica; meanwhile every replica
answers "no agent" (Unsent), and the client waits for the plane it reached a moment ago
instead of failing (docs/ha.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lightkube import AsyncClient

from tests.integration.ha.fleet import (
    Fleet,
    StatusRecorder,
    plane_connected,
    recording,
    warnings_for,
)
from tests.integration.ha.load import Load, running_load
from tests.integration.ha.service import service_of
from tests.integration.harness import (
    apply,
    controller_running,
    eventually,
    unique,
    workflow_plane_cr,
)
from tests.interop.conftest import peer_binaries  # noqa: F401 (a fixture used here)
from tests.interop.peers import AgentProcess, tail
from workflowplane.testenv import ApiServer
from workflowplane.testenv.peer import PeerBinaries
from workflowplane.testenv.tools import gateway_server_ca

pytestmark = [pytest.mark.integration, pytest.mark.interop]

GO_RECONNECT_DELAY = "5s"  # OpenChoreo's default (the chart's interop values say 1s)
DISCONNECT_GRACE = 10.0  # the controller's default: longer than the Go agent's redial


async def test_kill_9_of_a_one_connection_agents_replica_fails_no_request(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    kube: AsyncClient,
    fleet: Fleet,
    peer_binaries: PeerBinaries,  # noqa: F811
    namespace: str,
    tmp_path: Path,
) -> None:
    server_ca = gateway_server_ca(
        control_plane.kubeconfig, control_plane.context, tmp_path / "server-ca.crt"
    )
    plane_id = unique("ha-go")
    client = await fleet.client()
    load = Load(client, [(plane_id, namespace, "wp")])

    async def connected() -> bool:
        return await plane_connected(client, plane_id, namespace, "wp")

    async with service_of([r.public_port for r in fleet.replicas]) as service:
        agent = AgentProcess(
            kind="go",
            binaries=peer_binaries,
            gateway_url=f"wss://127.0.0.1:{service.port}/ws",
            server_ca=server_ca,
            plane_id=plane_id,
            kubeconfig=workflow_plane.kubeconfig,
            directory=tmp_path / "agent",
            extra=[f"--reconnect-delay={GO_RECONNECT_DELAY}"],
        )
        apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, agent.ca_pem))
        agent.start()
        try:
            try:
                await eventually(connected, timeout=60)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nagent log:\n{tail(agent.log)}") from None
            held = fleet.serving(service.routed[-1])
            async with (
                controller_running(
                    control_plane, fleet.internal_urls, disconnect_grace=DISCONNECT_GRACE
                ),
                recording(StatusRecorder(kube, "wp", namespace), agents=1) as status,
                running_load(load),
            ):
                await load.more(10)
                before = len(service.routed)
                killed_at = time.monotonic()
                await held.kill()
                await eventually(lambda: service.redialled(before, held.public_port), timeout=30)
                back_at = time.monotonic()
                await eventually(connected, timeout=30)
                await load.more(30)
        finally:
            agent.stop()
            await client.close()

    assert load.failures == [], (f"killed {killed_at:.3f}, back {back_at:.3f}", load.failed[:5])
    assert set(status.seen) == {(True, 1)}, status.seen
    assert await warnings_for(kube, "wp", namespace) == []
