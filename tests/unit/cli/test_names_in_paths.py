"""Names that go into request paths are Kubernetes names: ``..`` would be resolved into
another path (``wpctl run ..`` found the API group's index and took it for the workflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.cli.wpctl import UNREACHABLE_KUBECONFIG, wpctl
from workflowplane.cli import register


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", ".."], "argument workflow: '..' is not a Kubernetes name"),
        (["run", "build", "--name", "Build_1"], "argument --name: 'Build_1'"),
        (["run", "build", "-n", "../kube-system"], "argument -n/--namespace: '../kube-system'"),
        (["runs", "-n", "a" * 64], "is not a namespace name"),
        (["logs", "../../secrets"], "argument run: '../../secrets'"),
        (["get", "cwp", ".."], "argument name: '..'"),
        (["get", "wp", "-n", "a.b"], "argument -n/--namespace: 'a.b'"),
        (["ca", "show", "-n", "../.."], "argument -n/--namespace: '../..'"),
        (["doctor", "a/b"], "argument name: 'a/b'"),
        (["register", "p", "-n", "ns", "--agent-namespace", ".."], "--agent-namespace: '..'"),
    ],
)
def test_a_name_that_is_no_kubernetes_name_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], named: str
) -> None:
    contexts = ["--wp-context", "x", "--cp-context", "x"] if argv[0] == "register" else []
    code, err = wpctl(capsys, *argv, *contexts, "--kubeconfig", str(tmp_path / "none"))
    assert code == 2
    assert named in err


def test_register_names_a_wrong_cp_context_before_changing_the_workflow_plane(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)

    async def read_plane(*args: Any) -> Any:
        raise AssertionError("the workflow plane was read (and then written)")

    monkeypatch.setattr(register, "_read_plane", read_plane)
    code, err = wpctl(
        capsys,
        *("register", "p", "-n", "ns", "--wp-context", "x", "--cp-context", "nope"),
        *("--kubeconfig", str(kubeconfig)),
    )
    assert code == 2
    assert err.startswith(f"error: context 'nope' not found in {kubeconfig}")


def test_doctor_refuses_a_health_listener_without_a_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    code, err = wpctl(
        capsys,
        *("doctor", "p", "--gateway-url", "https://127.0.0.1:1", "--health", "=http://x"),
        *("--kubeconfig", str(kubeconfig)),
    )
    assert code == 2
    assert "error: --health '=http://x': expected NAME=http://HOST:PORT" in err
