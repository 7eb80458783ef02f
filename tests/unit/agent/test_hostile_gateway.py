"""Frames a hostile (or broken) gateway may send: each fails alone, bounded, with a reason.

Duplicate requestIDs used to orphan the first request (never cancelled, a stream slot held
for good), a deeply nested frame raised RecursionError out of ``dispatch`` (the connection
ended), every malformed frame wrote a log line (most of the CPU of a flood of empty frames),
and an exec's stdin the API server did not take was queued without bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.unit.agent.stand_ins import Gateway, Upstream, plain_tunnel, serving, until
from workflowplane.agent import exec as agent_exec
from workflowplane.agent.exec import ExecSessions
from workflowplane.agent.tunnel import REFUSALS_QUEUED_BYTES, FrameServer
from workflowplane.agent.upstream import _target as upstream_target
from workflowplane.protocol import (
    StreamChunk,
    StreamInit,
    TunnelRequest,
    TunnelResponse,
    classify_gateway_frame,
    encode,
)
from workflowplane.protocol.binary import HEADER, decode_binary, encode_binary
from workflowplane.protocol.exec import k8s_to_tunnel, tunnel_to_k8s

WATCH = StreamInit(request_id="x", path="/api/v1/pods", query="watch=true")
EXEC = StreamInit(
    request_id="e", path="/api/v1/namespaces/n/pods/p/exec", query="command=cat", is_upgrade=True
)


class Sent:
    """What the server sent the gateway, decoded."""

    def __init__(self, decode: Callable[[bytes], Any] = classify_gateway_frame) -> None:
        self.frames: list[Any] = []
        self._decode = decode

    async def __call__(self, data: bytes | bytearray) -> None:
        self.frames.append(self._decode(bytes(data)))


async def test_a_duplicate_request_id_is_refused_and_the_first_stays_cancellable() -> None:
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4, max_streams=2)  # type: ignore[arg-type]
    upstream.gate.set()
    server.dispatch(encode(WATCH))
    server.dispatch(encode(TunnelRequest(request_id="x", path="/api")))
    server.dispatch(encode(StreamInit(request_id="x", path="/api/v1/pods", is_upgrade=False)))
    await until(lambda: len(sent.frames) >= 3)
    refusals = [f for f in sent.frames if isinstance(f, TunnelResponse) and f.status_code == 409]
    assert len(refusals) == 2
    assert refusals[0].error is not None
    assert "requestID 'x' is already in flight" in refusals[0].error.message
    assert server.open_streams == 1 and server.requests_in_flight == 0

    server.dispatch(encode(StreamChunk(request_id="x", is_close=True)))  # the gateway's cancel
    await until(lambda: server.open_streams == 0)
    await server.close()
    left = [t for t in asyncio.all_tasks() if "FrameServer" in repr(t)]
    assert left == []


REQUEST = {"requestID": "r1", "target": "k8s", "method": "GET", "path": "/api"}


@pytest.mark.parametrize(
    "frame",
    [
        {**REQUEST, "headers": {"Accept": None}},  # Go's decoder takes a null as no values
        {**REQUEST, "method": 7},
        {**REQUEST, "body": "not base64!"},
        {"requestID": "r1", "path": "/api/v1/pods", "isUpgrade": "yes"},  # a stream init
    ],
    ids=["null-header", "method-not-a-string", "bad-base64", "stream-init"],
)
async def test_a_request_frame_that_does_not_decode_is_answered_not_dropped(
    frame: dict[str, Any],
) -> None:
    """Errors come back as responses, never as silence (the spec: bad request 500): a frame
    whose requestID reads is answered, so its caller is not left to the gateway's timeout;
    the next request is served as ever."""
    upstream, sent = Upstream(), Sent()
    upstream.gate.set()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]
    server.dispatch(json.dumps(frame))
    await until(lambda: len(sent.frames) >= 1)
    answer = sent.frames[0]
    assert isinstance(answer, TunnelResponse) and answer.request_id == "r1"
    assert answer.status_code == 500 and answer.error is not None
    assert answer.error.message.startswith("bad request: ")
    server.dispatch(json.dumps({**REQUEST, "requestID": "r2"}))
    await until(lambda: any(getattr(f, "request_id", "") == "r2" for f in sent.frames))
    await server.close()


async def test_a_frame_nested_too_deeply_is_dropped_and_the_next_is_served() -> None:
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]
    upstream.gate.set()
    deep = 100_000
    server.dispatch('{"requestID":"a","x":' + "[" * deep + "]" * deep + "}")
    meta = b"\x81\xa1x" + b"\x91" * deep + b"\xc0"  # {"x": [[[...nil]]]}
    server.dispatch(HEADER.pack(1, 0, 1, len(meta)) + b"r" + meta, binary=True)
    server.dispatch(encode(TunnelRequest(request_id="ok", path="/api")))
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].request_id == "ok" and sent.frames[0].status_code == 200
    await server.close()


async def test_a_flood_of_malformed_frames_writes_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FrameServer(Upstream(), Sent(), 5, 4)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="workflowplane.agent.tunnel"):
        for _ in range(1000):
            server.dispatch(b"", binary=True)
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1
    assert "shorter than a v3 header" in lines[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workflowplane.agent.tunnel"):
        for kind in range(5, 256):  # a different problem each time: "unknown frame kind N"
            server.dispatch(HEADER.pack(kind, 0, 1, 0) + b"r", binary=True)
    assert len(caplog.records) == 32  # the kinds logged apart, then one line for the rest
    await server.close()


class _StuckSocket:
    """An exec WebSocket whose API server takes no stdin and sends nothing."""

    protocol = "v5.channel.k8s.io"

    async def send_bytes(self, _: bytes) -> None:
        await asyncio.Event().wait()

    def __aiter__(self) -> _StuckSocket:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()


class _ExecUpstream:
    @contextlib.asynccontextmanager
    async def websocket(self, *_: Any) -> AsyncIterator[_StuckSocket]:
        yield _StuckSocket()


@pytest.mark.parametrize(
    ("pieces", "size"),
    [(100, 16 * 1024), (20_000, 1)],
    ids=["1.6 MB in 16 kB pieces", "40 kB in 2-byte pieces"],
)
async def test_exec_stdin_the_api_server_does_not_take_is_bounded(
    monkeypatch: pytest.MonkeyPatch, pieces: int, size: int
) -> None:
    """Tiny pieces are counted at what they hold (2-byte pieces were counted at 2 bytes
    each: 4 MB counted held 90 MB)."""
    monkeypatch.setattr(agent_exec, "MAX_STDIN_BYTES", 64 * 1024, raising=False)
    sent = Sent()
    sessions = ExecSessions(_ExecUpstream(), sent)  # type: ignore[arg-type]
    task = asyncio.create_task(sessions.run(EXEC))
    await until(lambda: len(sent.frames) == 1)  # started
    data = b"\x00" + b"y" * size  # stdin the command never reads
    tracemalloc.start()
    try:
        for _ in range(pieces):
            sessions.feed(StreamChunk(request_id="e", data=data))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 256 * 1024
    await until(task.done)
    last = sent.frames[-1]
    assert isinstance(last, StreamChunk) and last.is_close is True
    assert last.data is not None and b"not reading its input" in last.data
    assert sessions._stdin == {}


async def test_requests_past_the_queue_are_refused_at_once_and_the_rest_are_served() -> None:
    """A gateway sending faster than the plane answers: each waiting request held its task
    and body until served, without bound."""
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 2)  # type: ignore[arg-type]  # 2 slots, 32 waiting
    for n in range(40):
        server.dispatch(encode(TunnelRequest(request_id=f"r{n}", path="/api")))
    await until(lambda: len(sent.frames) == 8)
    refused = {f.request_id for f in sent.frames if f.status_code == 429}
    assert refused == {f"r{n}" for n in range(32, 40)}
    assert "holds at most 32 requests" in sent.frames[0].error.message
    assert server.requests_in_flight == 32

    upstream.gate.set()
    await until(lambda: len(sent.frames) == 40)
    assert sorted(f.request_id for f in sent.frames if f.status_code == 200) == sorted(
        f"r{n}" for n in range(32)
    )
    server.dispatch(encode(TunnelRequest(request_id="after", path="/api")))
    await until(lambda: len(sent.frames) == 41)
    assert sent.frames[-1].status_code == 200  # the queue emptied as they were served
    await server.close()


async def test_the_queue_holds_at_most_the_frame_limit_in_bodies() -> None:
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 1, max_frame=100_000)  # type: ignore[arg-type]
    body = b"x" * 40_000
    for n in range(4):
        server.dispatch(
            encode(TunnelRequest(request_id=f"r{n}", method="POST", path="/a", body=body))
        )
    await until(lambda: len(sent.frames) == 2)
    assert {f.request_id for f in sent.frames} == {"r2", "r3"}
    assert all(f.status_code == 429 for f in sent.frames)
    alone = FrameServer(upstream, sent, 5, 1, max_frame=100_000)  # type: ignore[arg-type]
    alone.dispatch(encode(TunnelRequest(request_id="big", method="POST", path="/a", body=body * 3)))
    upstream.gate.set()
    await until(lambda: any(f.request_id == "big" for f in sent.frames))
    assert [f.status_code for f in sent.frames if f.request_id == "big"] == [200]
    await server.close()
    await alone.close()


class NeverRead:
    """A gateway that sends and never reads: every send waits for good."""

    def __init__(self) -> None:
        self.waiting = 0

    async def __call__(self, _: bytes | bytearray) -> None:
        self.waiting += 1
        await asyncio.Event().wait()


@pytest.mark.parametrize("kind", ["duplicate", "over-queue", "over-cap"])
async def test_refusals_the_gateway_never_reads_hold_neither_frames_nor_tasks_without_bound(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refusal was a task holding its frame, body included, until its answer was sent:
    5,000 duplicate requestIDs held 94 MB, and an end-to-end flood 263 MB and growing."""
    send = NeverRead()
    server = FrameServer(Upstream(), send, 5, 1, max_streams=1)  # type: ignore[arg-type]
    first = WATCH if kind == "over-cap" else TunnelRequest(request_id="x", path="/api")
    server.dispatch(encode(first))
    if kind == "over-queue":  # the queue full: 16 waiting for the one slot
        for n in range(16):
            server.dispatch(encode(TunnelRequest(request_id=f"q{n}", path="/api")))
    body = b"b" * 16 * 1024
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="workflowplane.agent.tunnel"):
            for n in range(2000):
                rid = "x" if kind == "duplicate" else f"r{n}"
                if kind == "over-cap":
                    frame: Any = StreamInit(request_id=rid, path="/api/v1/pods", query="watch=1")
                else:
                    frame = TunnelRequest(request_id=rid, method="POST", path="/api", body=body)
                server.dispatch(encode(frame))
            await asyncio.sleep(0)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 * 1024 * 1024, f"{held} bytes held for 2,000 refused requests"
    assert server._refusal_bytes <= REFUSALS_QUEUED_BYTES
    assert len(caplog.records) <= 3  # the refusals, then the drops: a line each kind
    await server.close()


