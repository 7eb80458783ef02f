"""The one rule for which upgrades the tunnel carries, at both ends (gateway and agent)."""

from __future__ import annotations

import pytest

from workflowplane.protocol.exec import POD_STREAM


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/team-a/pods/build-1/exec",
        "/api/v1/namespaces/team-a/pods/build.step-1/attach",
        "/api/v1/namespaces/" + "n" * 63 + "/pods/" + "p" * 253 + "/exec",
    ],
)
def test_a_pods_exec_or_attach_is_carried(path: str) -> None:
    assert POD_STREAM.fullmatch(path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/n/pods/p%2Fportforward?/exec",
        "/api/v1/namespaces/n/pods/p/portforward",
        "/api/v1/namespaces/n%2Fservices%2Fs%3A80%2Fproxy%2F?/pods/p/exec",
        "/api/v1/namespaces/../pods/../exec",
        "/api/v1/namespaces/n/pods/p/exec\n",
        "/api/v1/namespaces/n/pods/p/exec/",
        "/api/v1/namespaces/n/pods/.p/exec",
        "/api/v1/namespaces/" + "n" * 64 + "/pods/p/exec",
    ],
)
def test_anything_else_is_not(path: str) -> None:
    assert not POD_STREAM.fullmatch(path)
