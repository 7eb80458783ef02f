"""Several files in KUBECONFIG are merged as kubectl merges them: the first file to name a
cluster, context or user wins, the first to set a current context wins, missing files are
skipped, and each file's relative paths are its own. Which server a command reached is read
from its error: every server here refuses at once (a port on loopback nobody listens on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cli.wpctl import UNREACHABLE_KUBECONFIG, wpctl
from workflowplane.cli.kube import kubeconfig_paths


def _config(port: int, *, context: str = "x", current: str | None = "x") -> str:
    text = UNREACHABLE_KUBECONFIG.replace("127.0.0.1:1", f"127.0.0.1:{port}")
    text = text.replace("- name: x", f"- name: {context}")
    text = text.replace("- name: c\n", f"- name: c{port}\n")
    text = text.replace("cluster: c,", f"cluster: c{port},")
    if current is None:
        return text.replace("current-context: x\n", "")
    return text.replace("current-context: x", f"current-context: {current}")


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    paths = [tmp_path / "a", tmp_path / "missing", tmp_path / "b"]
    monkeypatch.setenv("KUBECONFIG", ":".join(map(str, paths)))
    return paths


def _reached(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, err = wpctl(capsys, "get", "wp", *argv)
    assert code == 4, err
    return err.split("cannot reach ", 1)[1].split("/", 3)[2]


def test_a_context_of_a_later_file_is_used(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files[0].write_text(_config(2))
    files[2].write_text(_config(3, context="in-b", current=None))
    assert kubeconfig_paths(None) == [files[0], files[2]]  # the missing one skipped
    assert _reached(capsys, "--context", "in-b") == "127.0.0.1:3"
    assert _reached(capsys) == "127.0.0.1:2"  # the current context: the first file's


def test_the_first_file_to_name_a_context_or_set_the_current_one_wins(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files[0].write_text(_config(2, current=None))
    files[2].write_text(_config(3, current="x"))
    assert _reached(capsys) == "127.0.0.1:2"  # b sets the current context; a defines x
    files[0].write_text(_config(2, context="in-a", current="in-a"))
    files[2].write_text(_config(3, context="in-b", current="in-b"))
    assert _reached(capsys) == "127.0.0.1:2"  # both set one: a's


def test_the_first_file_to_name_a_cluster_wins(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files[0].write_text(_config(2).replace("c2", "shared"))
    files[2].write_text(_config(3, context="in-b", current=None).replace("c3", "shared"))
    assert _reached(capsys, "--context", "in-b") == "127.0.0.1:2"  # b's context, a's cluster


def test_an_empty_file_in_the_list_is_an_empty_config(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files[0].write_text(_config(2))
    files[2].write_text("# written later by some tool\n")
    assert _reached(capsys) == "127.0.0.1:2"


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (
            _config(3).replace("contexts:\n", "contexts:\n- name: x\n  context: {cluster: c3}\n"),
            "it names context 'x' more than once",
        ),
        ("current-context: [a, b]\n", "its current-context is not a name"),
        ("clusters:\n- name: c\n  cluster: null\n", "is malformed"),
    ],
)
def test_a_malformed_entry_is_named_with_its_file(
    files: list[Path], capsys: pytest.CaptureFixture[str], content: str, said: str
) -> None:
    files[0].write_text(_config(2))
    files[2].write_text(content)
    code, err = wpctl(capsys, "get", "wp")
    assert code == 2, err
    assert f"kubeconfig {files[2]} " in err and said in err
    assert "Traceback" not in err


def test_a_relative_path_is_relative_to_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative KUBECONFIG entries too: ``sub/a``'s ``ca.crt`` is ``<cwd>/sub/ca.crt``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_text(
        _config(2).replace("insecure-skip-tls-verify: true", "certificate-authority: ca.crt")
    )
    plugin = "{exec: {apiVersion: client.authentication.k8s.io/v1, command: ./bin/token}}"
    b = _config(3, context="in-b", current=None).replace("{token: abc}", plugin)
    (tmp_path / "b").write_text(
        b.replace("- name: u\n", "- name: ub\n").replace("user: u}", "user: ub}")
    )
    monkeypatch.setenv("KUBECONFIG", "sub/a:b")
    code, err = wpctl(capsys, "get", "wp")
    assert code == 2
    assert f"({tmp_path / 'sub' / 'ca.crt'})" in err  # not sub/sub/ca.crt, not ./ca.crt
    code, err = wpctl(capsys, "get", "wp", "--context", "in-b")
    assert code == 2
    assert f"credential plugin '{tmp_path / 'bin' / 'token'}' is not an executable" in err


def test_an_unknown_context_names_every_file_and_the_known_contexts(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files[0].write_text(_config(2))
    files[2].write_text(_config(3, context="in-b"))
    code, err = wpctl(capsys, "get", "wp", "--context", "nowhere")
    assert code == 2
    assert f"not found in KUBECONFIG ({files[0]}, {files[2]})" in err
    assert "known contexts: in-b, x" in err


def test_a_malformed_later_file_is_named(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files[0].write_text(_config(2))
    files[2].write_text("clusters: {not: a list}\n")
    code, err = wpctl(capsys, "get", "wp")
    assert code == 2
    assert f"kubeconfig {files[2]} is malformed: its clusters are not a list" in err
    files[2].write_text("key: [unclosed\n")
    code, err = wpctl(capsys, "get", "wp")
    assert code == 2 and f"kubeconfig {files[2]} is not valid YAML" in err


def test_when_no_listed_file_exists_the_first_is_named(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = wpctl(capsys, "get", "wp")
    assert code == 2
    assert f"kubeconfig {files[0]} does not exist" in err
