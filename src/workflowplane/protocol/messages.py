"""OpenChoreo cluster-gateway/agent frames, v1: JSON text frames with no type field.

Each struct mirrors one Go type of ``internal/cluster-agent/messaging/types.go`` field for field:
the same JSON names and types (``streamId`` is an integer, ``error.details`` an object), bodies
as ``bytes`` here and padded standard base64 on the wire (Go's ``[]byte``). Encoding writes
exactly the keys Go writes: a field Go tags ``omitempty`` is left out when it is empty (zero
values are normalised away on construction), every other field is always written, and
``StreamChunk.data`` is ``null`` when there is none, as Go's nil slice is. Decoding is as lenient
as Go's: a missing field takes its zero value, unknown fields are ignored.

Our extensions are fields Go ignores, sent only on a connection that negotiated them
(``docs/streaming.md``): ``TunnelResponse.chunked``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from workflowplane.protocol.http import is_streaming_query

PLANE_TYPE_WORKFLOW = "workflowplane"
TARGET_K8S = "k8s"
# The WebSocket subprotocol an agent offers and a gateway selects to agree on our extensions:
# chunked answers and body streams (docs/streaming.md). OpenChoreo's peers neither offer nor
# select it, so a connection without it is plain v1.
TUNNEL_V2 = "workflowplane.tunnel.v2"
# v2's meaning in binary messages, bodies as raw bytes (protocol/binary.py): our peers only.
TUNNEL_V3 = "workflowplane.tunnel.v3"

Headers = dict[str, list[str]]


class TunnelError(msgspec.Struct, omit_defaults=True):
    """Go ``ErrorDetails``: ``code`` and ``details`` are omitempty; ``details`` is an object."""

    code: int = 0
    message: str = ""
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class TunnelRequest(msgspec.Struct):
    """gateway -> agent (Go ``HTTPTunnelRequest``): one HTTP request to run in the plane."""

    request_id: str = msgspec.field(default="", name="requestID")
    gateway_request_id: str | UnsetType = msgspec.field(default=UNSET, name="gatewayRequestID")
    target: str = TARGET_K8S
    method: str = "GET"
    path: str = "/"
    query: str | UnsetType = UNSET
    headers: Headers | UnsetType = UNSET
    body: bytes | UnsetType = UNSET

    def __post_init__(self) -> None:
        """Empty optional fields are absent, as Go's ``omitempty`` leaves them."""
        if self.gateway_request_id == "":
            self.gateway_request_id = UNSET
        if self.query == "":
            self.query = UNSET
        if self.headers == {}:
            self.headers = UNSET
        if self.body == b"":
            self.body = UNSET


class TunnelResponse(msgspec.Struct, omit_defaults=True):
    """agent -> gateway (Go ``HTTPTunnelResponse``): the answer to one request.

    ``requestID`` and ``statusCode`` are always written by Go; here they are left out only when
    empty/zero, which a Go decoder reads identically (and no valid frame has). ``chunked`` is our
    extension: the body continues in StreamChunks of this requestID up to one with ``isClose``.
    """

    request_id: str = msgspec.field(default="", name="requestID")
    status_code: int = msgspec.field(default=0, name="statusCode")
    headers: Headers | None = None
    body: bytes | None = None
    error: TunnelError | None = None
    chunked: bool = False

    def __post_init__(self) -> None:
        if self.headers == {}:
            self.headers = None
        if self.body == b"":
            self.body = None


class StreamInit(msgspec.Struct):
    """gateway -> agent (Go ``HTTPTunnelStreamInit``): open a long-lived stream.

    Go sends it only for upgrades (exec: ``isUpgrade`` true, ``upgradeProto`` ``SPDY/3.1``). With
    ``isUpgrade`` false it is our watch/follow body stream (``docs/streaming.md``), which a Go
    agent would take for a plain request: a gateway sends it only to agents that negotiated it.
    """

    request_id: str = msgspec.field(default="", name="requestID")
    target: str = TARGET_K8S
    method: str = "GET"
    path: str = "/"
    query: str | UnsetType = UNSET
    headers: Headers | UnsetType = UNSET
    is_upgrade: bool = msgspec.field(default=False, name="isUpgrade")
    upgrade_proto: str | UnsetType = msgspec.field(default=UNSET, name="upgradeProto")

    def __post_init__(self) -> None:
        if self.query == "":
            self.query = UNSET
        if self.headers == {}:
            self.headers = UNSET
        if self.upgrade_proto == "":
            self.upgrade_proto = UNSET


class StreamChunk(msgspec.Struct):
    """Either direction (Go ``HTTPTunnelStreamChunk``): a slice of a stream, or its end.

    ``data`` is always written (``null`` when None); ``streamId`` (exec: 0 stdin, 1 stdout,
    2 stderr, 3 resize) and ``isClose`` are omitempty.
    """

    request_id: str = msgspec.field(default="", name="requestID")
    data: bytes | None = None
    stream_id: int | UnsetType = msgspec.field(default=UNSET, name="streamId")
    is_close: bool | UnsetType = msgspec.field(default=UNSET, name="isClose")

    def __post_init__(self) -> None:
        if self.stream_id == 0:
            self.stream_id = UNSET
        if self.is_close is False:
            self.is_close = UNSET


