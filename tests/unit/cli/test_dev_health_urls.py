"""`wpctl doctor` with no --health reads every listener `wpctl dev up` recorded: the gateway's,
the controller's and each agent's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflowplane.cli.state import dev_health_urls


def test_each_agent_of_dev_up_is_a_component_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOWPLANE_STATE", str(tmp_path))
    (tmp_path / "dev").mkdir()
    processes = {
        "control-plane": {"pid": 1, "health": 8080, "controller_health": 8081},
        "agent-wp1": {"pid": 2, "health": 9001},
        "agent-wp2": {"pid": 3},  # started by an older wpctl: no listener recorded
    }
    (tmp_path / "dev" / "processes.json").write_text(json.dumps(processes))
    assert dev_health_urls() == {
        "gateway": "http://127.0.0.1:8080",
        "controller": "http://127.0.0.1:8081",
        "agent-wp1": "http://127.0.0.1:9001",
    }
