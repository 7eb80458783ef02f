"""The Kubernetes verb of a request (get, list, watch, create, ...), as the API server's own
metrics and audit log name it: a bounded label that says what a proxied request did, where
the HTTP method alone cannot tell a list from a get, or a watch from either."""

from __future__ import annotations

from collections.abc import Mapping

from workflowplane.protocol.http import first_values, kube_true

_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
VERBS = frozenset(
    {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "other"}
)


def _on_collection(path: str) -> bool | None:
    """True for a resource collection, False for one object (or its subresource), None for
    a path that names no resource (discovery, /version, /healthz)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        return None
    if len(rest) > 2 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        rest = rest[2:]  # namespaces/NS/RESOURCE[/NAME[/SUB]]
    if not rest:
        return None
    return len(rest) == 1


def _watches(query: Mapping[str, str] | str) -> bool:
    """``watch`` as the API server reads it (:func:`kube_true`); a query string is parsed
    only when it can say so (every request is counted: most carry no query at all)."""
    if isinstance(query, str):
        if "watch" not in query and "%" not in query:
            return False
        query = first_values(query)
    return kube_true(query.get("watch"))


def kube_verb(method: str, path: str, query: Mapping[str, str] | str) -> str:
    """``get``/``list``/``watch``/``create``/``update``/``patch``/``delete``/
    ``deletecollection``; ``other`` for any method the tunnel does not carry. ``follow``
    (pod logs) is a ``get`` of the log subresource, as the API server counts it."""
    method = method.upper()
    if method in _METHOD_VERBS:
        return _METHOD_VERBS[method]
    if method in ("GET", "HEAD"):
        if _watches(query):
            return "watch"
        return "list" if _on_collection(path) else "get"
    if method == "DELETE":
        return "deletecollection" if _on_collection(path) else "delete"
    return "other"
