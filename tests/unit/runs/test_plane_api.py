"""How plane answers are classified: retry (transient) or give up (permanent)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import pytest

from workflowplane.kits.errors import PermanentError, TransientError
from workflowplane.protocol.gateway_client import ProxyResponse
from workflowplane.protocol.http import GATEWAY_ERROR_HEADER
from workflowplane.runs.plan import PlaneTarget
from workflowplane.runs.plane_api import Discovery, PlaneAPI, request_error


def _response(status: int, message: str, headers: dict[str, str] | None = None) -> ProxyResponse:
    body = json.dumps({"kind": "Status", "message": message, "code": status}).encode()
    return ProxyResponse(status, headers or {}, body)


def test_the_gateways_403_is_transient_the_planes_rbac_403_is_not() -> None:
    gateway = request_error(
        _response(403, "no agent connection is authorized", {GATEWAY_ERROR_HEADER: "Forbidden"}),
        "create Workflow",
    )
    assert isinstance(gateway, TransientError)
    rbac = request_error(_response(403, "clusterroles is forbidden"), "create ClusterRole x")
    assert isinstance(rbac, PermanentError)
    assert rbac.message == "create ClusterRole x: HTTP 403: clusterroles is forbidden"


@pytest.mark.parametrize(
    ("status", "transient"), [(400, False), (422, False), (502, True), (503, True), (429, True)]
)
def test_other_statuses(status: int, transient: bool) -> None:
    assert isinstance(request_error(_response(status, "m"), "x"), TransientError) is transient


class PagingPlane:
    """A plane API server that serves Argo Workflows ``limit`` at a time with continue tokens."""

    def __init__(self, count: int) -> None:
        self.names = [f"wf-{n}" for n in range(count)]
        self.queries: list[dict[str, list[str]]] = []

    async def proxy(self, method: str, *, path: str, query: str = "", **_: Any) -> ProxyResponse:
        if path == "/apis/argoproj.io/v1alpha1":
            resources = [{"kind": "Workflow", "name": "workflows", "namespaced": True}]
            return ProxyResponse(200, {}, json.dumps({"resources": resources}).encode())
        asked = parse_qs(query)
        self.queries.append(asked)
        start = int(asked.get("continue", ["0"])[0])
        end = start + int(asked["limit"][0])
        meta = {"resourceVersion": "42", "continue": str(end) if end < len(self.names) else ""}
        items = [{"metadata": {"name": name}} for name in self.names[start:end]]
        return ProxyResponse(200, {}, json.dumps({"metadata": meta, "items": items}).encode())


async def test_lists_are_read_a_page_at_a_time_and_nothing_is_lost() -> None:
    plane = PagingPlane(7)
    target = PlaneTarget("ClusterWorkflowPlane", None, "default", "p1")
    api = PlaneAPI(plane, target, Discovery())  # type: ignore[arg-type]
    items, version = await api.list("argoproj.io/v1alpha1", "Workflow", "a=b", page_size=3)
    assert [item["metadata"]["name"] for item in items] == plane.names
    assert version == "42"
    assert [q["limit"] for q in plane.queries] == [["3"]] * 3
    assert [q.get("continue") for q in plane.queries] == [None, ["3"], ["6"]]
    assert all(q["labelSelector"] == ["a=b"] for q in plane.queries)
