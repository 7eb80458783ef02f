"""The v1 frames byte-for-byte: field names, base64 bodies, optional fields, classification.

The expected JSON is what OpenChoreo's Go peers produce and accept (encoding/json: ``[]byte``
as padded standard base64, ``omitempty`` fields absent when empty)."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from workflowplane.protocol import (
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
    classify_agent_frame,
    classify_gateway_frame,
    encode,
)

REQUEST_ID = "0b7c5a4e-9f7e-4d7a-8a53-3c1f0f3f2d11"


def test_tunnel_request_fields_and_base64_body() -> None:
    frame = TunnelRequest(
        request_id=REQUEST_ID,
        gateway_request_id="gw-1",
        target="k8s",
        method="POST",
        path="/api/v1/namespaces/a/configmaps",
        query="dryRun=All",
        headers={"Content-Type": ["application/json"]},
        body=b'{"kind":"ConfigMap"}',
    )
    wire = json.loads(encode(frame))
    assert wire == {
        "requestID": REQUEST_ID,
        "gatewayRequestID": "gw-1",
        "target": "k8s",
        "method": "POST",
        "path": "/api/v1/namespaces/a/configmaps",
        "query": "dryRun=All",
        "headers": {"Content-Type": ["application/json"]},
        "body": base64.b64encode(b'{"kind":"ConfigMap"}').decode(),
    }


def test_tunnel_request_omits_empty_optional_fields_as_go_omitempty_does() -> None:
    frame = TunnelRequest(request_id=REQUEST_ID, path="/api", query="", headers={}, body=b"")
    wire = json.loads(encode(frame))
    assert wire == {"requestID": REQUEST_ID, "target": "k8s", "method": "GET", "path": "/api"}


def test_tunnel_response_omits_empty_headers_and_body() -> None:
    wire = json.loads(encode(TunnelResponse(request_id=REQUEST_ID, status_code=204, body=b"")))
    assert wire == {"requestID": REQUEST_ID, "statusCode": 204}


def test_tunnel_response_error_details_is_an_object_and_code_omitempty() -> None:
    frame = TunnelResponse(
        request_id=REQUEST_ID,
        status_code=502,
        error=TunnelError(code=502, message="upstream refused", details={"cause": "dial tcp"}),
    )
    assert json.loads(encode(frame))["error"] == {
        "code": 502,
        "message": "upstream refused",
        "details": {"cause": "dial tcp"},
    }
    bare = TunnelResponse(request_id=REQUEST_ID, status_code=404, error=TunnelError(message="x"))
    assert json.loads(encode(bare))["error"] == {"message": "x"}


def test_stream_init_and_chunk_fields() -> None:
    init = StreamInit(
        request_id=REQUEST_ID,
        method="POST",
        path="/api/v1/namespaces/a/pods/p/exec",
        query="command=ls",
        is_upgrade=True,
        upgrade_proto="SPDY/3.1",
    )
    assert json.loads(encode(init)) == {
        "requestID": REQUEST_ID,
        "target": "k8s",
        "method": "POST",
        "path": "/api/v1/namespaces/a/pods/p/exec",
        "query": "command=ls",
        "isUpgrade": True,
        "upgradeProto": "SPDY/3.1",
    }
    chunk = StreamChunk(request_id=REQUEST_ID, data=b"\x01\xff", stream_id=1)
    assert json.loads(encode(chunk)) == {"requestID": REQUEST_ID, "data": "Af8=", "streamId": 1}
    stdin = StreamChunk(request_id=REQUEST_ID, data=b"\x00", stream_id=0, is_close=False)
    assert json.loads(encode(stdin)) == {"requestID": REQUEST_ID, "data": "AA=="}
    close = json.loads(encode(StreamChunk(request_id=REQUEST_ID, is_close=True)))
    assert close == {"requestID": REQUEST_ID, "data": None, "isClose": True}


def test_stream_id_is_an_integer_on_the_wire() -> None:
    frame = classify_gateway_frame(b'{"requestID":"r","data":"AQ==","streamId":2}')
    assert isinstance(frame, StreamChunk) and frame.stream_id == 2
    with pytest.raises(msgspec.ValidationError):
        classify_gateway_frame(b'{"requestID":"r","data":"AQ==","streamId":"2"}')


def test_agent_classifies_frames_as_the_go_agent_does() -> None:
    request = b'{"requestID":"r","target":"k8s","method":"GET","path":"/api"}'
    assert isinstance(classify_agent_frame(request), TunnelRequest)
    upgrade = b'{"requestID":"r","target":"k8s","method":"POST","path":"/x","isUpgrade":true}'
    assert isinstance(classify_agent_frame(upgrade), StreamInit)
    assert isinstance(classify_agent_frame(b'{"requestID":"r","isClose":true}'), StreamChunk)
    assert isinstance(classify_agent_frame(b'{"requestID":"r","data":""}'), StreamChunk)
    # Go's nil data: not a chunk, so a plain request (the Go agent answers it with 404)
    assert isinstance(classify_agent_frame(b'{"requestID":"r","data":null}'), TunnelRequest)


def test_body_stream_init_is_our_extension() -> None:
    init = b'{"requestID":"r","target":"k8s","method":"GET","path":"/x","isUpgrade":false}'
    assert isinstance(classify_agent_frame(init), StreamInit)


def test_gateway_classifies_frames_and_tolerates_go_nulls() -> None:
    response = classify_gateway_frame(
        b'{"requestID":"r","statusCode":500,"headers":null,"body":null,'
        b'"error":{"code":500,"message":"bad request"}}'
    )
    assert isinstance(response, TunnelResponse)
    assert response.status_code == 500 and response.body is None
    assert isinstance(response.error, TunnelError) and response.error.message == "bad request"
    chunk = classify_gateway_frame(b'{"requestID":"r","data":"aGVsbG8="}')
    assert isinstance(chunk, StreamChunk) and chunk.data == b"hello"
    close = classify_gateway_frame(b'{"requestID":"r","data":null,"isClose":true}')
    assert isinstance(close, StreamChunk) and close.is_close is True and close.data is None


def test_chunked_extension_is_omitted_unless_set() -> None:
    plain = json.loads(encode(TunnelResponse(request_id="r", status_code=200)))
    assert "chunked" not in plain
    split = json.loads(encode(TunnelResponse(request_id="r", status_code=200, chunked=True)))
    assert split["chunked"] is True


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"statusCode":200}',
        b'{"requestID":""}',
        b'{"requestID":"r","data":"%%%"}',
    ],
)
def test_malformed_frames_raise_a_decode_error(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        classify_gateway_frame(raw)