async def test_every_refusal_of_a_burst_is_answered_when_the_gateway_reads() -> None:
    """A bound on refusals not yet sent counted the ones a burst had only just made (one
    read of the socket dispatches many frames): 80 of 400 went unanswered, their callers
    left to the gateway's timeout."""
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]  # 64 may wait
    for n in range(400):
        server.dispatch(encode(TunnelRequest(request_id=f"r{n}", path="/api")))
    await until(lambda: len(sent.frames) == 400 - 64)
    assert {f.status_code for f in sent.frames} == {429}
    await server.close()


async def test_a_request_over_the_metadata_bound_is_refused_not_dropped() -> None:
    """Not decoded, it was dropped as malformed: its caller waited for the gateway's timeout."""
    sent = Sent()
    server = FrameServer(Upstream(), sent, 5, 4)  # type: ignore[arg-type]
    headers = {f"X-{n}": ["v"] for n in range(100_000)}
    server.dispatch(json.dumps({"requestID": "big", "path": "/api", "headers": headers}))
    await until(lambda: len(sent.frames) == 1)
    answer = sent.frames[0]
    assert answer.request_id == "big" and answer.status_code == 400
    assert "all but the body" in answer.error.message
    await server.close()


async def test_the_queue_counts_a_requests_query_and_headers_too() -> None:
    """It counted only the body and path: 30 requests of 900 kB queries or headers were
    taken as 8 kB within a 1 MiB limit."""
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 1, max_frame=1 << 20)  # type: ignore[arg-type]
    large = "q" * 400_000
    frames = [
        TunnelRequest(request_id="a", path="/api"),  # in the slot
        TunnelRequest(request_id="b", path="/api", query=f"labelSelector={large}"),
        TunnelRequest(request_id="c", path="/api", headers={"X-Big": [large]}),
        TunnelRequest(request_id="d", path="/api", query=f"labelSelector={large}"),
    ]
    for frame in frames:
        server.dispatch(encode(frame))
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].request_id == "d" and sent.frames[0].status_code == 429
    await server.close()


