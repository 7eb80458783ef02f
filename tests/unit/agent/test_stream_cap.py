"""Fair tunnels (issue #10, finding 3): watch/follow streams have a cap and an upstream pool of
their own. 100 open watches used to fill the agent's one 100-connection pool, and every other
request for the plane waited until it timed out; now the streams over the cap get a 429 at once
and ordinary requests still go through, against a real HTTP upstream on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.tunnel import FrameServer
from workflowplane.agent.upstream import Upstream
from workflowplane.protocol import StreamInit, TunnelRequest
from workflowplane.protocol.messages import opens_stream as is_stream

WATCH = {"target": "k8s", "method": "GET", "path": "/api/v1/pods", "query": "watch=true"}
ORDINARY = {"target": "k8s", "method": "GET", "path": "/api/v1/namespaces"}


class Plane:
    """A loopback upstream: watches send one event and stay open; ``/hold`` waits too."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0

    async def watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type":"ADDED"}\n')
        await self.release.wait()
        return response

    async def hold(self, _: web.Request) -> web.Response:
        self.held += 1
        await self.release.wait()
        return web.json_response({})

    async def plain(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            return await self.watch(request)
        return web.json_response({"kind": "NamespaceList", "items": []})


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Plane, Upstream]]:
    fake = Plane()
    app = web.Application()
    app.router.add_get("/hold", fake.hold)
    app.router.add_get("/{tail:.*}", fake.plain)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target = KubeTarget.from_server(f"http://127.0.0.1:{runner.addresses[0][1]}")
    upstream = Upstream(target, 1 << 20)  # the agent's default pools
    try:
        yield fake, upstream
    finally:
        fake.release.set()
        await upstream.close()
        await runner.cleanup()


class Wire:
    """What the agent sent, by requestID, with a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()

    async def send(self, data: bytes) -> None:
        async with self.changed:
            self.frames.append(json.loads(data))
            self.changed.notify_all()

    def of(self, rid: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["requestID"] == rid]

    async def until(self, check: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(check)

    def status(self, rid: str) -> int | None:
        heads = [f["statusCode"] for f in self.of(rid) if "statusCode" in f]
        return heads[0] if heads else None


async def _until(check: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
    """For state no frame announces (a stream the gateway closed ends without one)."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


def _server(upstream: Upstream, wire: Wire, **options: Any) -> FrameServer:
    settings: dict[str, Any] = {"timeout": 3, "max_concurrent": 64, "chunked": True, **options}
    return FrameServer(upstream, wire.send, **settings)


def _watch(rid: str) -> str:
    return json.dumps({**WATCH, "requestID": rid, "isUpgrade": False})


async def test_100_watches_leave_room_for_ordinary_requests(plane: tuple[Plane, Upstream]) -> None:
    _, upstream = plane
    wire = Wire()
    server = _server(upstream, wire)
    watches = [f"w{i}" for i in range(100)]
    for rid in watches:
        server.dispatch(_watch(rid))
    await wire.until(lambda: all(wire.status(rid) is not None for rid in watches))
    statuses = [wire.status(rid) for rid in watches]
    assert statuses.count(200) == 64 and statuses.count(429) == 36  # the default cap
    refused = next(rid for rid in watches if wire.status(rid) == 429)
    head, close = wire.of(refused)
    assert head["error"]["code"] == 429 and "at most 64" in head["error"]["message"]
    status = json.loads(base64.b64decode(head["body"]))
    assert status["reason"] == "TooManyRequests" and "--max-concurrent-streams" in status["message"]
    assert close == {"requestID": refused, "data": None, "isClose": True}

    started = time.monotonic()
    server.dispatch(json.dumps({**ORDINARY, "requestID": "plain"}))
    await wire.until(lambda: wire.status("plain") is not None)
    assert wire.status("plain") == 200 and time.monotonic() - started < 2  # not a 504 at 3 s
    await server.close()


async def test_an_over_cap_stream_is_refused_at_once_while_requests_go_through(
    plane: tuple[Plane, Upstream],
) -> None:
    _, upstream = plane
    wire = Wire()
    server = _server(upstream, wire, max_streams=2)
    for rid in ("a", "b"):
        server.dispatch(_watch(rid))
    await wire.until(lambda: wire.status("a") == 200 and wire.status("b") == 200)
    # open streams are not requests in flight (a lone answer is not held to be joined)
    assert (server.open_streams, server.requests_in_flight) == (2, 0)
    started = time.monotonic()
    server.dispatch(_watch("c"))
    server.dispatch(json.dumps({**WATCH, "requestID": "d"}))  # a watch as a plain request
    server.dispatch(json.dumps({**ORDINARY, "requestID": "e"}))
    await wire.until(lambda: all(wire.status(rid) is not None for rid in "cde"))
    assert (wire.status("c"), wire.status("d"), wire.status("e")) == (429, 429, 200)
    assert time.monotonic() - started < 1
    server.dispatch(json.dumps({"requestID": "a", "data": None, "isClose": True}))  # gateway ends a
    await _until(lambda: server.open_streams == 1)
    server.dispatch(_watch("f"))  # its place is free again
    await wire.until(lambda: wire.status("f") is not None)
    assert wire.status("f") == 200
    await server.close()


async def test_a_watch_sent_as_a_plain_request_takes_no_ordinary_slot(
    plane: tuple[Plane, Upstream],
) -> None:
    fake, upstream = plane
    wire = Wire()
    server = _server(upstream, wire, max_concurrent=1, chunked=False)
    server.dispatch(json.dumps({**WATCH, "requestID": "watch"}))  # held open by the plane
    started = time.monotonic()
    server.dispatch(json.dumps({**ORDINARY, "requestID": "plain"}))
    await wire.until(lambda: wire.status("plain") is not None)
    assert wire.status("plain") == 200 and time.monotonic() - started < 1
    assert wire.status("watch") is None  # still open
    fake.release.set()
    await server.close()


async def test_busy_ordinary_requests_do_not_hold_up_streams(
    plane: tuple[Plane, Upstream],
) -> None:
    fake, upstream = plane
    wire = Wire()
    server = _server(upstream, wire, max_concurrent=2)
    for rid in ("h1", "h2", "h3"):  # two take the slots and wait upstream, one queues
        server.dispatch(json.dumps({**ORDINARY, "path": "/hold", "requestID": rid}))
    server.dispatch(_watch("w"))
    await wire.until(lambda: wire.status("w") is not None)
    assert wire.status("w") == 200 and fake.held == 2
    fake.release.set()
    await wire.until(lambda: all(wire.status(rid) == 200 for rid in ("h1", "h2", "h3")))
    await server.close()


@pytest.mark.parametrize(
    ("frame", "streaming"),
    [
        (StreamInit(request_id="s", method="GET", path="/x", is_upgrade=False), True),
        # an exec or attach is as long-lived as a watch: it takes a stream slot too
        (StreamInit(request_id="s", method="POST", path="/x", is_upgrade=True), True),
        (TunnelRequest(request_id="r", method="GET", path="/x", query="watch=1"), True),
        (
            TunnelRequest(request_id="r", path="/api/v1/namespaces/n/pods/p/log", query="follow=1"),
            True,
        ),
        (TunnelRequest(request_id="r", method="GET", path="/x", query="follow=true&x=1"), False),
        (TunnelRequest(request_id="r", method="GET", path="/x", query="watch=false"), False),
        (TunnelRequest(request_id="r", method="GET", path="/x"), False),
    ],
)
def test_what_counts_as_a_stream(frame: StreamInit | TunnelRequest, streaming: bool) -> None:
    assert is_stream(frame) is streaming