Frame = TunnelRequest | TunnelResponse | StreamInit | StreamChunk

_encoder = msgspec.json.Encoder()


# A frame's metadata (headers, an error's message and details): bodies are not metadata. A
# peer's structure of millions of header names or values, decoded whole, held the loop for
# seconds and cost gigabytes for one 64 MiB frame.
MAX_META_BYTES = 1024 * 1024


class MetadataTooLarge(msgspec.ValidationError):
    """A frame whose metadata (all but its body) is over ``MAX_META_BYTES``: not decoded.
    Its ``request_id`` names the request it is for (to fail that one, not the connection)."""

    def __init__(self, request_id: str, size: int) -> None:
        super().__init__(
            f"headers and error of {size} bytes in one frame (all but the body: at most "
            f"{MAX_META_BYTES})"
        )
        self.request_id = request_id


class MalformedRequest(ValueError):
    """A request (or stream) frame whose requestID reads but whose fields do not: its sender
    is answered (a 500 "bad request", as the spec has it), not left to time out."""

    def __init__(self, request_id: str, problem: str, *, stream: bool) -> None:
        super().__init__(problem)
        self.request_id = request_id
        self.stream = stream


class _Probe(msgspec.Struct):
    """The fields Go's receivers look at to tell frames apart (everything else is skipped),
    and the body's size: what is left is metadata, measured before any of it is decoded."""

    request_id: str | None = msgspec.field(default=None, name="requestID")
    is_upgrade: bool | None = msgspec.field(default=None, name="isUpgrade")
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty: absent
    is_close: bool | None = msgspec.field(default=None, name="isClose")
    body: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_probe = msgspec.json.Decoder(_Probe)


class _RequestId(msgspec.Struct):
    request_id: str = msgspec.field(default="", name="requestID")


_request_id = msgspec.json.Decoder(_RequestId)


def json_request_id(raw: bytes | str) -> str | None:
    """A JSON frame's requestID when it reads as a string, though other fields do not."""
    try:
        return _request_id.decode(raw).request_id or None
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


_decoders: dict[type[Frame], msgspec.json.Decoder[Frame]] = {
    kind: msgspec.json.Decoder(kind)
    for kind in (TunnelRequest, TunnelResponse, StreamInit, StreamChunk)
}


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def _is_chunk(probe: _Probe) -> bool:
    """Go: ``RequestID != "" && (Data != nil || IsClose)``; ``"data": null`` is a nil slice."""
    size = len(probe.data)  # a view into the frame: never copy a large body to look at it
    has_data = size > 0 and not (size == 4 and bytes(probe.data) == b"null")
    return has_data or probe.is_close is True


def _probe_frame(raw: bytes | str) -> _Probe:
    probe = _probe.decode(raw)
    if not probe.request_id:
        raise msgspec.ValidationError("frame has no requestID")
    # all but the body counts (a key given twice is decoded twice: only the last is kept)
    meta = len(raw) - len(probe.body) - len(probe.data)
    if meta > MAX_META_BYTES:
        raise MetadataTooLarge(probe.request_id, meta)
    return probe


def classify_agent_frame(raw: bytes | str) -> Frame:
    """What an agent received, decided as OpenChoreo's agent decides it.

    ``isUpgrade`` true: an upgrade stream (exec). Then a chunk (data or isClose). ``isUpgrade``
    present and false: our body stream (Go's gateways never send it). Otherwise a request.
    """
    try:
        probe = _probe_frame(raw)
    except MetadataTooLarge:
        raise  # refused by its own rule, without decoding any more of it
    except msgspec.ValidationError as exc:
        request_id = json_request_id(raw)
        if request_id is None:
            raise
        raise MalformedRequest(request_id, str(exc), stream=False) from exc
    if probe.is_upgrade is True:
        kind: type[Frame] = StreamInit
    elif _is_chunk(probe):
        kind = StreamChunk
    elif probe.is_upgrade is False:
        kind = StreamInit
    else:
        kind = TunnelRequest
    try:
        return _decoders[kind].decode(raw)
    except msgspec.ValidationError as exc:
        if kind is StreamChunk or probe.request_id is None:
            raise
        raise MalformedRequest(probe.request_id, str(exc), stream=kind is StreamInit) from exc


def classify_gateway_frame(raw: bytes | str) -> Frame:
    """What a gateway received: a chunk (data or isClose), otherwise a tunnel response."""
    probe = _probe_frame(raw)
    kind: type[Frame] = StreamChunk if _is_chunk(probe) else TunnelResponse
    return _decoders[kind].decode(raw)


def opens_stream(frame: TunnelRequest | StreamInit) -> bool:
    """A frame whose answer is long-lived: any stream init (a watch, a log, an exec) or a
    watch/follow sent as a plain request (as OpenChoreo's gateway sends them)."""
    if isinstance(frame, StreamInit):
        return True
    return is_streaming_query(frame.query if isinstance(frame.query, str) else "", frame.path)