async def test_the_queue_counts_a_requests_target_method_and_gateway_id_too() -> None:
    """A gateway's strings of its own choosing were held uncounted while waiting: 68
    requests counted as 15.6 kB held 56 MiB."""
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 1, max_frame=1 << 20)  # type: ignore[arg-type]
    large = "t" * 400_000
    frames = [
        TunnelRequest(request_id="a", path="/api"),  # in the slot
        TunnelRequest(request_id="b", path="/api", target=large),
        TunnelRequest(request_id="c", path="/api", method=large),
        TunnelRequest(request_id="d", path="/api", gateway_request_id=large),
    ]
    for frame in frames:
        server.dispatch(encode(frame))
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].request_id == "d" and sent.frames[0].status_code == 429
    await server.close()


@pytest.mark.parametrize(
    ("frame", "status", "says"),
    [
        (StreamInit(request_id="s", method="CONNECT", path="/api/v1/pods"), 500, "CONNECT"),
        (StreamInit(request_id="s", method="TRACE", path="/api/v1/pods"), 500, "TRACE"),
        (StreamInit(request_id="s", path="/api/v1/../../v3/tokens", query="watch=1"), 400, "dot"),
        (TunnelRequest(request_id="s", path="/../../../v3/tokens"), 400, "dot segment"),
        (TunnelRequest(request_id="s", path="/api/%2e%2e/%2E%2E/v3/tokens"), 400, "dot segment"),
        (TunnelRequest(request_id="s", path="/api/v1/namespaces/a%2f..%2fb"), 400, "dot segment"),
        (TunnelRequest(request_id="s", path="/api/v1/namespaces/./pods"), 400, "dot segment"),
    ],
    ids=["stream-connect", "stream-trace", "stream-dots", "dots", "encoded", "slash", "dot"],
)
async def test_what_may_not_go_upstream_is_refused_before_it_does(
    frame: Any, status: int, says: str
) -> None:
    """A stream skipped the method check (CONNECT and TRACE reached the API server), and dot
    segments went out as sent: a proxy in front of the API server that resolves them would
    route the request, with the agent's token, outside the API server's prefix."""
    upstream, sent = Recording(), Sent()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]
    server.dispatch(encode(frame))
    await until(lambda: len(sent.frames) >= 1)
    answer = sent.frames[0]
    assert isinstance(answer, TunnelResponse) and answer.status_code == status
    assert answer.error is not None and says in answer.error.message
    assert upstream.paths == []
    await server.close()


