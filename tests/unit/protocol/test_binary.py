"""Tunnel v3's binary frames: round trips, bounds, and bad input that fails clearly."""

from __future__ import annotations

import asyncio
import logging
import os
import struct

import msgspec
import pytest

from workflowplane.agent.tunnel import FrameServer
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.frames import request_id_of
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.streams import StreamBuffer
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol import (
    BinaryFrameError,
    Frame,
    decode_binary,
    encode_binary,
    take_chunk,
)
from workflowplane.protocol.binary import HEADER, MAX_ID_BYTES, MAX_META_BYTES, encode_chunk
from workflowplane.protocol.messages import (
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
)

EVERY_BYTE = bytes(range(256)) * 4
FRAMES: list[Frame] = [
    TunnelRequest(
        request_id="r1",
        gateway_request_id="g1",
        method="POST",
        path="/api/v1/namespaces/n/configmaps",
        query="limit=5",
        headers={"Content-Type": ["application/json"], "Accept": ["a", "b"]},
        body=EVERY_BYTE,
    ),
    TunnelRequest(request_id="r2"),
    TunnelResponse(request_id="r3", status_code=200, headers={"X": ["y"]}, body=EVERY_BYTE),
    TunnelResponse(request_id="r4", status_code=200, headers={"X": ["y"]}, chunked=True),
    TunnelResponse(
        request_id="r5", status_code=502, error=TunnelError(502, "boom", {"why": [1, 2]})
    ),
    StreamInit(request_id="s1", path="/api/v1/pods", query="watch=true", is_upgrade=False),
    StreamInit(request_id="s2", method="POST", is_upgrade=True, upgrade_proto="SPDY/3.1"),
    StreamChunk(request_id="c1", data=EVERY_BYTE, stream_id=2),
    StreamChunk(request_id="c2", data=b"", is_close=True),  # empty data, not none
    StreamChunk(request_id="c3", is_close=True),  # none: an exec that succeeded
    StreamChunk(request_id="c4", data=b"\x00"),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.request_id)
def test_every_frame_survives_a_round_trip(frame: Frame) -> None:
    assert decode_binary(encode_binary(frame)) == frame


def test_a_body_travels_as_raw_bytes_not_base64() -> None:
    body = os.urandom(100_000)
    data = encode_binary(TunnelResponse(request_id="r", status_code=200, body=body))
    assert data.endswith(body) and len(data) < len(body) + 100


def test_the_request_id_is_read_from_the_first_bytes_alone() -> None:
    data = encode_binary(StreamChunk(request_id="the-id", data=b"x" * 10_000))
    assert request_id_of(data[:64], binary=True) == "the-id"
    assert request_id_of(data[: HEADER.size], binary=True) is None  # not arrived yet
    assert request_id_of(b"\x00garbage", binary=True) is None


def _header(kind: int = 2, version: int = 0, id_len: int = 1, meta_len: int = 0) -> bytes:
    return HEADER.pack(kind, version, id_len, meta_len)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "shorter than a v3 header"),
        (b"\x02\x00\x00", "shorter than a v3 header"),
        (_header(kind=9) + b"r", "unknown frame kind 9"),
        (_header(version=7) + b"r", "unknown frame version 7"),
        (_header(id_len=0), "requestID of 0 bytes"),
        (_header(id_len=MAX_ID_BYTES + 1) + b"r" * 300, f"requestID of {MAX_ID_BYTES + 1}"),
        (_header(meta_len=MAX_META_BYTES + 1) + b"r", "metadata of"),
        (_header(meta_len=50) + b"r" + b"\x80", "shorter than its header says"),
        (_header(meta_len=3) + b"r" + b"\xc1\xc1\xc1", "does not decode"),
        (_header(meta_len=1) + b"r" + b"\x01", "does not decode"),  # not a map
        (_header(id_len=2, meta_len=1) + b"\xff\xfe" + b"\x80", "does not decode"),
    ],
)
def test_what_is_not_a_frame_fails_with_a_clear_error(data: bytes, problem: str) -> None:
    with pytest.raises(BinaryFrameError, match=problem):
        decode_binary(data)


def test_every_truncation_of_a_frame_fails_clearly_or_decodes_a_shorter_body() -> None:
    data = encode_binary(FRAMES[0])
    meta_end = (
        HEADER.size + struct.unpack_from("!H", data, 2)[0] + struct.unpack_from("!I", data, 4)[0]
    )
    for cut in range(meta_end):
        with pytest.raises(BinaryFrameError):
            decode_binary(data[:cut])


def test_a_metadata_field_of_the_wrong_type_is_refused() -> None:
    meta = msgspec.msgpack.encode({"statusCode": "200"})
    with pytest.raises(BinaryFrameError, match="does not decode"):
        decode_binary(_header(kind=2, meta_len=len(meta)) + b"r" + meta)


def test_an_oversized_request_id_is_refused_when_encoding() -> None:
    with pytest.raises(BinaryFrameError, match="requestID must be"):
        encode_binary(StreamChunk(request_id="x" * (MAX_ID_BYTES + 1), data=b"1"))


