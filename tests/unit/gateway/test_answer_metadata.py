"""An agent's JSON (v1/v2) answer whose headers or error are over the metadata bound (1 MiB,
as v3's): not decoded, its one request fails with a 502 saying why, the connection carries
on. Decoded whole, a 64 MiB frame of millions of header names or values held the loop for
seconds and cost gigabytes."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest

from tests.unit.gateway.stand_ins import wired
from workflowplane.protocol import TunnelRequest, TunnelResponse, encode
from workflowplane.protocol.messages import (
    MAX_META_BYTES,
    MetadataTooLarge,
    classify_agent_frame,
    classify_gateway_frame,
)

MANY_NAMES = {f"X-{n}": ["v"] for n in range(400_000)}  # about 5 MB
MANY_VALUES = {"X-Many": ["v"] * 1_500_000}
DEEP_DETAILS = {"code": 502, "message": "m", "details": [{}] * 1_000_000}


def frame_of(rid: str, **fields: object) -> bytes:
    return json.dumps({"requestID": rid, "statusCode": 200, **fields}).encode()


@pytest.mark.parametrize(
    "fields",
    [{"headers": MANY_NAMES}, {"headers": MANY_VALUES}, {"error": DEEP_DETAILS}],
    ids=["names", "values", "error-details"],
)
async def test_an_answer_over_the_metadata_bound_fails_its_request_and_nothing_else(
    fields: dict[str, object],
) -> None:
    w = wired()
    ask = asyncio.create_task(w.proxy.ask(w.conn, TunnelRequest(request_id="r1", path="/api")))
    await w.socket.sent.wait()
    rid = w.socket.frames[0].request_id
    raw = frame_of(rid, **fields)
    assert len(raw) > MAX_META_BYTES
    tracemalloc.start()
    try:
        assert not w.endpoint._route_frame(w.conn, raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_META_BYTES, f"{peak} bytes to look at a {len(raw)}-byte frame"
    async with asyncio.timeout(5):  # failed at once, not at the request timeout
        answer = await ask
    assert answer.status == 502
    assert b"headers and error of" in answer.body  # type: ignore[operator]
    later = asyncio.create_task(w.proxy.ask(w.conn, TunnelRequest(request_id="r2", path="/api")))
    await asyncio.sleep(0)
    rid = w.socket.frames[-1].request_id
    assert w.endpoint._route_frame(w.conn, encode(TunnelResponse(request_id=rid, status_code=200)))
    assert (await later).status_code == 200  # type: ignore[union-attr]


def test_the_bound_is_checked_before_decoding_at_both_ends() -> None:
    big = frame_of("r", headers=MANY_NAMES)
    for classify in (classify_gateway_frame, classify_agent_frame):
        with pytest.raises(MetadataTooLarge) as caught:
            classify(big)
        assert caught.value.request_id == "r"
    small = frame_of("r", headers={"Content-Type": ["application/json"]})
    assert classify_gateway_frame(small).headers == {"Content-Type": ["application/json"]}


def test_a_key_given_twice_cannot_hide_its_first_value() -> None:
    """The probe kept only the last ``headers``: ``{"headers": {4M names}, "headers": {}}``
    passed it and was decoded whole (6 s of the loop for 64 MiB)."""
    raw = (
        b'{"requestID":"r","statusCode":200,"headers":'
        + json.dumps(MANY_NAMES).encode()
        + b',"headers":{}}'
    )
    with pytest.raises(MetadataTooLarge):
        classify_gateway_frame(raw)
    body = b'"' + b"A" * (4 << 20) + b'"'  # a large body is not metadata
    assert classify_gateway_frame(b'{"requestID":"r","statusCode":200,"body":' + body + b"}")


@pytest.mark.parametrize(
    "fields",
    [{"statusCode": "ok"}, {"headers": {"X": "not a list"}}, {"body": "not base64!"}],
    ids=["status", "headers", "body"],
)
async def test_an_answer_that_does_not_decode_fails_its_request_at_once(
    fields: dict[str, object],
) -> None:
    """Its requestID reads: the caller gets a 502 naming the problem now, not after the
    request timeout; an undecodable answer naming no request in flight is only dropped."""
    w = wired()
    ask = asyncio.create_task(w.proxy.ask(w.conn, TunnelRequest(request_id="r1", path="/api")))
    await w.socket.sent.wait()
    rid = w.socket.frames[0].request_id
    assert not w.endpoint._route_frame(w.conn, frame_of(rid, **fields))
    async with asyncio.timeout(5):  # failed at once, not at the request timeout
        answer = await ask
    assert answer.status == 502
    assert b"the agent's answer did not decode" in answer.body  # type: ignore[operator]
    assert not w.endpoint._route_frame(w.conn, frame_of("nobody-asked", **fields))