async def test_names_with_dots_inside_them_still_go_upstream() -> None:
    upstream, sent = Recording(), Sent()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]
    path = "/apis/openchoreo.dev/v1alpha1/namespaces/a.b/workflowplanes/..x"
    server.dispatch(encode(TunnelRequest(request_id="ok", path=path)))
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].status_code == 200 and upstream.paths == [path]
    await server.close()


class Recording(Upstream):
    """The API server, answering at once, and the paths it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.paths: list[str] = []

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        self.paths.append(args[1])
        return await super().request(*args, **kwargs)

    async def stream(self, *args: Any) -> Any:
        self.paths.append(args[1])
        async for part in super().stream(*args):
            yield part


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/n/pods/p%2Fportforward?/exec",
        "/api/v1/namespaces/n/pods/p%2Fportforward#/exec",
        "/api/v1/namespaces/kube-system%2Fservices%2Fx%3A80%2Fproxy%2F?/pods/p/exec",
        "/api/v1/namespaces/../pods/../exec",
        "/api/v1/namespaces/n/pods/p/exec\n",
        "/api/v1/namespaces/N/pods/p/exec",
    ],
)
async def test_an_upgrade_goes_upstream_for_a_pods_exec_or_attach_only(path: str) -> None:
    """``[^/]+`` let a segment carry ``%2F``, ``?``, ``#`` or ``..``: the API server would
    have opened a port-forward or a service proxy with the agent's credentials."""
    upstream, sent = _CountingExecUpstream(), Sent()
    sessions = ExecSessions(upstream, sent)  # type: ignore[arg-type]
    async with asyncio.timeout(5):  # refused at once (else it would hold the stuck socket)
        await sessions.run(StreamInit(request_id="e", path=path, is_upgrade=True))
    assert upstream.opened == []
    closing = sent.frames[-1]
    assert isinstance(closing, StreamChunk) and closing.is_close is True
    assert closing.data is not None and b"exec and attach only" in closing.data


