"""Where a Kubernetes watch stream is, so that it can resume elsewhere without a gap.

A watch through the gateway is a stream of JSON lines, each ``{"type": ..., "object": ...}``.
Every ADDED/MODIFIED/DELETED event and every BOOKMARK carries the object's
``metadata.resourceVersion``: a watch reopened with that resourceVersion (on another gateway
replica) continues with the next event, so nothing is lost and nothing repeats. ERROR events
(a 410 Gone among them) move nothing: the caller sees them as before. Lines come from the
plane (untrusted): a line too long or not an event is passed on and ignored here.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

MAX_EVENT_LINE_BYTES = 16 * 1024 * 1024
MAX_RESOURCE_VERSION = 256
POSITION_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
# Parameters about where a watch starts: a resumed watch starts at the position instead (the
# initial events, if asked for, were already delivered).
START_PARAMETERS = frozenset({"resourceVersion", "resourceVersionMatch", "sendInitialEvents"})


def is_watch(query: str) -> bool:
    return any(k == "watch" and v in ("true", "1") for k, v in parse_qsl(query))


def resource_version_of(line: bytes) -> str | None:
    """The resourceVersion a watch event line moves the stream to (None: it moves nothing)."""
    if len(line) > MAX_EVENT_LINE_BYTES or not line.strip():
        return None
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("type") not in POSITION_TYPES:
        return None
    obj = event.get("object")
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    if isinstance(version, str) and 0 < len(version) <= MAX_RESOURCE_VERSION:
        return version if version.isprintable() else None
    return None


class WatchPosition:
    """The last resourceVersion seen in one watch stream."""

    def __init__(self) -> None:
        self.resource_version: str | None = None

    def observe(self, line: bytes) -> None:
        version = resource_version_of(line)
        if version is not None:
            self.resource_version = version

    def resume_query(self, query: str) -> str:
        """The watch's query, from the last resourceVersion seen (unchanged if none yet)."""
        if self.resource_version is None:
            return query
        pairs = [
            (k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in START_PARAMETERS
        ]
        return urlencode([*pairs, ("resourceVersion", self.resource_version)])
