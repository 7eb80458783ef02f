"""OpenChoreo cluster-gateway/agent frames, v1: JSON text frames with no type field.

Bodies are ``bytes`` in Python and base64 (standard alphabet, padded) on the wire, exactly as
Go's ``encoding/json`` renders ``[]byte``. Fields the spec marks optional are ``UNSET`` until
given and then omitted, as Go's ``omitempty`` does; every other field is always written. On
decoding every field is lenient (a missing one takes its zero value), so a terse peer still works;
Go's ``null`` for a nil slice or map decodes as ``None``.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

PLANE_TYPE_WORKFLOW = "workflowplane"
TARGET_K8S = "k8s"

Headers = dict[str, list[str]]


class TunnelError(msgspec.Struct):
    """Error detail an agent attaches to a response it could not serve normally."""

    code: int = 0
    message: str = ""
    details: str = ""


class TunnelRequest(msgspec.Struct, rename="camel"):
    """gateway -> agent: one HTTP request to run against a target in the plane."""

    request_id: str = msgspec.field(default="", name="requestID")
    target: str = TARGET_K8S
    method: str = "GET"
    path: str = "/"
    gateway_request_id: str | UnsetType = msgspec.field(default=UNSET, name="gatewayRequestID")
    query: str | UnsetType = UNSET
    headers: Headers | UnsetType = UNSET
    body: bytes | UnsetType = UNSET


class TunnelResponse(msgspec.Struct, rename="camel"):
    """agent -> gateway: the whole response to one TunnelRequest."""

    request_id: str = msgspec.field(default="", name="requestID")
    status_code: int = msgspec.field(default=0, name="statusCode")
    headers: Headers | None = msgspec.field(default_factory=dict)
    body: bytes | None = b""
    error: TunnelError | UnsetType | None = UNSET


class StreamInit(msgspec.Struct, rename="camel"):
    """gateway -> agent: open a long-lived stream (watch, follow logs, upgrade)."""

    request_id: str = msgspec.field(default="", name="requestID")
    target: str = TARGET_K8S
    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: Headers = msgspec.field(default_factory=dict)
    is_upgrade: bool = msgspec.field(default=False, name="isUpgrade")
    upgrade_proto: str = msgspec.field(default="", name="upgradeProto")


class StreamChunk(msgspec.Struct, rename="camel"):
    """Either direction: a slice of a stream's bytes, or its end (``is_close``)."""

    request_id: str = msgspec.field(default="", name="requestID")
    data: bytes | None = b""
    stream_id: str | UnsetType = msgspec.field(default=UNSET, name="streamId")
    is_close: bool | UnsetType = msgspec.field(default=UNSET, name="isClose")


Frame = TunnelRequest | TunnelResponse | StreamInit | StreamChunk

_encoder = msgspec.json.Encoder()
_probe = msgspec.json.Decoder(dict[str, msgspec.Raw])
_decoders: dict[type[Frame], msgspec.json.Decoder[Frame]] = {
    kind: msgspec.json.Decoder(kind)
    for kind in (TunnelRequest, TunnelResponse, StreamInit, StreamChunk)
}


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def _classify(raw: bytes | str, fallback: type[Frame]) -> Frame:
    """Classify a frame by its fields, as the spec says; raise msgspec errors on bad input."""
    fields = _probe.decode(raw)
    if not fields.get("requestID") or fields["requestID"] == msgspec.Raw(b'""'):
        raise msgspec.ValidationError("frame has no requestID")
    if "isUpgrade" in fields:
        kind: type[Frame] = StreamInit
    elif "data" in fields or "isClose" in fields:
        kind = StreamChunk
    else:
        kind = fallback
    return _decoders[kind].decode(raw)


def classify_agent_frame(raw: bytes | str) -> Frame:
    """What an agent received: a stream init, a chunk, or otherwise a tunnel request."""
    return _classify(raw, TunnelRequest)


def classify_gateway_frame(raw: bytes | str) -> Frame:
    """What a gateway received: a chunk, or otherwise a tunnel response."""
    return _classify(raw, TunnelResponse)
