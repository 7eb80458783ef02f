"""A kubeconfig that cannot be used, or a server that cannot be reached, ends a command with
one line naming the file (or the server), a usage or unavailable exit code, no traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx2
import pytest
from lightkube.core.exceptions import ApiError

from tests.unit.cli.wpctl import UNREACHABLE_KUBECONFIG as GOOD
from tests.unit.cli.wpctl import wpctl
from workflowplane.cli.main import run_handler


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("", "is not a kubeconfig"),
        ("- a\n- b\n", "is not a kubeconfig"),
        ("hello\n", "is not a kubeconfig"),
        ("key: [unclosed\n", "is not valid YAML: line 2"),
        ("apiVersion: v1\nkind: Config\n", "is malformed: no 'clusters' entry"),
        (GOOD.replace("current-context: x", ""), "has no current context"),
        (
            GOOD.replace("current-context: x", "current-context: gone"),
            "'gone' is not defined",
        ),
        (GOOD.replace("cluster: c,", "cluster: other,"), "names cluster 'other'"),
        (GOOD.replace("user: u}", "user: nobody}"), "names user 'nobody'"),
        (GOOD.replace("cluster: c, user: u}", "cluster: c}"), "it names no user"),
        (GOOD + "- name: u\n  user: {token: other}\n", "names user 'u' more than once"),
        (GOOD.replace("current-context: x", "current-context: [x]"), "is not a name"),
        (
            GOOD.replace(
                "{token: abc}",
                "{exec: {apiVersion: client.authentication.k8s.io/v1, command: no-such-plugin}}",
            ),
            "its credential plugin 'no-such-plugin' is not an executable file",
        ),
        (
            GOOD.replace("insecure-skip-tls-verify: true", "certificate-authority: /no/ca.crt"),
            "cannot load its TLS settings (/no/ca.crt)",
        ),
        (
            GOOD.replace(
                "insecure-skip-tls-verify: true", 'certificate-authority-data: "bm90IGEgY2VydA=="'
            ),
            "cannot load its TLS settings",
        ),
    ],
)
def test_an_unusable_kubeconfig_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, said: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    code, err = wpctl(capsys, "runs", "--kubeconfig", str(path))
    assert code == 2
    assert err.startswith("error: ") and str(path) in err and said in err
    assert "Traceback" not in err


def test_a_kubeconfig_that_is_binary_or_a_directory_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path in (binary, tmp_path):
        code, err = wpctl(capsys, "get", "wp", "--kubeconfig", str(path))
        assert code == 2
        assert err.startswith(f"error: cannot read kubeconfig {path}")


def test_a_server_that_does_not_answer_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(GOOD)  # port 1 on loopback: refused at once
    for argv in (["runs"], ["get", "wp"], ["ca", "show"], ["run", "build"]):
        code, err = wpctl(capsys, *argv, "--kubeconfig", str(path))
        assert code == 4, argv
        assert err.startswith("error: cannot reach https://127.0.0.1:1/"), err
        assert "Traceback" not in err


def test_an_error_answer_no_command_expected_is_one_line_with_its_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # e.g. `wpctl get wp nosuch -n team`: lightkube raises for the 404 of a get.
    request = httpx2.Request("GET", "https://127.0.0.1:1/apis/x/v1/namespaces/team/wp/nosuch")
    body = {"kind": "Status", "code": 404, "reason": "NotFound", "message": "wp nosuch not found"}
    error = ApiError(request, httpx2.Response(404, json=body, request=request))

    def handler(args: argparse.Namespace) -> int:
        raise error

    assert run_handler(handler, argparse.Namespace()) == 3
    assert capsys.readouterr().err == (
        "error: the API server answered 404 NotFound: wp nosuch not found\n"
    )
