"""Tunnel v3: the v2 frames as binary WebSocket messages, bodies as raw bytes (no base64).

Only our gateway and agent speak it, when they negotiated ``TUNNEL_V3`` (docs/streaming.md);
OpenChoreo's peers keep v1 JSON. Meaning is v2's exactly (chunked answers, body streams,
exec); only the encoding differs. One message, big-endian:

    kind     u8    1 request, 2 response, 3 stream init, 4 stream chunk
    version  u8    0
    id_len   u16   bytes of the requestID (1..MAX_ID_BYTES), UTF-8
    meta_len u32   bytes of the metadata (at most MAX_META_BYTES)
    requestID, then metadata (the frame's struct as msgpack, without its requestID and body),
    then the body (TunnelRequest/TunnelResponse ``body``, StreamChunk ``data``) to the end.

The requestID sits at a fixed place, so a gateway can name the request of a message it
refuses to read whole (``gateway/frames.py``). A StreamChunk's metadata says whether it has
data (``hasData``), so no data and empty data stay apart as in v1 (an exec's ``isClose``
without data means success).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import msgspec
from msgspec import UNSET

from workflowplane.protocol.messages import (
    MAX_META_BYTES,
    Frame,
    StreamChunk,
    StreamInit,
    TunnelRequest,
    TunnelResponse,
)

HEADER: Final = struct.Struct("!BBHI")
VERSION: Final = 0
MAX_ID_BYTES: Final = 256
_KINDS: Final[dict[type[Frame], int]] = {
    TunnelRequest: 1,
    TunnelResponse: 2,
    StreamInit: 3,
    StreamChunk: 4,
}
_TYPES: Final = {code: kind for kind, code in _KINDS.items()}
_decoders = {code: msgspec.msgpack.Decoder(kind) for code, kind in _TYPES.items()}
_encoder = msgspec.msgpack.Encoder()


_UNDECODABLE_META: Final = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


class BinaryFrameError(ValueError):
    """A v3 message that is not a frame; the message says what is wrong with it."""


class _ChunkMeta(msgspec.Struct, omit_defaults=True):
    """A StreamChunk's metadata: ``data`` travels as the body, ``has_data`` says whether it
    was None (the body is empty then)."""

    stream_id: int = msgspec.field(default=0, name="streamId")
    is_close: bool = msgspec.field(default=False, name="isClose")
    has_data: bool = msgspec.field(default=False, name="hasData")


_chunk_meta = msgspec.msgpack.Decoder(_ChunkMeta)


def _split(frame: Frame) -> tuple[bytes, bytes]:
    """The metadata (msgpack, without requestID and body) and the body of a frame."""
    if isinstance(frame, StreamChunk):
        meta = _ChunkMeta(
            stream_id=frame.stream_id if isinstance(frame.stream_id, int) else 0,
            is_close=frame.is_close is True,
            has_data=frame.data is not None,
        )
        return _encoder.encode(meta), frame.data or b""
    if isinstance(frame, TunnelRequest):
        body = frame.body if isinstance(frame.body, bytes) else b""
        bare: Frame = msgspec.structs.replace(frame, request_id="", body=UNSET)
        return _encoder.encode(bare), body
    if isinstance(frame, TunnelResponse):
        body = frame.body or b""
        return _encoder.encode(msgspec.structs.replace(frame, request_id="", body=None)), body
    return _encoder.encode(msgspec.structs.replace(frame, request_id="")), b""


def _request_id_bytes(request_id: str) -> bytes:
    rid = request_id.encode()
    if not 0 < len(rid) <= MAX_ID_BYTES:
        raise BinaryFrameError(f"requestID must be 1 to {MAX_ID_BYTES} bytes, not {len(rid)}")
    return rid


def encode_binary(frame: Frame) -> bytes:
    """One v3 message (the body is copied once, into the message)."""
    rid = _request_id_bytes(frame.request_id)
    meta, body = _split(frame)
    head = HEADER.pack(_KINDS[type(frame)], VERSION, len(rid), len(meta))
    return b"".join((head, rid, meta, body))


def encode_chunk(request_id: str, parts: Sequence[bytes | bytearray | memoryview]) -> bytearray:
    """A v3 StreamChunk message whose data is ``parts`` joined, built with one copy of them
    into a bytearray the caller owns (a WebSocket client may mask it in place)."""
    rid = _request_id_bytes(request_id)
    meta = _encoder.encode(_ChunkMeta(has_data=True))
    head = HEADER.pack(_KINDS[StreamChunk], VERSION, len(rid), len(meta))
    return bytearray().join((head, rid, meta, *parts))


def _header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """kind, id length, metadata length of a message; BinaryFrameError when they are wrong."""
    if len(data) < HEADER.size:
        raise BinaryFrameError(f"a {len(data)}-byte message is shorter than a v3 header")
    kind, version, id_len, meta_len = HEADER.unpack_from(data)
    if kind not in _TYPES:
        raise BinaryFrameError(f"unknown frame kind {kind}")
    if version != VERSION:
        raise BinaryFrameError(f"unknown frame version {version}")
    if not 0 < id_len <= MAX_ID_BYTES:
        raise BinaryFrameError(f"requestID of {id_len} bytes (1 to {MAX_ID_BYTES} allowed)")
    if meta_len > MAX_META_BYTES:
        raise BinaryFrameError(f"metadata of {meta_len} bytes (at most {MAX_META_BYTES})")
    return kind, id_len, meta_len


def request_id_of(head: bytes | bytearray | memoryview) -> str | None:
    """The requestID among a message's first bytes (None when they do not show one)."""
    try:
        _, id_len, _ = _header(head)
    except BinaryFrameError:
        return None
    if len(head) < HEADER.size + id_len:
        return None
    return bytes(head[HEADER.size : HEADER.size + id_len]).decode(errors="replace")


