"""Frames across languages: what OpenChoreo's Go types encode, we decode; what we encode, Go's
types decode to the same values, and its agent and gateway classify as we mean them.

``gocodec`` (tests/interop/gocodec) is built from the peer's own ``messaging`` package.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import uncaptured
from tests.interop.gocodec_build import ensure
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
from workflowplane.protocol.messages import Frame
from workflowplane.testenv.peer import source_dir

pytestmark = pytest.mark.interop
BODY = b'{"kind":"ConfigMap"}\x00\xff'
HEADERS = {"Content-Type": ["application/json"], "Accept": ["application/json", "*/*"]}

# The same frames as gocodec's samples(), built with our types.
OURS: dict[str, Frame] = {
    "request": TunnelRequest(
        request_id="req-1",
        gateway_request_id="gw-0011",
        target="k8s",
        method="POST",
        path="/api/v1/namespaces/a/configmaps",
        query="dryRun=All&fieldManager=x",
        headers=HEADERS,
        body=BODY,
    ),
    "request-minimal": TunnelRequest(request_id="req-2", method="GET", path="/api"),
    "response": TunnelResponse(
        request_id="req-1",
        status_code=200,
        headers={"Content-Type": ["application/json"], "Audit-Id": ["a1"]},
        body=b'{"kind":"Status"}',
    ),
    "response-empty": TunnelResponse(request_id="req-2", status_code=204),
    "response-error": TunnelResponse(
        request_id="req-1",
        status_code=502,
        error=TunnelError(code=502, message="backend request failed: refused"),
    ),
    "response-error-details": TunnelResponse(
        request_id="req-2",
        status_code=404,
        error=TunnelError(
            code=404, message="unknown target: x", details={"target": "x", "known": ["k8s"]}
        ),
    ),
    "stream-init-exec": StreamInit(
        request_id="exec-1",
        method="POST",
        path="/api/v1/namespaces/a/pods/p/exec",
        query="command=ls&stderr=true&stdout=true",
        is_upgrade=True,
        upgrade_proto="SPDY/3.1",
    ),
    "chunk-stdout": StreamChunk(request_id="exec-1", data=b"\x01hi", stream_id=1),
    "chunk-stdin": StreamChunk(request_id="exec-1", data=b"\x00ls", stream_id=0),
    "chunk-close": StreamChunk(request_id="exec-1", is_close=True),
    "chunk-close-error": StreamChunk(request_id="exec-1", data=b"invalid exec path", is_close=True),
}
GO_TYPE = {
    TunnelRequest: "request",
    TunnelResponse: "response",
    StreamInit: "init",
    StreamChunk: "chunk",
}
# How OpenChoreo's agent and gateway classify each frame (request/init/chunk/response).
KINDS = {
    "request": ("request", "response"),
    "request-minimal": ("request", "response"),
    "response": ("request", "response"),
    "response-empty": ("request", "response"),
    "response-error": ("request", "response"),
    "response-error-details": ("request", "response"),
    "stream-init-exec": ("init", "response"),
    "chunk-stdout": ("chunk", "chunk"),
    "chunk-stdin": ("chunk", "chunk"),
    "chunk-close": ("chunk", "chunk"),
    "chunk-close-error": ("chunk", "chunk"),
}


@pytest.fixture(scope="module", autouse=True)
def gocodec(request: pytest.FixtureRequest) -> Path:
    """The Go program, built (once per program and peer source) before the module's tests."""
    if not (source_dir() / "go.mod").is_file():
        pytest.skip(f"OpenChoreo's peer source is not at {source_dir()}")
    with uncaptured(request):
        _BUILT["gocodec"] = ensure()
    return _BUILT["gocodec"]


_BUILT: dict[str, Path] = {}


def _run(command: str, stdin: str = "") -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(_BUILT["gocodec"]), command], input=stdin, capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


@cache
def _go_samples() -> dict[str, dict[str, Any]]:
    return {line["name"]: line["frame"] for line in _run("samples")}


def _go_decode(frames: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    lines = "".join(json.dumps({"type": t, "frame": f.decode()}) + "\n" for t, f in frames)
    return _run("decode", lines)


def test_every_go_sample_has_a_counterpart_here() -> None:
    assert set(_go_samples()) == set(OURS)


@pytest.mark.parametrize("name", sorted(OURS))
def test_we_encode_exactly_the_keys_and_values_go_encodes(name: str) -> None:
    ours, go = json.loads(encode(OURS[name])), _go_samples()[name]
    for key in sorted(set(ours) | set(go)):
        assert ours.get(key, "<absent>") == go.get(key, "<absent>"), key


@pytest.mark.parametrize("name", sorted(OURS))
def test_go_encoded_frames_decode_here_to_the_same_values(name: str) -> None:
    raw = json.dumps(_go_samples()[name]).encode()
    expected = OURS[name]
    decoded = (
        classify_gateway_frame(raw)
        if isinstance(expected, TunnelResponse | StreamChunk)
        else classify_agent_frame(raw)
    )
    assert type(decoded) is type(expected)
    for field in expected.__struct_fields__:
        assert getattr(decoded, field) == getattr(expected, field), field


def test_frames_we_encode_decode_in_go_to_the_same_values() -> None:
    names = sorted(OURS)
    results = _go_decode([(GO_TYPE[type(OURS[n])], encode(OURS[n])) for n in names])
    for name, result in zip(names, results, strict=True):
        assert result["ok"], (name, result.get("error"))
        ours = json.loads(encode(OURS[name]))
        for key in sorted(set(ours) | set(result["reencoded"])):
            assert result["reencoded"].get(key) == ours.get(key), (name, key)
        assert (result["agentKind"], result["gatewayKind"]) == KINDS[name], name


def test_our_classifiers_agree_with_go_on_our_frames() -> None:
    for name, frame in OURS.items():
        agent_kind, gateway_kind = KINDS[name]
        raw = encode(frame)
        assert GO_TYPE[type(classify_agent_frame(raw))] == agent_kind, name
        assert GO_TYPE[type(classify_gateway_frame(raw))] == gateway_kind, name


def test_go_rejects_the_frames_this_issue_was_about() -> None:
    """The old encodings fail in Go (string details, string streamId): the test can tell."""
    old = [
        ("response", b'{"requestID":"r","statusCode":502,"error":{"message":"m","details":"x"}}'),
        ("chunk", b'{"requestID":"r","data":"AQ==","streamId":"1"}'),
    ]
    results = _go_decode(old)
    assert [r["ok"] for r in results] == [False, False]
    assert "details" in results[0]["error"] and "streamId" in results[1]["error"]
    assert results[0]["gatewayKind"] == "dropped"


def test_a_body_stream_init_is_a_plain_request_to_a_go_agent() -> None:
    """Why a gateway may send ``isUpgrade: false`` only to an agent that negotiated it."""
    init = StreamInit(request_id="w", path="/api/v1/pods", query="watch=true")
    (result,) = _go_decode([("init", encode(init))])
    assert result["ok"] and result["agentKind"] == "request"
