"""A real gateway and a real (kopf) controller per test, in-process, on the session servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.harness import RunningController, RunningGateway, controller_running
from workflowplane.testenv import ApiServer


@pytest.fixture
async def controller(
    control_plane: ApiServer, gw: RunningGateway
) -> AsyncIterator[RunningController]:
    async with controller_running(control_plane, gw) as running:
        yield running
