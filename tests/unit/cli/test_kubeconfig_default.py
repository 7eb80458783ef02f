"""Which kubeconfig a command uses without --kubeconfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflowplane.cli.kube import kubeconfig_paths


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORKFLOWPLANE_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tmp_path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_the_dev_environments_kubeconfig_when_there_is_no_other(home: Path) -> None:
    dev = _touch(home / "state" / "dev" / "kubeconfig")
    assert kubeconfig_paths(None) == [dev]


def test_a_users_own_kubeconfig_comes_first(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(home / "state" / "dev" / "kubeconfig")
    own = _touch(home / "home" / ".kube" / "config")
    assert kubeconfig_paths(None) == [own]
    monkeypatch.setenv("KUBECONFIG", str(home / "elsewhere"))
    assert kubeconfig_paths(None) == [home / "elsewhere"]
    assert kubeconfig_paths(home / "flag") == [home / "flag"]


def test_without_any_the_error_names_the_usual_place(home: Path) -> None:
    assert kubeconfig_paths(None) == [home / "home" / ".kube" / "config"]
