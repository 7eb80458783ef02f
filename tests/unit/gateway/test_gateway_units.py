"""Gateway rules that need no server: path checks, streaming, CA bundles."""

from __future__ import annotations

import pytest

from workflowplane.gateway.kube_proxy import bad_path, is_streaming
from workflowplane.gateway.tls import split_pems
from workflowplane.pki import generate_ca


@pytest.mark.parametrize(
    "path",
    [
        "/api/proxy/wp/p/ns/cr/k8s/api/../../secrets",
        "/api/proxy/wp/p/ns/cr/k8s/%2e%2e/x",
        "/api/proxy/wp/p/ns/cr/k8s/%252e%252e/x",
        "/api/proxy/wp/p/ns/cr/k8s/a%00b",
    ],
)
def test_traversal_and_nul_are_bad_paths(path: str) -> None:
    assert bad_path(path)


def test_ordinary_paths_pass() -> None:
    assert not bad_path("/api/proxy/wp/p/ns/cr/k8s/api/v1/namespaces/a..b/pods")


def test_streaming_requests_are_recognised() -> None:
    assert is_streaming({"watch": "true"}) and is_streaming({"follow": "1"})
    assert not is_streaming({"watch": "false"}) and not is_streaming({})


def test_bundles_split_so_one_bad_block_can_be_skipped() -> None:
    good = generate_ca("a").cert_pem + generate_ca("b").cert_pem
    bad = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    assert len(split_pems(good + bad)) == 3
    assert all(block.startswith("-----BEGIN") for block in split_pems(good))