async def test_a_pods_exec_with_a_dotted_name_goes_upstream() -> None:
    upstream, sent = _CountingExecUpstream(), Sent()
    sessions = ExecSessions(upstream, sent)  # type: ignore[arg-type]
    path = "/api/v1/namespaces/team-a/pods/build.step-1/exec"
    task = asyncio.create_task(sessions.run(StreamInit(request_id="e", path=path, is_upgrade=True)))
    await until(lambda: upstream.opened == [path])
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _CountingExecUpstream(_ExecUpstream):
    def __init__(self) -> None:
        self.opened: list[str] = []

    @contextlib.asynccontextmanager
    async def websocket(self, path: str, *_: Any) -> AsyncIterator[_StuckSocket]:
        self.opened.append(path)
        yield _StuckSocket()


@pytest.mark.parametrize(
    "payload",
    [b'{"width":1e999,"height":1}', b"[" * 100_000, b'{"width":1,"height":1}' + b" " * 300],
)
def test_a_resize_that_is_no_size_is_dropped_not_raised(payload: bytes) -> None:
    """``1e999`` (OverflowError) or a deep nesting (RecursionError) killed the session's
    stdin writer, and the session's end raised instead of telling the gateway."""
    assert tunnel_to_k8s(bytes([3]) + payload, v5=True) is None
    assert k8s_to_tunnel(bytes([4]) + payload.replace(b"width", b"Width")) is None


async def test_a_flood_of_response_frames_writes_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A response is no frame for an agent: each wrote a WARNING line of its own."""
    server = FrameServer(Upstream(), Sent(), 5, 4)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="workflowplane.agent.tunnel"):
        for n in range(1000):
            response = TunnelResponse(request_id=f"r{n}" * 50, status_code=200)
            server.dispatch(bytes(encode_binary(response)), binary=True)
    (line,) = caplog.records
    assert "dropping unexpected response frames" in line.getMessage()
    assert len(line.getMessage()) < 200
    await server.close()


async def test_a_text_message_on_a_binary_connection_is_dropped_and_the_next_served() -> None:
    """A v3 answer cannot carry a requestID over 256 bytes: a JSON request with one, refused
    at once (metadata too large, or a duplicate), raised out of ``dispatch`` and ended the
    agent's every tunnel."""
    upstream, sent = Upstream(), Sent(decode_binary)
    server = FrameServer(upstream, sent, 5, 4, encoder=encode_binary)  # type: ignore[arg-type]
    upstream.gate.set()
    rid = "r" * 300
    server.dispatch(json.dumps({"requestID": rid, "headers": {"x": ["a" * (1 << 20)]}}))
    server.dispatch(encode(TunnelRequest(request_id=rid, path="/api")))
    server.dispatch(encode(TunnelRequest(request_id="text", path="/api")))
    server.dispatch(encode_binary(TunnelRequest(request_id="ok", path="/api")), binary=True)
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].request_id == "ok" and upstream.asked == 1
    await server.close()


