"""Fixtures shared by the integration tests that need a running gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.harness import RunningGateway, start_gateway
from workflowplane.testenv import ApiServer


@pytest.fixture
async def gw(control_plane: ApiServer, crds: Path, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """A fresh in-process gateway on free ports, its PKI in the control plane's Secrets."""
    gateway = await start_gateway(control_plane, tmp_path)
    try:
        yield gateway
    finally:
        await gateway.stop()
