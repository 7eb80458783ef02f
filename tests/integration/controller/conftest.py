"""A real gateway and a real (kopf) controller per test, in-process, on the session servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.harness import RunningGateway, controller_running
from workflowplane.testenv import ApiServer


@pytest.fixture
async def controller(control_plane: ApiServer, gw: RunningGateway) -> AsyncIterator[None]:
    async with controller_running(control_plane, gw):
        yield