@pytest.mark.parametrize("rid", ["r" * 257, "é" * 129])
async def test_a_request_id_a_v3_frame_cannot_hold_is_dropped_on_v3_and_served_on_json(
    rid: str,
) -> None:
    """OpenChoreo's gateway names an exec by its caller's X-Request-ID, of any length: a JSON
    connection echoes it; v3's encoder cannot, so there it is dropped (it raised before)."""
    upstream, sent = Upstream(), Sent(decode_binary)
    server = FrameServer(upstream, sent, 5, 4, encoder=encode_binary)  # type: ignore[arg-type]
    upstream.gate.set()
    server.dispatch(encode_binary(TunnelRequest(request_id="r" * 256, path="/api")), binary=True)
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].request_id == "r" * 256 and upstream.asked == 1
    await server.close()
    upstream, sent = Upstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]
    upstream.gate.set()
    server.dispatch(encode(TunnelRequest(request_id=rid, path="/api")))
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].request_id == rid and sent.frames[0].status_code == 200
    await server.close()


async def test_an_unforeseen_failure_of_a_connection_redials_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reconnect loop caught network errors only: anything else ended the tunnel, and
    with it the agent's fleet of tunnels to every replica."""

    def broken(self: FrameServer, raw: bytes | str, *, binary: bool = False) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(FrameServer, "dispatch", broken)

    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_str("{}")
        await ws.receive()

    gateway = Gateway(script)
    async with serving(gateway):
        running = asyncio.create_task(plain_tunnel(gateway.url).run())
        await until(lambda: len(gateway.upgrades) >= 2)
        assert not running.done()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/agent-ns/secrets/cluster-agent-tls",
        "/api/v1/namespaces/agent-ns/secrets",
        "/api/v1/namespaces/agent-ns/secrets/cluster%2Dagent%2Dtls",
        "//api/v1//namespaces/agent-ns/secrets/cluster-agent-tls",
        "/api/v1/namespaces/agent%2Dns/secrets/x",
        "/api/v1/namespaces/agent-ns/%73ecrets/x",
        "/api/v1/watch/namespaces/agent-ns/secrets",
        "/api/v1/namespaces/agent-ns/configmaps/x",  # the whole namespace is the agent's
        "/api/v1/namespaces/agent-ns/pods",  # a pod there could mount the Secret
        "/api/v1/namespaces/agent-ns",
        "/apis/argoproj.io/v1alpha1/namespaces/agent-ns/workflows",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/agent%2Dns/rolebindings",
        "/api/v1/secrets",  # every namespace's, the agent's included
        "/api/v1/watch/secrets",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "POST", "DELETE"])
async def test_the_agents_own_secrets_are_not_reachable_through_the_tunnel(
    path: str, method: str
) -> None:
    """Its CA's key lives there, and the agent may read and replace that Secret: any caller
    of the gateway could take the plane owner's CA, or swap it and cut the plane off."""
    upstream, sent = Recording(), Sent()
    server = FrameServer(upstream, sent, 5, 4, private_namespace="agent-ns")  # type: ignore[arg-type]
    server.dispatch(encode(TunnelRequest(request_id="s", method=method, path=path)))
    server.dispatch(encode(StreamInit(request_id="w", path=path, query="watch=true")))
    await until(lambda: len(sent.frames) >= 2)
    answers = [f for f in sent.frames if isinstance(f, TunnelResponse)]
    assert {a.status_code for a in answers} == {403}
    assert all("are not reachable through the tunnel" in a.error.message for a in answers)
    assert upstream.paths == []
    await server.close()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/other/secrets/x",  # another namespace: the API server's RBAC decides
        "/api/v1/namespaces/agent-ns-2/secrets/x",
        "/api/v1/namespaces/workflows-agent-ns/pods",
        "/apis/external-secrets.io/v1/clustersecretstores",
        "/api/v1/namespaces",
    ],
)
async def test_other_secrets_and_the_agents_other_objects_still_go_upstream(path: str) -> None:
    upstream, sent = Recording(), Sent()
    server = FrameServer(upstream, sent, 5, 4, private_namespace="agent-ns")  # type: ignore[arg-type]
    server.dispatch(encode(TunnelRequest(request_id="ok", path=path)))
    await until(lambda: len(sent.frames) == 1)
    assert sent.frames[0].status_code == 200 and upstream.paths == [path]
    await server.close()


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/api/v1/pods?watch=true", "/api/v1/pods%3Fwatch=true"),
        ("/api/v1/namespaces/x/pods/..?y=1", "/api/v1/namespaces/x/pods/..%3Fy=1"),
        (
            "/api/v1/namespaces/x/services/s/proxy/a#b",
            "/api/v1/namespaces/x/services/s/proxy/a%23b",
        ),
    ],
)
def test_a_question_mark_or_hash_in_the_path_stays_in_the_path(path: str, target: str) -> None:
    """Written as it came, ``?`` began the query early (a watch past the stream cap, ``..``
    past the dot-segment check); OpenChoreo's gateway sends the decoded path, so a caller's
    ``%3F`` arrives as ``?``: it is the path's."""
    assert upstream_target(path, "") == target
    assert upstream_target(path, "limit=1") == f"{target}?limit=1"


