"""A server the environment sends through a proxy keeps httpx's own transport (the lean
client speaks no proxy); any other gets the lean one."""

from __future__ import annotations

import pytest

from workflowplane.api.kube import _proxied

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
