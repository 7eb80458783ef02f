"""An agent Secret whose ca.crt is no certificate, and a ``testenv --dir`` that is a file,
are named in one line instead of ending in a traceback."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.unit.cli.wpctl import wpctl
from workflowplane.cli.ca import read_agent_ca
from workflowplane.cli.errors import CliError
from workflowplane.pki import generate_ca
from workflowplane.testenv.environment import MARKER


class _Secret:
    def __init__(self, ca: bytes) -> None:
        self.data = {"ca.crt": base64.b64encode(ca).decode()}


class _Client:
    def __init__(self, ca: bytes) -> None:
        self.secret = _Secret(ca)

    async def get(self, *args: Any, **kwargs: Any) -> _Secret:
        return self.secret


@pytest.mark.parametrize("ca", [b"not a pem", b"\xff\xfe binary", b""])
async def test_a_ca_crt_that_is_no_certificate_is_named(ca: bytes) -> None:
    with pytest.raises(CliError) as refused:
        await read_agent_ca(_Client(ca), "wp-ns")
    assert refused.value.message.startswith(
        "Secret wp-ns/cluster-agent-tls: ca.crt is not a PEM certificate"
    )


async def test_a_real_ca_is_returned_as_it_is() -> None:
    pem = generate_ca("agent-ca").cert_pem
    assert await read_agent_ca(_Client(pem), "wp-ns") == pem


@pytest.mark.parametrize("action", ["down", "env"])
def test_a_testenv_dir_that_is_a_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    file = tmp_path / "kubeconfig"
    file.write_text("not a directory\n")
    code, err = wpctl(capsys, "testenv", "--dir", str(file), action)
    assert code == 2
    assert err.startswith(f"error: --dir {file} is not a directory")
    assert file.read_text() == "not a directory\n"


@pytest.mark.parametrize("action", ["up", "down"])
def test_a_testenv_dir_holding_someone_elses_files_is_never_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """``down`` deletes the environment's directory, and ``up`` began by clearing it: a
    ``--dir`` naming a directory of one's own files had it deleted."""
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.txt").write_text("three years\n")
    code, err = wpctl(capsys, "testenv", "--dir", str(precious), action)
    assert code == 2
    assert f"--dir {precious} holds files and is not a test environment's directory" in err
    assert (precious / "thesis.txt").read_text() == "three years\n"


def test_an_empty_testenv_dir_is_refused_not_taken_as_the_current_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.txt").write_text("kept\n")
    monkeypatch.chdir(tmp_path)
    code, err = wpctl(capsys, "testenv", "--dir", "", "down")
    assert code == 2 and "--dir is empty" in err
    assert (tmp_path / "mine.txt").read_text() == "kept\n"


def test_an_environments_own_directory_is_deleted_by_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "env"
    own.mkdir()
    (own / MARKER).touch()
    (own / "kubeconfig").write_text("x")
    code, _ = wpctl(capsys, "testenv", "--dir", str(own), "down")
    assert code == 0 and not own.exists()


@pytest.mark.parametrize("state", ["{not json", "[1, 2]", '{"cp": {"context": "c"}}', '{"cp": 3}'])
@pytest.mark.parametrize("action", ["down", "env"])
def test_a_damaged_testenv_state_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str, action: str
) -> None:
    own = tmp_path / "env"
    own.mkdir()
    (own / MARKER).touch()
    (own / "testenv.json").write_text(state)
    code, err = wpctl(capsys, "testenv", "--dir", str(own), action)
    assert code != 0
    assert f"state file {own / 'testenv.json'} is damaged" in err
    assert (own / "testenv.json").read_text() == state  # kept: its pids are the way back


@pytest.mark.parametrize("name", ["UPPER", "a b", "../esc", "", "x" * 64, "tab\there"])
def test_a_testenv_server_name_that_is_no_dns_label_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, err = wpctl(capsys, "testenv", "--dir", str(tmp_path / "env"), "up", "--server", name)
    assert code == 2 and "--server: server name" in err and "is not a DNS label" in err
    assert not (tmp_path / "esc").exists()


def test_an_environment_made_before_the_marker_is_still_stopped_and_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Directories ``up`` made before the marker existed hold its state file: they are an
    environment's, and ``down`` must still stop and remove them."""
    old = tmp_path / "env"
    old.mkdir()
    (old / "testenv.json").write_text("{}")
    (old / "kubeconfig").write_text("x")
    code, err = wpctl(capsys, "testenv", "--dir", str(old), "down")
    assert code == 0, err
    assert not old.exists()
