"""An agent whose CR goes away while the gateway writes its upgrade is not served for it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import eventually, running_gateway
from tests.integration.tunnel.scripted import WP, client_context, leaf_of, scripted_plane
from workflowplane.gateway.frames import GuardedWebSocket
from workflowplane.protocol import TUNNEL_V2
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.asyncio


async def test_a_cr_deleted_while_the_upgrade_is_written_does_not_admit_the_agent(
    control_plane: ApiServer,
    crds: Path,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway admits an agent, writes the 101 (which may wait for the socket), then
    registers the connection; a CR deleted in between was re-verified on the connections
    registered then. The connection is admitted again once the upgrade is written."""
    written, go_on = asyncio.Event(), asyncio.Event()
    prepare = GuardedWebSocket.prepare

    async def slow_prepare(self: GuardedWebSocket, request: Any) -> Any:
        writer = await prepare(self, request)
        written.set()
        await go_on.wait()  # the socket's writes are paused for this long
        return writer

    monkeypatch.setattr(GuardedWebSocket, "prepare", slow_prepare)
    async with running_gateway(control_plane, tmp_path) as gw:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        url = f"{gw.public_url}/ws?planeType={WP}&planeID={plane_id}"
        context = client_context(gw, leaf_of(ca), tmp_path)
        async with aiohttp.ClientSession() as session:
            connecting = asyncio.create_task(
                session.ws_connect(url, ssl=context, protocols=(TUNNEL_V2,))
            )
            await written.wait()
            kubectl(
                control_plane.kubeconfig,
                control_plane.context,
                "delete",
                "workflowplane",
                "wp",
                "-n",
                namespace,
            )
            await eventually(lambda: not gw.gateway.planes.for_plane(plane_id))
            go_on.set()
            ws = await connecting
            closed = await ws.receive(timeout=10)
            assert closed.type == aiohttp.WSMsgType.CLOSE
            assert closed.data == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert closed.extra == "no longer authorized"
            await ws.close()
        assert not gw.gateway.connections.for_plane(WP, plane_id)
