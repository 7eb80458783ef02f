"""A server the environment sends through a proxy keeps httpx's own transport (the lean
client speaks no proxy); any other gets the lean one."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube.config.kubeconfig import KubeConfig

from workflowplane.api.kube import _proxied, kube_client
from workflowplane.kits.http1_httpx import Http1Transport

PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_without_proxies_every_server_is_direct() -> None:
    assert not _proxied("https://kube.example:6443")


def test_a_proxied_server_is_told_apart_from_a_bypassed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,.svc")
    assert _proxied("https://kube.example:6443")
    assert not _proxied("https://127.0.0.1:6443")
    assert not _proxied("https://kubernetes.default.svc:443")
    assert not _proxied("http://kube.example:8080")  # no HTTP_PROXY


def _transport_of(server: str) -> Any:
    config = KubeConfig.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    ).get()
    client: Any = kube_client(config)
    return client._client._client._transport  # lightkube's httpx client's transport


def test_the_client_sends_through_the_lean_transport_unless_proxied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(_transport_of("https://kube.example:6443"), Http1Transport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert not isinstance(_transport_of("https://kube.example:6443"), Http1Transport)
