"""The plane systems' start-up: a process that exits while starting (here, kube-scheduler
finding its port taken between the pick and its bind) is started again on fresh ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from workflowplane.testenv import Environment
from workflowplane.testenv import plane_systems as systems
from workflowplane.testenv.plane_runtime import PlaneRuntime

pytestmark = pytest.mark.integration


def test_a_system_whose_port_was_taken_starts_on_a_fresh_one(
    tmp_path: Path, plane_binaries: systems.PlaneBinaries
) -> None:
    env = Environment(tmp_path / "env", ["port-race"])
    env.start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    runtime = PlaneRuntime.for_server(
        env["port-race"],
        plane_binaries,
        systems=("kube-scheduler",),
        scheduler_port=taken.getsockname()[1],
    )
    try:
        runtime.start()
        assert runtime.scheduler_port != taken.getsockname()[1]
        log = (runtime.workdir / "logs" / "kube-scheduler.log").read_text()
        assert "address already in use" in log  # the first attempt did meet the taken port
    finally:
        runtime.stop()
        taken.close()
        env.stop()
