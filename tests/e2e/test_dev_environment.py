"""The README's first command: ``wpctl dev up`` brings the system up; ``down`` leaves nothing."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import run_wpctl
from workflowplane.testenv import read_state
from workflowplane.testenv.apiserver import process_alive
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.e2e


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("https://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_dev_up_status_and_down(dev_state: Path) -> None:
    up = run_wpctl(dev_state, "dev", "up")
    assert up.returncode == 0, up.stderr
    assert "wp-control-plane" in up.stdout and "wp-workflow-plane" in up.stdout
    kubeconfig = dev_state / "dev" / "kubeconfig"
    planes = json.loads(
        kubectl(kubeconfig, "wp-control-plane", "get", "wp", "-A", "-o", "json").stdout
    )["items"]
    assert {p["metadata"]["name"] for p in planes} >= {"org1-workflowplane", "org2-workflowplane"}

    again = run_wpctl(dev_state, "dev", "up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr

    status = run_wpctl(dev_state, "dev", "status")
    assert status.returncode == 0 and "my-workflowplane" in status.stdout

    servers = read_state(dev_state / "dev")
    assert servers and all(_port_open(s.url) for s in servers)
    down = run_wpctl(dev_state, "dev", "down")
    assert down.returncode == 0, down.stderr
    pids = [pid for s in servers for pid in s.pids]
    assert not any(process_alive(pid) for pid in pids)
    assert not any(_port_open(s.url) for s in servers)
    assert not (dev_state / "dev").exists()
    gone = run_wpctl(dev_state, "dev", "status")
    assert gone.returncode != 0 and "not running" in gone.stderr
