"""Where a Kubernetes watch stream is, so that it can resume elsewhere without a gap.

A watch through the gateway is a stream of JSON lines, each ``{"type": ..., "object": ...}``.
Every ADDED/MODIFIED/DELETED event and every BOOKMARK carries the object's
``metadata.resourceVersion``: a watch reopened with that resourceVersion (on another gateway
replica) continues with the next event, so nothing is lost and nothing repeats. ERROR events
(a 410 Gone among them) move nothing: the caller sees them as before. Lines come from the
plane (untrusted): a line too long or not an event is passed on and ignored here.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec

from workflowplane.protocol.http import first_values, kube_true

MAX_EVENT_LINE_BYTES = 16 * 1024 * 1024
MAX_RESOURCE_VERSION = 256
POSITION_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
# Parameters about where a watch starts: a resumed watch starts at the position instead (the
# initial events, if asked for, were already delivered).
START_PARAMETERS = frozenset({"resourceVersion", "resourceVersionMatch", "sendInitialEvents"})


def is_watch(query: str) -> bool:
    return kube_true(first_values(query).get("watch"))


def timeout_of(query: str) -> float | None:
    """The watch's ``timeoutSeconds`` (None: not given, or not a positive number)."""
    for key, value in parse_qsl(query):
        if key == "timeoutSeconds" and value.isdigit() and int(value) > 0:
            return float(value)
    return None


class _Metadata(msgspec.Struct):
    resource_version: str | None = msgspec.field(default=None, name="resourceVersion")


class _Object(msgspec.Struct):
    metadata: _Metadata | None = None


class _Event(msgspec.Struct):
    """The two fields a position needs; the object stays unparsed until the type says it
    carries one (every other member of a large object is skipped, not built)."""

    type: Any = None
    object: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_events = msgspec.json.Decoder(_Event)
_objects = msgspec.json.Decoder(_Object)


def _event(line: bytes) -> _Event | None:
    if len(line) > MAX_EVENT_LINE_BYTES or not line.strip():
        return None
    try:
        return _events.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _version_in(event: _Event) -> str | None:
    if event.type not in POSITION_TYPES or not event.object:
        return None
    try:
        metadata = _objects.decode(event.object).metadata
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    version = metadata.resource_version if metadata is not None else None
    if version is not None and 0 < len(version) <= MAX_RESOURCE_VERSION and version.isprintable():
        return version
    return None


def resource_version_of(line: bytes) -> str | None:
    """The resourceVersion a watch event line moves the stream to (None: it moves nothing)."""
    event = _event(line)
    return _version_in(event) if event is not None else None


class WatchPosition:
    """The last resourceVersion seen in one watch stream, and whether it ended in an ERROR
    event (the API server's own end: the caller decides what follows, as before)."""

    def __init__(self) -> None:
        self.resource_version: str | None = None
        self.error_seen = False

    def observe(self, line: bytes) -> None:
        event = _event(line)  # one parse of the line for both questions
        if event is None:
            return
        version = _version_in(event)
        if version is not None:
            self.resource_version = version
            self.error_seen = False
        elif event.type == "ERROR":
            self.error_seen = True

    def resume_query(self, query: str, seconds_left: float | None = None) -> str:
        """The watch's query from the last resourceVersion seen, with what is left of its
        ``timeoutSeconds`` (so the caller's watch still ends when it asked)."""
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)]
        if seconds_left is not None:
            left = str(max(1, math.ceil(seconds_left)))
            pairs = [(k, left if k == "timeoutSeconds" else v) for k, v in pairs]
        if self.resource_version is None:
            return urlencode(pairs)
        pairs = [(k, v) for k, v in pairs if k not in START_PARAMETERS]
        return urlencode([*pairs, ("resourceVersion", self.resource_version)])
