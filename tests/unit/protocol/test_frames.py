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


def test_tunnel_request_omits_unset_optional_fields() -> None:
    wire = json.loads(encode(TunnelRequest(request_id=REQUEST_ID, method="GET", path="/api")))
    assert wire == {"requestID": REQUEST_ID, "target": "k8s", "method": "GET", "path": "/api"}


def test_tunnel_response_always_carries_status_headers_body() -> None:
    wire = json.loads(encode(TunnelResponse(request_id=REQUEST_ID, status_code=204)))
    assert wire == {"requestID": REQUEST_ID, "statusCode": 204, "headers": {}, "body": ""}


def test_tunnel_response_error_detail() -> None:
    frame = TunnelResponse(
        request_id=REQUEST_ID,
        status_code=502,
        error=TunnelError(code=502, message="upstream refused", details="dial tcp"),
    )
    wire = json.loads(encode(frame))
    assert wire["error"] == {"code": 502, "message": "upstream refused", "details": "dial tcp"}


def test_stream_init_and_chunk_fields() -> None:
    init = json.loads(
        encode(
            StreamInit(
                request_id=REQUEST_ID,
                method="GET",
                path="/api/v1/pods",
                query="watch=true",
                headers={},
                is_upgrade=False,
            )
        )
    )
    assert init == {
        "requestID": REQUEST_ID,
        "target": "k8s",
        "method": "GET",
        "path": "/api/v1/pods",
        "query": "watch=true",
        "headers": {},
        "isUpgrade": False,
        "upgradeProto": "",
    }
    chunk = json.loads(encode(StreamChunk(request_id=REQUEST_ID, data=b"\x00\xff")))
    assert chunk == {"requestID": REQUEST_ID, "data": "AP8="}
    close = json.loads(encode(StreamChunk(request_id=REQUEST_ID, is_close=True)))
    assert close == {"requestID": REQUEST_ID, "data": "", "isClose": True}


def test_agent_classifies_frames_by_fields() -> None:
    go_request = b'{"requestID":"r","target":"k8s","method":"GET","path":"/api","body":null}'
    assert isinstance(classify_agent_frame(go_request.replace(b',"body":null', b"")), TunnelRequest)
    init = b'{"requestID":"r","target":"k8s","method":"GET","path":"/x","isUpgrade":false}'
    assert isinstance(classify_agent_frame(init), StreamInit)
    assert isinstance(classify_agent_frame(b'{"requestID":"r","isClose":true}'), StreamChunk)


def test_gateway_classifies_frames_and_tolerates_go_nulls() -> None:
    response = classify_gateway_frame(
        b'{"requestID":"r","statusCode":500,"headers":null,"body":null,'
        b'"error":{"code":500,"message":"bad request","details":""}}'
    )
    assert isinstance(response, TunnelResponse)
    assert response.status_code == 500 and response.body is None
    assert isinstance(response.error, TunnelError) and response.error.message == "bad request"
    chunk = classify_gateway_frame(b'{"requestID":"r","data":"aGVsbG8="}')
    assert isinstance(chunk, StreamChunk) and chunk.data == b"hello"


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