@pytest.mark.parametrize(
    "hostile", [b"[" * 100_000, b'{"status": "Failure", "x": "' + b"y" * 70_000 + b'"}']
)
def test_an_error_channel_message_no_parser_should_read_is_passed_on_as_it_is(
    hostile: bytes,
) -> None:
    """Nested 100,000 deep it raised RecursionError: the exec's task died and the gateway
    was never told the exec ended."""
    assert agent_exec._failure(hostile) == hostile


class _TakingSocket(_StuckSocket):
    """An exec WebSocket whose API server takes stdin (kept) and sends nothing."""

    def __init__(self) -> None:
        self.stdin: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.stdin.append(data)


class _TakingUpstream:
    def __init__(self) -> None:
        self.socket = _TakingSocket()

    @contextlib.asynccontextmanager
    async def websocket(self, *_: Any) -> AsyncIterator[_TakingSocket]:
        yield self.socket


async def test_stdin_in_the_same_read_as_the_exec_init_reaches_the_api_server() -> None:
    """The session took stdin only once its task ran: what came in the init's read was
    dropped (a gateway that does not wait for the agent's "started" loses its first line)."""
    upstream, sent = _TakingUpstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4)  # type: ignore[arg-type]
    server.dispatch(encode(EXEC))
    server.dispatch(encode(StreamChunk(request_id="e", data=b"\x00hello\n")))
    await until(lambda: len(upstream.socket.stdin) == 1)
    assert upstream.socket.stdin == [tunnel_to_k8s(b"\x00hello\n", v5=True)]
    await server.close()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/agent-ns/pods/cluster-agent-0/exec",
        "/api/v1/namespaces/agent-ns/pods/cluster-agent-0/attach",
    ],
)
async def test_no_exec_or_attach_reaches_the_agents_own_namespace(path: str) -> None:
    """Its pod holds the service account token that reads its CA's key: a command run there
    would take what the namespace's requests are refused for."""
    upstream, sent = _CountingExecUpstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4, private_namespace="agent-ns")  # type: ignore[arg-type]
    query = "command=cat&command=/var/run/secrets/kubernetes.io/serviceaccount/token"
    server.dispatch(encode(StreamInit(request_id="e", path=path, query=query, is_upgrade=True)))
    await until(lambda: any(isinstance(f, StreamChunk) and f.is_close for f in sent.frames))
    closing = sent.frames[-1]
    assert closing.data is not None and b"is not reachable through the tunnel" in closing.data
    assert upstream.opened == []
    await server.close()


async def test_an_exec_elsewhere_still_goes_upstream_from_an_agent_with_a_namespace() -> None:
    upstream, sent = _CountingExecUpstream(), Sent()
    server = FrameServer(upstream, sent, 5, 4, private_namespace="agent-ns")  # type: ignore[arg-type]
    path = "/api/v1/namespaces/workflows-agent-ns/pods/step/exec"
    server.dispatch(encode(StreamInit(request_id="e", path=path, is_upgrade=True)))
    await until(lambda: upstream.opened == [path])
    await server.close()
