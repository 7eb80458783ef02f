"""``wpctl logs -f``: a pod whose log could never be read is said, and the command fails; a
followed pod that is deleted (with its run) ends its follow, as a finished one does."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from workflowplane.cli.errors import CliError
from workflowplane.cli.runs import _pod_finished, _print_logs
from workflowplane.protocol.gateway_client import ProxyResponse

POD = {
    "metadata": {
        "name": "r1-build-1",
        "creationTimestamp": "2026-11-29T06:00:00Z",
        "annotations": {"workflows.argoproj.io/node-name": "r1[0].build"},
    },
    "status": {"phase": "Succeeded"},
}
RUN = {
    "metadata": {"name": "r1", "namespace": "team"},
    "status": {"runReference": {"namespace": "workflows-team", "name": "r1"}},
}


def _answer(status: int, body: object) -> ProxyResponse:
    return ProxyResponse(status, {}, json.dumps(body).encode())


class Plane:
    """The plane through the tunnel: one finished step pod whose log the API server refuses."""

    def __init__(self, log_answer: ProxyResponse, pod_answer: ProxyResponse | None = None):
        self.log_answer, self.pod_answer = log_answer, pod_answer

    async def request(self, method: str, path: str, **_options: Any) -> ProxyResponse:
        if path.endswith("/log"):
            return self.log_answer
        if path.endswith("/pods"):
            return _answer(200, {"items": [POD]})
        assert self.pod_answer is not None
        return self.pod_answer

    async def stream(self, _path: str, _query: str) -> AsyncIterator[bytes]:
        yield b"never"


class Kube:
    """The control plane: the run, completed."""

    async def get(self, *_args: Any, **_options: Any) -> Any:
        done = {"conditions": [{"type": "WorkflowCompleted", "status": "True"}]}
        return SimpleNamespace(to_dict=lambda: {**RUN, "status": {**RUN["status"], **done}})

    async def close(self) -> None:
        return None


async def test_a_pods_log_refused_while_following_is_said_and_fails_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused = _answer(400, {"message": "container nosuch is not valid for pod r1-build-1"})
    args = argparse.Namespace(follow=True, container="nosuch")
    with pytest.raises(CliError, match="container nosuch is not valid"):
        await _print_logs(Plane(refused), RUN, args, Kube())  # type: ignore[arg-type]
    assert "==> r1[0].build (r1-build-1)" in capsys.readouterr().err


async def test_a_followed_pod_that_is_gone_has_finished() -> None:
    gone = Plane(_answer(200, {}), pod_answer=_answer(404, {"message": "not found"}))
    assert await _pod_finished(gone, "workflows-team", "r1-build-1")  # type: ignore[arg-type]
    running = {**POD, "status": {"phase": "Running"}}
    there = Plane(_answer(200, {}), pod_answer=_answer(200, running))
    assert not await _pod_finished(there, "workflows-team", "r1-build-1")  # type: ignore[arg-type]
