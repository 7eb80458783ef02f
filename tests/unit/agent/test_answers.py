"""How the agent answers: one bounded frame for a v1 gateway (OpenChoreo's), chunks for a v2 one,
errors as responses a Go gateway decodes and passes on, never a silent drop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from workflowplane.agent.tunnel import FrameServer, body_limit
from workflowplane.agent.upstream import ResponseTooLarge, UpstreamResult, read_bounded
from workflowplane.kits.http1 import ConnectTimeout, Http1Error
from workflowplane.protocol import StreamChunk, TunnelRequest, TunnelResponse
from workflowplane.protocol.binary import decode_binary, encode_binary, encode_chunk

REQUEST = {"requestID": "r1", "target": "k8s", "method": "GET", "path": "/api/v1/configmaps"}


class FakeContent:
    """An upstream body arriving in ``pieces``; ``fail_after`` pieces it breaks."""

    def __init__(self, pieces: list[bytes], fail_after: int | None = None) -> None:
        self.pieces, self.fail_after, self.read = pieces, fail_after, 0

    async def _iterate(self) -> AsyncIterator[bytes]:
        for index, piece in enumerate(self.pieces):
            if index == self.fail_after:
                raise Http1Error("connection reset by the API server")
            self.read += len(piece)
            yield piece

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._iterate()

    def iter_chunked(self, _: int) -> AsyncIterator[bytes]:
        return self._iterate()


class FakeResponse:
    def __init__(self, body: list[bytes], length: int | None = None, **kw: Any) -> None:
        self.status = 200
        self.headers = [("Content-Type", "application/json")]
        self.content = FakeContent(body, kw.get("fail_after"))
        self.content_length = length
        self.complete = False  # a body is still to come

    def iter_any(self) -> AsyncIterator[bytes]:
        return self.content.iter_any()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_any()])


class FakeUpstream:
    """Answers every request with ``response``; ``open`` and ``request`` as Upstream has them."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[FakeResponse]:
        yield self.response

    def open(self, *_: object, streaming: bool = False) -> Any:
        return self._opened()

    async def request(self, *args: Any, streaming: bool = False) -> UpstreamResult:
        body = await read_bounded(self.response, args[6])  # type: ignore[arg-type]
        return UpstreamResult(self.response.status, {"Content-Type": ["application/json"]}, body)


async def _serve(
    upstream: Any, frame: dict[str, Any] = REQUEST, **options: Any
) -> list[dict[str, Any]]:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    server = FrameServer(upstream, send, timeout=5, max_concurrent=2, **options)
    server.dispatch(json.dumps(frame))
    await server.idle()
    await server.close()
    return [json.loads(data) for data in sent]


def _status_message(frame: dict[str, Any]) -> str:
    status = json.loads(base64.b64decode(frame["body"]))
    assert status["kind"] == "Status" and status["code"] == frame["statusCode"]
    return str(status["message"])


async def test_v1_answer_is_one_frame() -> None:
    (frame,) = await _serve(FakeUpstream(FakeResponse([b'{"items":', b"[]}"])))
    assert frame["statusCode"] == 200 and base64.b64decode(frame["body"]) == b'{"items":[]}'
    assert "chunked" not in frame and "error" not in frame


async def test_v1_body_over_the_frame_bound_is_refused_at_once_by_its_length() -> None:
    response = FakeResponse([b"x" * 10], length=5_000_000)
    (frame,) = await _serve(FakeUpstream(response), max_frame=1_000_000)
    assert frame["statusCode"] == 502 and response.content.read == 0  # nothing was read
    assert frame["error"]["code"] == 502 and "larger than" in frame["error"]["message"]
    assert "larger than" in _status_message(frame) and "limit=" in _status_message(frame)


async def test_v1_body_over_the_bound_without_a_length_stops_reading_there() -> None:
    response = FakeResponse([b"x" * 400_000] * 10)
    (frame,) = await _serve(FakeUpstream(response), max_frame=1_000_000)
    assert frame["statusCode"] == 502 and response.content.read <= body_limit(1_000_000) + 400_000


async def test_a_frame_over_the_bound_for_any_reason_becomes_a_502_not_silence() -> None:
    class HugeHeaders(FakeUpstream):
        async def request(self, *args: Any, streaming: bool = False) -> UpstreamResult:
            return UpstreamResult(200, {"X-Big": ["h" * 300_000]}, b"{}")

    (frame,) = await _serve(HugeHeaders(FakeResponse([])), max_frame=200_000)
    assert frame["statusCode"] == 502 and "does not fit in one frame" in _status_message(frame)


@pytest.mark.parametrize("chunked", [False, True], ids=["v1", "v2"])
async def test_an_api_server_that_cannot_be_reached_is_a_502_saying_so(chunked: bool) -> None:
    """Not a 504 "did not answer within 30s" at the connect timeout (10 s): nothing was sent,
    as OpenChoreo's agent says with its 502 "dial tcp ...: i/o timeout"."""

    class Unreachable(FakeUpstream):
        def open(self, *_: object, streaming: bool = False) -> Any:
            raise ConnectTimeout("connecting to 10.0.0.1:6443 took over 10s")

        async def request(self, *args: Any, streaming: bool = False) -> UpstreamResult:
            raise ConnectTimeout("connecting to 10.0.0.1:6443 took over 10s")

    (frame,) = await _serve(Unreachable(FakeResponse([])), chunked=chunked)
    assert frame["statusCode"] == 502
    assert "connecting to 10.0.0.1:6443 took over 10s" in _status_message(frame)


