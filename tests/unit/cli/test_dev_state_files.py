"""The local environment's state files: a damaged one is named (not a traceback), ``dev
down`` still stops the API servers and keeps the file's pids, and a write that fails midway
leaves the previous file whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.cli.wpctl import wpctl
from workflowplane.cli import dev


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WORKFLOWPLANE_STATE", str(tmp_path))
    (tmp_path / "dev").mkdir()
    return tmp_path / "dev"


@pytest.mark.parametrize("content", ['{"control-plane": {"pid": 12', "[1, 2]", '{"a": 5}'])
@pytest.mark.parametrize("argv", [["logs", "r"], ["doctor", "p"]])
def test_a_damaged_processes_file_is_named(
    root: Path, capsys: pytest.CaptureFixture[str], content: str, argv: list[str]
) -> None:
    (root / "processes.json").write_text(content)
    code, err = wpctl(capsys, *argv)
    assert code == 1
    assert err.startswith(f"error: state file {root / 'processes.json'} is damaged")


def test_dev_down_with_a_damaged_file_stops_the_servers_and_keeps_the_pids(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = '{"control-plane": {"pid": 4242, "public": 1'
    (root / "processes.json").write_text(damaged)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(dev, "stop_detached", lambda path, **kw: calls.append(kw) or [])
    code, err = wpctl(capsys, "dev", "down")
    assert code == 1
    assert "is damaged" in err
    assert calls == [{"remove": False, "owned": True}]  # the API servers were still stopped
    assert (root / "processes.json").read_text() == damaged


def test_a_write_that_fails_midway_leaves_the_previous_record(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev._remember(root, "control-plane", 100, public=1)
    before = (root / "processes.json").read_text()
    real = Path.write_text

    def disk_full(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real(path, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        dev._remember(root, "agent-workflow-plane", 200)
    monkeypatch.undo()
    assert (root / "processes.json").read_text() == before
    assert json.loads(before) == {"control-plane": {"pid": 100, "public": 1}}


@pytest.mark.parametrize("flag", [["--planes", "0"], ["--planes", "-2"], ["--gateways", "0"]])
def test_dev_up_refuses_a_count_below_one_before_starting_anything(
    root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flag: list[str],
) -> None:
    def started(*args: Any) -> Path:
        raise AssertionError("API servers started")

    monkeypatch.setattr(dev, "_start_clusters", started)
    code, err = wpctl(capsys, "dev", "up", *flag)
    assert code == 2
    assert f"argument {flag[0]}: must be at least 1" in err


@pytest.mark.parametrize("argv", [["dev", "down"], ["dev", "status"]])
def test_a_damaged_api_server_record_is_named_and_kept(
    root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """The API servers' own record (testenv.json) had ended dev status and dev down in a
    traceback; its pids are the way back, so nothing is stopped or deleted either."""
    damaged = '{"control-plane": {"context": "c"'
    (root / "testenv.json").write_text(damaged)
    code, err = wpctl(capsys, *argv)
    assert code == 4
    assert f"state file {root / 'testenv.json'} is damaged" in err
    assert (root / "testenv.json").read_text() == damaged
