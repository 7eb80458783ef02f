"""A request of one CR never leaves that CR's route: the HTTP client resolves '..' segments
(percent-encoded too) and splits at '?' and '#', so a name a tenant wrote would have sent the
controller's request, with its credentials, as another CR's."""

from __future__ import annotations

import pytest
from yarl import URL

from workflowplane.kits.errors import PermanentError
from workflowplane.protocol.gateway_client import GatewayClient

ROUTE = "/api/proxy/workflowplane/p1/tenant-a/wp/k8s/"


def test_an_ordinary_path_is_kept_as_it_is() -> None:
    path = "/apis/external-secrets.io/v1beta1/namespaces/workflows-a/externalsecrets/x.y-z"
    built = GatewayClient.proxy_path("workflowplane", "p1", "tenant-a", "wp", path)
    assert built == ROUTE + path.lstrip("/")
    assert URL("https://gw" + built).path == built  # nothing for the client to resolve


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/workflows-a/secrets/../../../../../../tenant-b/wp/k8s/api/v1/x",
        "/api/v1/namespaces/workflows-a/secrets/%2e%2E/%2E%2e/x",
        "/api/v1/namespaces/workflows-a/secrets/./x",
        "/api/v1/namespaces/workflows-a/secrets/x?watch=true",
        "/api/v1/namespaces/workflows-a/secrets/x#frag",
    ],
)
def test_a_path_that_would_leave_the_route_is_refused(path: str) -> None:
    with pytest.raises(PermanentError, match="not a path for the gateway's route"):
        GatewayClient.proxy_path("workflowplane", "p1", "tenant-a", "wp", path)


@pytest.mark.parametrize("name", ["..", "a/b", "%2e%2e", "x?y"])
def test_a_cr_name_that_would_leave_the_route_is_refused(name: str) -> None:
    with pytest.raises(PermanentError, match="not a name for the gateway's route"):
        GatewayClient.proxy_path("workflowplane", "p1", "tenant-a", name, "/api")
