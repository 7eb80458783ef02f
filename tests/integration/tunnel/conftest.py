"""A fresh gateway per test; agents and CRs are made by each test with unique planeIDs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.harness import RunningGateway, start_gateway
from workflowplane.testenv import ApiServer


@pytest.fixture
async def gw(control_plane: ApiServer, crds: Path, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    gateway = await start_gateway(control_plane, tmp_path)
    try:
        yield gateway
    finally:
        await gateway.stop()


@pytest.fixture
def control_plane_tmp(tmp_path: Path) -> Path:
    return tmp_path