async def test_v2_large_answer_goes_in_chunks_then_close() -> None:
    body = bytes(range(256)) * 100  # 25,600 bytes
    pieces = [body[i : i + 3000] for i in range(0, len(body), 3000)]
    frames = await _serve(FakeUpstream(FakeResponse(pieces)), chunked=True, chunk_bytes=10_000)
    head, *chunks, close = frames
    assert head == {
        "requestID": "r1",
        "statusCode": 200,
        "headers": {"Content-Type": ["application/json"]},
        "chunked": True,
    }
    data = [base64.b64decode(chunk["data"]) for chunk in chunks]
    assert [len(d) for d in data] == [10_000, 10_000, 5_600] and b"".join(data) == body
    assert close == {"requestID": "r1", "data": None, "isClose": True}


async def test_v2_small_answer_stays_one_plain_frame() -> None:
    (frame,) = await _serve(FakeUpstream(FakeResponse([b"{}"])), chunked=True, chunk_bytes=1000)
    assert frame["statusCode"] == 200 and "chunked" not in frame


async def test_v2_upstream_failure_after_the_head_closes_with_the_reason() -> None:
    response = FakeResponse([b"a" * 1000, b"b" * 1000, b"c"], fail_after=2)
    frames = await _serve(FakeUpstream(response), chunked=True, chunk_bytes=1000)
    assert frames[0]["chunked"] is True
    assert frames[-1]["isClose"] is True
    assert b"connection reset" in base64.b64decode(frames[-1]["data"])


async def test_v2_upstream_failure_before_the_head_is_an_error_response() -> None:
    response = FakeResponse([b"a"], fail_after=0)
    (frame,) = await _serve(FakeUpstream(response), chunked=True, chunk_bytes=1000)
    assert frame["statusCode"] == 502 and "backend request failed" in frame["error"]["message"]


async def test_unknown_target_is_a_404_a_go_gateway_passes_on() -> None:
    frame = {**REQUEST, "target": "hubble"}
    (answer,) = await _serve(FakeUpstream(FakeResponse([])), frame)
    assert answer["statusCode"] == 404
    assert answer["error"] == {"code": 404, "message": "unknown target: hubble"}
    assert answer["headers"] == {"Content-Type": ["application/json"]}
    assert "unknown target: hubble" in _status_message(answer)


async def test_an_upgrade_we_do_not_serve_is_closed_with_the_reason() -> None:
    """Upgrades serve pods' exec and attach (agent/exec.py); anything else is closed at once."""
    init = {**REQUEST, "method": "POST", "isUpgrade": True, "upgradeProto": "SPDY/3.1"}
    (close,) = await _serve(FakeUpstream(FakeResponse([])), init)
    assert close["isClose"] is True
    assert b"exec and attach only" in base64.b64decode(close["data"])


async def test_read_bounded_raises_with_size_and_limit() -> None:
    with pytest.raises(ResponseTooLarge, match="of 20 bytes is larger than 10 bytes"):
        await read_bounded(FakeResponse([b"x"], length=20), 10)  # type: ignore[arg-type]


def test_body_limit_leaves_room_for_base64_and_the_envelope() -> None:
    limit = body_limit(16 * 1024 * 1024)
    assert limit * 4 / 3 < 16 * 1024 * 1024 - 60_000


async def test_idle_waits_for_work_in_flight() -> None:
    gate = asyncio.Event()

    class Slow(FakeUpstream):
        async def request(self, *args: Any, streaming: bool = False) -> UpstreamResult:
            await gate.wait()
            return UpstreamResult(200, {}, b"")

    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    server = FrameServer(Slow(FakeResponse([])), send, timeout=5, max_concurrent=1)  # type: ignore[arg-type]
    server.dispatch(json.dumps(REQUEST))
    waiter = asyncio.create_task(server.idle())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    await waiter
    assert len(sent) == 1


async def test_v3_chunks_are_built_once_from_the_pieces_read_exact_bytes() -> None:
    """Pieces of any size (one spans several chunks) become chunks of exactly ``chunk_bytes``,
    each one bytearray message built for the sender (which masks it in place)."""
    body = bytes(range(256)) * 200  # 51,200 bytes
    cuts = [0, 1, 700, 9_999, 10_000, 33_333, 51_200]
    pieces = [body[a:b] for a, b in itertools.pairwise(cuts)]
    sent: list[bytes | bytearray] = []

    async def send(data: bytes | bytearray) -> None:
        sent.append(data)

    server = FrameServer(
        FakeUpstream(FakeResponse(pieces)),
        send,
        timeout=5,
        max_concurrent=2,
        chunked=True,
        chunk_bytes=10_000,
        encoder=encode_binary,
        chunk_encoder=encode_chunk,
    )
    server.dispatch(encode_binary(TunnelRequest(**_request_fields())), binary=True)
    await server.idle()
    head, *chunks, close = [decode_binary(bytes(data)) for data in sent]
    assert isinstance(head, TunnelResponse) and head.chunked is True
    assert all(isinstance(data, bytearray) for data in sent[1:-1])
    data = [chunk.data for chunk in chunks if isinstance(chunk, StreamChunk)]
    assert [len(d or b"") for d in data] == [10_000] * 5 + [1_200]
    assert b"".join(d or b"" for d in data) == body
    assert isinstance(close, StreamChunk) and close.is_close is True and close.data is None


def _request_fields() -> dict[str, Any]:
    return {"request_id": "r1", "target": "k8s", "method": "GET", "path": "/api/v1/configmaps"}
