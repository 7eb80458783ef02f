"""How plane answers are classified: retry (transient) or give up (permanent)."""

from __future__ import annotations

import json

import pytest

from workflowplane.kits.errors import PermanentError, TransientError
from workflowplane.protocol.gateway_client import ProxyResponse
from workflowplane.protocol.http import GATEWAY_ERROR_HEADER
from workflowplane.runs.plane_api import request_error


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
