"""The HA fleet's own retry (fleet.py): a port another process took between ``free_port``
choosing it and the replica binding it (an outgoing connection's ephemeral port can) fails
only that start, and the replica's first start takes new ports. A fresh-clone run once lost
a test's whole setup to it."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from lightkube import AsyncClient

from tests.integration.ha.fleet import PORT_TAKEN, GatewayProcess
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration


async def test_a_replica_whose_port_was_taken_before_its_first_start_takes_new_ones(
    control_plane: ApiServer, crds: Path, kube: AsyncClient, tmp_path: Path
) -> None:
    log = tmp_path / "gw.log"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        name = f"gw-ports-{uuid.uuid4().hex[:6]}"
        replica = GatewayProcess(control_plane, name, log, public_port=taken, drain_seconds=0.5)
        try:
            await replica.start(kube)
            assert replica.started and replica.public_port != taken
            assert PORT_TAKEN in log.read_text()  # the first try did meet the taken port
        finally:
            if replica.started:
                await replica.terminate()  # its Lease goes: later tests see no dead peer
            await replica.stop()
