"""The real controller's health listener and metrics: healthy and ready when it works, not
live when a plane pass is stuck or its loop is blocked (and live again after), and metrics
that move when a plane reconciles and its agent connects."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    RunningController,
    RunningGateway,
    apply,
    controller_running,
    eventually,
    registered_agent,
    start_agent,
    unique,
    workflow_plane_cr,
)
from workflowplane.cli.control_plane import serve
from workflowplane.cli.main import build_parser
from workflowplane.controller.health import ControllerHealth
from workflowplane.protocol.gateway_client import GatewayClient
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration


async def _probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(base + path) as response,
    ):
        if response.content_type != "application/json":
            return response.status, {"text": await response.text()}
        return response.status, await response.json()


async def _until(base: str, path: str, status: int, timeout: float = 20) -> dict[str, Any]:  # noqa: ASYNC109
    async def answered() -> dict[str, Any] | None:
        code, body = await _probe(base, path)
        return body if code == status else None

    found: dict[str, Any] = await eventually(answered, timeout=timeout)
    return found


class StallingGateway:
    """The real client, except that ``notify`` waits for ``release`` (a wedged pass)."""

    def __init__(self, client: GatewayClient, release: threading.Event) -> None:
        self._client = client
        self._release = release

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def notify(self, **kwargs: Any) -> Mapping[str, Any]:
        await asyncio.to_thread(self._release.wait)
        return await self._client.notify(**kwargs)


async def test_a_working_controller_is_live_and_ready_and_its_metrics_move(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: RunningController,
    namespace: str,
) -> None:
    base = controller.health_url
    await _until(base, "/healthz", 200)
    body = await _until(base, "/readyz", 200)
    assert {"event-loop", "planes", "runs", "operator", "peering", "gateway"} <= set(body["checks"])
    _, agent = await registered_agent(control_plane, workflow_plane, gw, namespace, "obs")
    await eventually(
        lambda: controller.sample("workflowplane_reconcile_total", queue="planes", result="requeue")
    )
    running = await start_agent(agent)
    try:
        await eventually(
            lambda: controller.sample(
                "workflowplane_controller_gateway_events_total", type="connected"
            )
        )
        await eventually(lambda: controller.sample("workflowplane_plane_status_lag_seconds_count"))
    finally:
        await running.stop()
    _, page = await _probe(base, "/metrics")
    for series in (
        "workflowplane_plane_status_lag_seconds_bucket",
        'workflowplane_reconcile_duration_seconds_count{queue="planes"}',
        'workflowplane_workqueue_depth{queue="runs"}',
        "workflowplane_controller_leader 1.0",
    ):
        assert series in page["text"], series


async def test_a_stuck_plane_pass_fails_liveness_until_it_finishes(
    control_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    release = threading.Event()
    health = ControllerHealth(stuck_after=1.0)
    try:
        async with controller_running(
            control_plane, gw, health=health, gateway=lambda c: StallingGateway(c, release)
        ) as running:
            base = running.health_url
            await _until(base, "/healthz", 200)
            apply(control_plane, workflow_plane_cr("wp", namespace, unique("stuck"), "x"))
            body = await _until(base, "/healthz", 503)
            # CRs other tests left in the shared control plane may be pending too
            assert re.match(r"planes: [1-9]\d* pending, no progress", body["failing"]["planes"])
            release.set()
            await _until(base, "/healthz", 200)
    finally:
        release.set()


async def test_a_blocked_loop_fails_liveness_and_heals(
    control_plane: ApiServer, gw: RunningGateway
) -> None:
    async with controller_running(
        control_plane, gw, health=ControllerHealth(loop_limit=0.5)
    ) as running:
        base = running.health_url
        await _until(base, "/healthz", 200)
        blocked = threading.Event()

        def wedge() -> None:
            blocked.set()
            time.sleep(1.5)  # the wedge under test: the controller's loop runs nothing

        assert running.loop is not None
        running.loop.call_soon_threadsafe(wedge)
        await asyncio.to_thread(blocked.wait)
        code, body = await _probe(base, "/healthz")
        assert code == 503 and "event loop stalled" in body["failing"]["event-loop"]
        await _until(base, "/healthz", 200)


async def test_control_plane_answers_for_gateway_and_controller_on_one_port(
    control_plane: ApiServer, crds: Path
) -> None:
    """``wpctl control-plane``: the controller's listener includes the gateway's probes."""
    args = build_parser().parse_args(
        [
            "control-plane",
            *("--kubeconfig", str(control_plane.kubeconfig), "--context", control_plane.context),
            *("--host", "127.0.0.1", "--public-port", "0", "--internal-port", "0"),
            *("--health-port", "0", "--controller-health-port", "0"),
        ]
    )
    health, stop = ControllerHealth(), threading.Event()
    process = asyncio.create_task(
        asyncio.to_thread(asyncio.run, serve(args, health=health, stop_flag=stop))
    )
    try:
        await eventually(lambda: health.port or process.done(), timeout=60)
        body = await _until(f"http://127.0.0.1:{health.port}", "/readyz", 200, timeout=30)
        assert {"gateway-healthz", "gateway-readyz", "gateway", "planes"} <= set(body["checks"])
    finally:
        stop.set()
        await asyncio.wait_for(process, 30)
