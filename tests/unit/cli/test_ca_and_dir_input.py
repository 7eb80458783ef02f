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