def _bounds(data: bytes | bytearray) -> tuple[int, int, int]:
    """kind, end of the requestID, end of the metadata; BinaryFrameError when wrong."""
    kind, id_len, meta_len = _header(data)
    meta_end = HEADER.size + id_len + meta_len
    if len(data) < meta_end:
        raise BinaryFrameError(
            f"a {len(data)}-byte message is shorter than its header says ({meta_end} bytes)"
        )
    return kind, HEADER.size + id_len, meta_end


def _chunk_without_data(
    data: bytes | bytearray, id_end: int, meta_end: int
) -> tuple[StreamChunk, bool]:
    """A StreamChunk message's frame, its data left out, and whether it has data."""
    try:
        rid = data[HEADER.size : id_end].decode()
        flags = _chunk_meta.decode(data[id_end:meta_end])
    except _UNDECODABLE_META as exc:
        raise BinaryFrameError(f"frame metadata does not decode: {exc}") from exc
    chunk = StreamChunk(request_id=rid, stream_id=flags.stream_id, is_close=flags.is_close)
    return chunk, flags.has_data


def take_chunk(data: bytearray) -> tuple[StreamChunk, bytearray | None] | None:
    """A v3 StreamChunk message its reader gives away, as the chunk (without its data) and
    its data: ``data`` itself, its head cut off in place (CPython moves a bytearray's start,
    so a large chunk is not copied again); a chunk without data leaves ``data`` untouched
    (its reader may still decline it whole). None, ``data`` untouched, for another kind of
    message; BinaryFrameError as :func:`decode_binary`."""
    kind, id_end, meta_end = _bounds(data)
    if kind != _KINDS[StreamChunk]:
        return None
    chunk, has_data = _chunk_without_data(data, id_end, meta_end)
    if not has_data:
        return chunk, None
    del data[:meta_end]
    return chunk, data


def decode_binary(data: bytes | bytearray) -> Frame:
    """A v3 message back into its frame; BinaryFrameError for anything that is not one.
    The body is copied out once (``data`` may be the receive buffer, reused or not)."""
    kind, id_end, meta_end = _bounds(data)
    view = memoryview(data)
    if kind == _KINDS[StreamChunk]:
        chunk, has_data = _chunk_without_data(data, id_end, meta_end)
        chunk.data = bytes(view[meta_end:]) if has_data else None
        return chunk
    try:
        rid = bytes(view[HEADER.size : id_end]).decode()
        frame = _decoders[kind].decode(view[id_end:meta_end])
    except _UNDECODABLE_META as exc:
        raise BinaryFrameError(f"frame metadata does not decode: {exc}") from exc
    frame.request_id = rid
    if isinstance(frame, TunnelRequest | TunnelResponse):
        body = bytes(view[meta_end:])
        frame.body = body or (UNSET if isinstance(frame, TunnelRequest) else None)
    return frame
