"""A real gateway and a real (kopf) controller per test, in-process, on the session servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.integration.harness import RunningGateway
from workflowplane.controller.runner import ControllerConfig, run_controller
from workflowplane.testenv import ApiServer


@contextlib.asynccontextmanager
async def controller_running(
    control_plane: ApiServer, gw: RunningGateway, resync: float = 30.0
) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    config = ControllerConfig(
        kubeconfig=control_plane.kubeconfig, context=control_plane.context, resync_seconds=resync
    )
    task = asyncio.create_task(run_controller(config, gw.client, stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


@pytest.fixture
async def controller(control_plane: ApiServer, gw: RunningGateway) -> AsyncIterator[None]:
    async with controller_running(control_plane, gw):
        yield
