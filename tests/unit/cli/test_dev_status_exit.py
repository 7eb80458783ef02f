"""``wpctl dev status`` exits 1 when a component is stopped or fails its health check, so a
script can wait on it (it printed FAIL and still exited 0)."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from workflowplane.cli import dev


@pytest.mark.parametrize(
    ("stopped", "healthy", "code"),
    [(False, True, 0), (True, True, 1), (False, False, 1)],
    ids=["all-well", "a-component-stopped", "a-health-check-failed"],
)
def test_dev_status_says_in_its_exit_code_whether_all_is_well(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stopped: bool, healthy: bool, code: int
) -> None:
    async def checks(_urls: Any, report: Any) -> None:
        if not healthy:
            report.fail("gateway is not live", "see its log")

    monkeypatch.setattr(dev, "dev_dir", lambda: tmp_path)
    monkeypatch.setattr(dev, "running", lambda _root: True)
    monkeypatch.setattr(dev, "_processes", lambda _root: {"control-plane": {}, "agent": {}})
    monkeypatch.setattr(
        dev, "_component_running", lambda _root, name: not stopped or name != "agent"
    )
    monkeypatch.setattr(dev, "dev_gateway_urls", lambda: ["https://127.0.0.1:1"])
    monkeypatch.setattr(dev, "dev_health_urls", dict)
    monkeypatch.setattr(dev, "check_components", checks)
    monkeypatch.setattr(dev, "_print_status", lambda *_args: None)
    monkeypatch.setattr(dev, "_planes_of", lambda _root: [])
    monkeypatch.setattr(dev, "_say_plane_systems", lambda _root: None)

    # in a thread of its own, as wpctl runs: its asyncio.run must not touch the tests' loop
    with ThreadPoolExecutor(1) as thread:
        assert thread.submit(dev._status, argparse.Namespace()).result() == code