GARBAGE = [b"", b"\x04", os.urandom(64), _header(kind=4, meta_len=2) + b"r" + b"\x81\xc1"]


async def test_the_agent_drops_garbage_and_serves_the_next_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    server = FrameServer(
        object(),  # type: ignore[arg-type]  # never asked: the frames are refused
        send,
        timeout=5,
        max_concurrent=2,
        chunked=True,
        encoder=encode_binary,
    )
    with caplog.at_level(logging.WARNING):
        for raw in GARBAGE:
            server.dispatch(raw, binary=True)
    assert sum("dropping malformed frame" in r.getMessage() for r in caplog.records) == 4
    server.dispatch(encode_binary(TunnelRequest(request_id="ok", target="nope")), binary=True)
    await server.idle()
    (answer,) = [decode_binary(data) for data in sent]
    assert isinstance(answer, TunnelResponse) and answer.status_code == 404
    assert answer.request_id == "ok"
    await server.close()


class _Socket:
    closed = False

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, message: bytes = b"") -> bool:
        return True


async def test_the_gateway_drops_garbage_counts_it_and_routes_the_next_answer() -> None:
    metrics = GatewayMetrics()
    manager = ConnectionManager(PlaneCache(None), metrics)  # type: ignore[arg-type]
    endpoint = AgentEndpoint(manager, GatewayConfig(), metrics)
    leaf = issue_certificate(generate_ca("any"), "agent").certificate
    conn = AgentConnection("workflowplane", "p", _Socket(), leaf, {"ns/wp"}, v2=True, binary=True)
    for raw in GARBAGE:
        assert not endpoint._route_frame(conn, raw, binary=True)
    assert metrics.registry.get_sample_value("workflowplane_gateway_dropped_frames_total") == 4
    waiting: asyncio.Future[TunnelResponse] = asyncio.get_running_loop().create_future()
    conn.pending["ok"] = waiting
    answer = TunnelResponse(request_id="ok", status_code=200, body=b"\x00\x01")
    assert endpoint._route_frame(conn, encode_binary(answer), binary=True)
    assert waiting.result() == answer


async def test_a_body_chunk_reaches_its_stream_as_the_message_it_was_read_into() -> None:
    """The gateway's direct delivery does not copy a chunk's data out of its message; an
    exec stream (whole chunks) still gets the chunk decoded."""
    metrics = GatewayMetrics()
    manager = ConnectionManager(PlaneCache(None), metrics)  # type: ignore[arg-type]
    endpoint = AgentEndpoint(manager, GatewayConfig(), metrics)
    leaf = issue_certificate(generate_ca("any"), "agent").certificate
    conn = AgentConnection("workflowplane", "p", _Socket(), leaf, {"ns/wp"}, v2=True, binary=True)
    conn.bodies["body"] = body = StreamBuffer("ns/wp", 1 << 20)
    conn.streams["exec"] = execs = StreamBuffer("ns/wp", 1 << 20, whole_chunks=True)
    message = bytearray(encode_binary(StreamChunk(request_id="body", data=EVERY_BYTE)))
    assert endpoint._direct(conn, message)
    assert (await body.get()) is message and message == EVERY_BYTE
    chunk = StreamChunk(request_id="exec", data=b"out", stream_id=1)
    assert endpoint._direct(conn, bytearray(encode_binary(chunk)))
    assert await execs.get() == chunk


def test_a_chunk_built_from_pieces_is_the_chunk_of_their_bytes() -> None:
    pieces = [b"ab", b"", b"c" * 70_000, b"d"]
    message = encode_chunk("rid", pieces)
    assert isinstance(message, bytearray)
    assert message == encode_binary(StreamChunk(request_id="rid", data=b"".join(pieces)))
    assert decode_binary(message) == StreamChunk(request_id="rid", data=b"".join(pieces))


@pytest.mark.parametrize(
    "chunk",
    [frame for frame in FRAMES if isinstance(frame, StreamChunk)],
    ids=lambda f: f.request_id,
)
def test_a_chunk_given_away_is_its_message_with_the_head_cut_off(chunk: StreamChunk) -> None:
    message = bytearray(encode_binary(chunk))
    taken = take_chunk(message)
    assert taken is not None
    bare, data = taken
    assert bare == msgspec.structs.replace(chunk, data=None)
    assert data == chunk.data
    if chunk.data is not None:
        assert data is message  # the same buffer: the data was not copied out of it


def test_only_a_chunk_is_taken_and_anything_else_is_left_as_it_was() -> None:
    answer = bytearray(encode_binary(FRAMES[2]))
    before = bytes(answer)
    assert take_chunk(answer) is None and answer == before
    broken = bytearray(encode_binary(StreamChunk(request_id="c", data=b"x")))
    broken[HEADER.size + 1] = 0xC1  # never valid msgpack
    with pytest.raises(BinaryFrameError, match="metadata does not decode"):
        take_chunk(broken)
    with pytest.raises(BinaryFrameError, match="shorter than its header says"):
        take_chunk(broken[: HEADER.size + 2])
