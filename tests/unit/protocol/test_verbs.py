"""The Kubernetes verb of a request, as the API server names it (a bounded metrics label)."""

from __future__ import annotations

import pytest

from workflowplane.protocol.verbs import VERBS, kube_verb


@pytest.mark.parametrize(
    ("method", "path", "query", "verb"),
    [
        ("GET", "/api/v1/namespaces", "", "list"),
        ("GET", "/api/v1/namespaces/ns", "", "get"),
        ("PUT", "/api/v1/namespaces/ns/finalize", "", "update"),
        ("GET", "/api/v1/namespaces/ns/status", "", "get"),
        ("GET", "/api/v1/namespaces/ns/pods", "limit=50", "list"),
        ("GET", "/api/v1/namespaces/ns/pods", "watch=true", "watch"),
        ("GET", "/api/v1/namespaces/ns/pods/p/log", "follow=true", "get"),
        ("GET", "/apis/argoproj.io/v1alpha1/workflows", "watch=1", "watch"),
        ("GET", "/api/v1/pods", "watch=yes", "watch"),  # the API server's reading of a bool
        ("GET", "/api/v1/pods", "watch", "watch"),
        ("GET", "/api/v1/pods", "watch=False", "list"),
        ("GET", "/apis/argoproj.io/v1alpha1/namespaces/ns/workflows/w", "", "get"),
        ("HEAD", "/api/v1/nodes", "", "list"),
        ("POST", "/api/v1/namespaces/ns/configmaps", "", "create"),
        ("PATCH", "/api/v1/namespaces/ns/configmaps/c", "", "patch"),
        ("DELETE", "/api/v1/namespaces/ns/configmaps/c", "", "delete"),
        ("DELETE", "/api/v1/namespaces/ns/configmaps", "", "deletecollection"),
        ("GET", "/version", "", "get"),
        ("GET", "/apis", "", "get"),
        ("GET", "/apis/argoproj.io/v1alpha1", "", "get"),
        ("OPTIONS", "/api/v1/pods", "", "other"),
        ("BREW", "/coffee", "", "other"),
    ],
)
def test_the_verb_is_the_api_servers(method: str, path: str, query: str, verb: str) -> None:
    assert kube_verb(method, path, query) == verb
    assert verb in VERBS


def test_a_parsed_query_works_as_well() -> None:
    assert kube_verb("get", "/api/v1/pods", {"watch": "true"}) == "watch"
