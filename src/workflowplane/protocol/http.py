"""HTTP rules both ends of the tunnel apply: which methods travel, which headers never do."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote

ALLOWED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# Per-connection headers (RFC 9110 §7.6.1) and framing headers the receiving side recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

# On the gateway's own error answers (not the plane's), so a caller can tell a 403 "no
# connection is authorized for this CR" from a 403 of the plane's RBAC.
GATEWAY_ERROR_HEADER = "X-Cluster-Gateway-Error"
# One agent process names itself on every replica connection's upgrade (the same uuid4 hex on
# each), so replicas count agents, not connections (docs/ha.md).
AGENT_INSTANCE_HEADER = "X-Workflowplane-Agent-Instance"

# High availability (docs/ha.md). The agent's process id, the same on each replica
# connection of one agent; the replica that forwarded a request (never forwarded again); and
# on an answer given without the request reaching any agent (safe to retry, any method).
AGENT_INSTANCE_HEADER = "X-Workflowplane-Agent-Instance"
FORWARDED_BY_HEADER = "X-Workflowplane-Forwarded-By"
UNSENT_HEADER = "X-Workflowplane-Unsent"

# The caller's identity never crosses the tunnel: the plane's API server must see only the
# agent's credentials. Both ends strip these (OpenChoreo's agent forwards ``Impersonate-*``).
CALLER_CREDENTIAL = "authorization"
IMPERSONATION_PREFIX = "impersonate-"


def is_caller_credential(name: str) -> bool:
    """``Authorization`` and every ``Impersonate-*`` header (any case)."""
    lower = name.lower()
    return lower == CALLER_CREDENTIAL or lower.startswith(IMPERSONATION_PREFIX)


def resource_segments(path: str) -> tuple[list[str], list[str]] | None:
    """A Kubernetes API path as the API server routes it, however spelled (percent-encoded,
    doubled slashes, the old ``/watch/`` form): its group and version (``["api", "v1"]``,
    ``["apis", group, version]``) and the segments after them, ``watch`` dropped; None for
    a path under neither ``/api`` nor ``/apis``. Both ends judge paths on it."""
    segments = [segment for segment in unquote(path).split("/") if segment]
    if segments[:1] == ["api"]:
        prefix, rest = segments[:2], segments[2:]
    elif segments[:1] == ["apis"]:
        prefix, rest = segments[:3], segments[3:]
    else:
        return None
    return prefix, rest[1:] if rest[:1] == ["watch"] else rest


def kube_true(value: str | None) -> bool:
    """A boolean query parameter as the API server reads it (``Convert_Slice_string_To_bool``):
    given with any value but ``0`` or ``false`` (any case) is true, ``watch=``, ``watch`` and
    ``watch=yes`` included; absent (None) is false."""
    return value is not None and value != "0" and value.lower() != "false"


def first_values(query: str) -> dict[str, str]:
    """Each parameter's first value, the one the API server acts on (Go's ``url.Values.Get``,
    as aiohttp's ``MultiDict.get``): ``watch=true&watch=false`` is a watch, and must be
    counted as one however the duplicates are ordered. A parameter without a value is kept
    (as ``""``): the API server takes ``watch`` alone for a watch."""
    values: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(key, value)
    return values


def is_streaming_query(query: Mapping[str, str] | str, path: str | None = None) -> bool:
    """``watch=true`` anywhere, or ``follow=true`` on a log (``path`` ending in ``/log``; any
    path when it is not given): an answer that lasts as long as the caller wants, which both
    ends count against their stream caps, not their request caps. ``follow`` means nothing
    to the API server elsewhere; on a pod's or service's proxy it is the application's own
    parameter."""
    if isinstance(query, str):
        if "%" not in query and "watch" not in query and "follow" not in query:
            return False  # most requests: nothing to parse (``%`` may hide either name)
        values: Mapping[str, str] = first_values(query)
    else:
        values = query
    if kube_true(values.get("watch")):
        return True
    return (path is None or path.endswith("/log")) and kube_true(values.get("follow"))
