"""GatewayClient over several replicas: real HTTP on loopback, one small aiohttp server per
replica, each failing in one way; the client is given [failing, healthy] (its first pick)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.unit.agent.stand_ins import until
from workflowplane.kits.errors import Failure, TransientError
from workflowplane.protocol.agent_patience import RecentPlanes
from workflowplane.protocol.gateway_client import UNSENT_HEADER, GatewayClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTE = {"plane_type": "workflowplane", "plane_id": "p", "cr_namespace": "ns", "cr_name": "wp"}


@dataclass
class Replica:
    """One loopback server; ``hits`` counts the requests it received."""

    handler: Handler
    hits: list[web.Request] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Replica:
        async def count(request: web.Request) -> web.StreamResponse:
            self.hits.append(request)
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", count)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def ok(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"served": True})


async def unsent(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"message": "no agent"}, status=502, headers={UNSENT_HEADER: "1"})


async def bad_gateway(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"message": "agent went away"}, status=502)


async def lost(request: web.Request) -> web.StreamResponse:
    """Reads the whole request (it may have run), then drops the connection unanswered."""
    await request.read()
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


def refused_url() -> str:
    """A port nobody listens on: connecting is refused, nothing is written."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[Handler], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def start(handler: Handler) -> Replica:
        replica = await Replica(handler).start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


def client(urls: list[str], timeout: float = 10.0, **patience: Any) -> GatewayClient:
    return GatewayClient(urls, ssl.create_default_context(), timeout=timeout, **patience)


FAILURES: dict[str, Handler | None] = {
    "unsent": unsent,
    "refused": None,
    "502 without unsent": bad_gateway,
    "lost mid-request": lost,
}
# method x failure -> does the request go on to the healthy replica?
RETRIED = {
    ("unsent", m): True for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
} | {("refused", m): True for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")}
for _kind in ("502 without unsent", "lost mid-request"):
    RETRIED |= {(_kind, m): True for m in ("GET", "HEAD", "OPTIONS")}
    RETRIED |= {(_kind, m): False for m in ("POST", "PUT", "PATCH", "DELETE")}


@pytest.mark.parametrize(("kind", "method"), sorted(RETRIED))
async def test_retry_rules(
    servers: Callable[[Handler], Awaitable[Replica]], kind: str, method: str
) -> None:
    handler = FAILURES[kind]
    failing = await servers(handler) if handler else None
    healthy = await servers(ok)
    gateway = client([failing.url if failing else refused_url(), healthy.url])
    try:
        if RETRIED[(kind, method)]:
            answer = await gateway.proxy(method, **ROUTE, path="api/v1/pods", body=b"{}")
            assert answer.status == 200
            assert len(healthy.hits) == 1
        else:
            if kind == "lost mid-request":
                with pytest.raises(TransientError):
                    await gateway.proxy(method, **ROUTE, path="api/v1/pods", body=b"{}")
            else:
                answer = await gateway.proxy(method, **ROUTE, path="api/v1/pods", body=b"{}")
                assert answer.status == 502
            assert healthy.hits == []
        if failing is not None:
            assert len(failing.hits) == 1
    finally:
        await gateway.close()


async def test_each_replica_is_tried_once_then_the_last_answer_comes_back(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    replicas = [await servers(unsent) for _ in range(3)]
    gateway = client([r.url for r in replicas])
    try:
        answer = await gateway.proxy("POST", **ROUTE, path="api/v1/pods", body=b"{}")
        assert answer.status == 502 and answer.headers[UNSENT_HEADER] == "1"
        assert [len(r.hits) for r in replicas] == [1, 1, 1]
    finally:
        await gateway.close()


async def test_requests_are_spread_round_robin(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    replicas = [await servers(ok) for _ in range(3)]
    gateway = client([r.url for r in replicas])
    try:
        for _ in range(6):
            assert (await gateway.proxy("GET", **ROUTE, path="api/v1/pods")).status == 200
        assert [len(r.hits) for r in replicas] == [2, 2, 2]
    finally:
        await gateway.close()


async def test_a_failed_replica_is_tried_last(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    healthy = [await servers(ok) for _ in range(2)]
    gateway = client([refused_url(), *(r.url for r in healthy)])
    try:
        for _ in range(6):
            assert (await gateway.proxy("POST", **ROUTE, path="api/v1/pods")).status == 200
        assert sum(len(r.hits) for r in healthy) == 6
    finally:
        await gateway.close()


# ---- patience for a plane whose agent is between replicas -----------------------------------


def hits(replicas: list[Replica], plane: str = "p") -> int:
    """Requests the replicas received for ``plane``."""
    return sum(1 for r in replicas for h in r.hits if f"/{plane}/" in h.path)


async def reached_then_gone(
    servers: Callable[[Handler], Awaitable[Replica]], total: float = 10.0, **patience: Any
) -> tuple[GatewayClient, list[Replica]]:
    """A client that got a real answer from plane ``p`` (first of three replicas: dead); then
    the agent is gone from every live replica (each answers "no agent", Unsent)."""
    replicas = [await servers(ok) for _ in range(2)]
    gateway = client([refused_url(), *(r.url for r in replicas)], total, **patience)
    assert (await gateway.proxy("GET", **ROUTE, path="api/v1/pods")).status == 200
    for replica in replicas:
        replica.handler = unsent
    return gateway, replicas


@pytest.mark.parametrize(
    ("method", "first"),
    [("GET", unsent), ("POST", unsent), ("GET", bad_gateway)],
    ids=["GET", "POST", "GET in flight when the agent went"],
)
async def test_a_plane_reached_lately_waits_for_its_agent_to_come_back(
    servers: Callable[[Handler], Awaitable[Replica]], method: str, first: Handler
) -> None:
    """Safe for any method: no replica sent it anywhere (a GET may also run again after a
    502 without Unsent, from the replica whose agent went mid-request)."""
    gateway, replicas = await reached_then_gone(servers)
    replicas[0].handler = first
    try:
        before = hits(replicas)
        request = asyncio.create_task(
            gateway.proxy(method, **ROUTE, path="api/v1/pods", body=b"{}")
        )
        await until(lambda: hits(replicas) >= before + 2 * len(replicas))  # a second round
        assert not request.done()
        replicas[1].handler = ok  # the agent redialled, and landed on this replica
        answer = await request
        assert answer.status == 200
    finally:
        await gateway.close()


@pytest.mark.parametrize(
    ("total", "agent_wait_seconds"), [(1.0, 8.0), (35.0, 1.0)], ids=["deadline", "wait"]
)
async def test_the_wait_ends_within_the_deadline_and_the_agent_wait(
    servers: Callable[[Handler], Awaitable[Replica]], total: float, agent_wait_seconds: float
) -> None:
    """Pauses of 0.25, 0.5, then what is left of 1 s: at most four rounds, then the last
    answer, as without waiting."""
    gateway, replicas = await reached_then_gone(
        servers, total, agent_wait_seconds=agent_wait_seconds
    )
    try:
        before = hits(replicas)
        answer = await gateway.proxy("GET", **ROUTE, path="api/v1/pods")
    finally:
        await gateway.close()
    assert answer.status == 502 and answer.headers[UNSENT_HEADER] == "1"
    rounds = (hits(replicas) - before) // len(replicas)
    assert 1 < rounds <= 4


def by_plane(reached: str) -> Handler:
    """Plane ``reached`` has an agent; any other plane none."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await (ok if f"/{reached}/" in request.path else unsent)(request)

    return handler


@pytest.mark.parametrize(
    ("reached_before", "recent_planes"),
    [(False, 4096), (True, 1)],
    ids=["never reached", "forgotten over the cap"],
)
async def test_a_plane_not_reached_lately_fails_at_once(
    servers: Callable[[Handler], Awaitable[Replica]], reached_before: bool, recent_planes: int
) -> None:
    """Only a plane reached lately is waited for; here plane ``other`` was, and ``p`` never
    was, or was and then forgotten (room for one plane, and ``other`` reached since)."""
    replicas = [await servers(by_plane("other")) for _ in range(2)]
    gateway = client([r.url for r in replicas], recent_planes=recent_planes)
    try:
        if reached_before:
            gateway._recent.reached("workflowplane/p")
        other = {**ROUTE, "plane_id": "other"}
        assert (await gateway.proxy("GET", **other, path="api/v1/pods")).status == 200
        assert len(gateway._recent) == 1
        answer = await gateway.proxy("POST", **ROUTE, path="api/v1/pods", body=b"{}")
    finally:
        await gateway.close()
    assert answer.status == 502
    assert hits(replicas) == len(replicas)


async def test_a_verdict_on_the_request_is_not_waited_on(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    """A 403 Unsent (no agent may serve this CR) is an answer, not an absence."""

    async def forbidden(request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": "no"}, status=403, headers={UNSENT_HEADER: "1"})

    gateway, replicas = await reached_then_gone(servers)
    for replica in replicas:
        replica.handler = forbidden
    try:
        before = hits(replicas)
        answer = await gateway.proxy("GET", **ROUTE, path="api/v1/pods")
    finally:
        await gateway.close()
    assert answer.status == 403
    assert hits(replicas) - before == len(replicas)


async def test_a_watch_waits_for_the_agent_too(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    gateway, replicas = await reached_then_gone(servers)

    async def first_line() -> bytes:
        async for line in gateway.proxy_stream(
            "GET", **ROUTE, path="api/v1/pods", query="watch=true"
        ):
            return line
        raise AssertionError("the watch ended without a line")

    try:
        before = hits(replicas)
        watch = asyncio.create_task(first_line())
        await until(lambda: hits(replicas) >= before + 2 * len(replicas))
        replicas[0].handler = streaming([event("ADDED", "7")], then_break=False)
        assert await watch == event("ADDED", "7")
    finally:
        await gateway.close()


def test_recent_planes_expire_and_the_least_recent_go_first() -> None:
    now = [0.0]
    recent = RecentPlanes(within_seconds=60, cap=2, clock=lambda: now[0])
    recent.reached("a")
    recent.reached("b")
    recent.reached("a")  # a is now the most recent
    recent.reached("c")  # over the cap: b goes
    assert (recent.recent("a"), recent.recent("b"), recent.recent("c")) == (True, False, True)
    now[0] = 61.0
    assert not recent.recent("a")
    with pytest.raises(ValueError, match="recent_seconds"):
        RecentPlanes(within_seconds=-1)
    with pytest.raises(ValueError, match="at least 1"):
        RecentPlanes(cap=0)


# ---- watches ---------------------------------------------------------------------------------


def event(kind: str, version: str, name: str = "w") -> bytes:
    body = {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": version}}}
    return json.dumps(body).encode() + b"\n"


def streaming(lines: list[bytes], *, then_break: bool) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        if then_break:
            await response.write(b'{"type": "MODIFIED", "obj')  # half a line, then gone
            assert request.transport is not None
            request.transport.abort()
        return response

    return handler


async def test_a_broken_watch_resumes_on_another_replica_from_its_last_version(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    first = await servers(
        streaming([event("ADDED", "10"), event("BOOKMARK", "12")], then_break=True)
    )
    second = await servers(streaming([event("MODIFIED", "13")], then_break=False))
    gateway = client([first.url, second.url])
    lines: list[bytes] = []
    try:
        async for line in gateway.proxy_stream(
            "GET", **ROUTE, path="api/v1/pods", query="watch=true&resourceVersion=5"
        ):
            lines.append(line)
    finally:
        await gateway.close()
    assert lines == [event("ADDED", "10"), event("BOOKMARK", "12"), event("MODIFIED", "13")]
    assert second.hits[0].query["resourceVersion"] == "12"
    assert second.hits[0].query["watch"] == "true"


async def test_a_broken_log_stream_is_not_resumed(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    first = await servers(streaming([b"log line\n"], then_break=True))
    second = await servers(streaming([b"again\n"], then_break=False))
    gateway = client([first.url, second.url])
    lines: list[bytes] = []
    try:
        with pytest.raises(TransientError):
            async for line in gateway.proxy_stream(
                "GET", **ROUTE, path="api/v1/namespaces/n/pods/p/log", query="follow=true"
            ):
                lines.append(line)
    finally:
        await gateway.close()
    assert lines == [b"log line\n"]
    assert second.hits == []


async def test_gone_on_resume_reaches_the_caller(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    async def gone(request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": "too old", "code": 410}, status=410)

    first = await servers(streaming([event("ADDED", "10")], then_break=True))
    second = await servers(gone)
    gateway = client([first.url, second.url])
    try:
        with pytest.raises(Failure) as raised:
            async for _ in gateway.proxy_stream(
                "GET", **ROUTE, path="api/v1/pods", query="watch=true"
            ):
                pass
    finally:
        await gateway.close()
    assert raised.value.status == 410


# ---- status and events from every replica ----------------------------------------------------


def status_of(replica: str, agents: list[str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "planeType": "workflowplane",
                "planeID": "p",
                "replica": replica,
                "connected": bool(agents),
                "connectedAgents": len(agents),
                "agents": agents,
                "lastSeen": None,
            }
        )

    return handler


async def test_status_counts_an_agent_on_every_replica_once(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    replicas = [await servers(status_of(f"gw-{i}", ["agent-a"])) for i in range(3)]
    extra = await servers(status_of("gw-3", ["agent-a", "conn-gw-3-1"]))
    gateway = client([*(r.url for r in replicas), extra.url, refused_url()])
    try:
        status = await gateway.plane_status("workflowplane", "p", namespace="ns", name="wp")
    finally:
        await gateway.close()
    assert status["connectedAgents"] == 2
    assert status["agents"] == ["agent-a", "conn-gw-3-1"]
    assert status["replicas"] == ["gw-0", "gw-1", "gw-2", "gw-3"]


async def test_notify_reaches_every_replica(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    async def accepted(request: web.Request) -> web.StreamResponse:
        return web.json_response({"success": True, "authorizationsGranted": 1})

    replicas = [await servers(accepted) for _ in range(3)]
    gateway = client([r.url for r in replicas])
    try:
        answer = await gateway.notify(
            plane_type="workflowplane", plane_id="p", event="updated", namespace="ns", name="wp"
        )
    finally:
        await gateway.close()
    assert [len(r.hits) for r in replicas] == [1, 1, 1]
    assert answer["authorizationsGranted"] == 3


async def test_events_merge_every_replica(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    def pushing(plane: str) -> Handler:
        line = json.dumps({"type": "connected", "planeID": plane}).encode() + b"\n"
        return streaming([b"not json\n", line], then_break=False)

    replicas = [await servers(pushing(f"p{i}")) for i in range(2)]
    gateway = client([r.url for r in replicas])
    seen: set[str] = set()
    try:
        async for item in gateway.events():
            seen.add(str(item["planeID"]))
            if len(seen) == 2:
                break
    finally:
        await gateway.close()
    assert seen == {"p0", "p1"}


async def test_events_end_when_every_replica_stream_ended(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    gateway = client([refused_url()])
    try:
        with pytest.raises(TransientError):
            async for _ in gateway.events():
                pass
    finally:
        await gateway.close()


async def test_a_hung_replica_holds_a_status_read_only_for_the_control_timeout(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    """A replica that accepts and never answers: the plane's status comes from the others
    once the control timeout passes, not after the proxy's (35 s) timeout."""

    released = asyncio.Event()

    async def hung(request: web.Request) -> web.StreamResponse:
        await released.wait()  # until the test ends: the server's cleanup waits for it
        return web.json_response({}, status=503)

    stuck = await servers(hung)
    healthy = await servers(status_of("gw-1", ["agent-a"]))
    gateway = GatewayClient(
        [stuck.url, healthy.url], ssl.create_default_context(), timeout=35.0, control_timeout=0.3
    )
    try:
        status = await asyncio.wait_for(
            gateway.plane_status("workflowplane", "p", namespace="ns", name="wp"), 20
        )
    finally:
        released.set()
        await gateway.close()
    assert status["connectedAgents"] == 1
    assert status["replicas"] == ["gw-1"]
    assert len(stuck.hits) == 1


async def test_a_notify_waits_longer_than_a_status_read(
    servers: Callable[[Handler], Awaitable[Replica]],
) -> None:
    """A notify may read the API server before it answers: a replica that takes longer than
    a status read may, but answers within the notify's time, is waited for."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response({"success": True, "authorizationsGranted": 1})

    replica = await servers(slow)
    gateway = GatewayClient(
        [replica.url], ssl.create_default_context(), timeout=35.0, control_timeout=0.3
    )
    try:  # the notify's time: 0.3 s x NOTIFY_TIMEOUT / CONTROL_TIMEOUT = 1.2 s
        answer = await gateway.notify(
            plane_type="workflowplane", plane_id="p", event="updated", namespace="ns", name="wp"
        )
        with pytest.raises(TransientError):
            await gateway.plane_status("workflowplane", "p")
    finally:
        await gateway.close()
    assert answer["authorizationsGranted"] == 1


async def test_a_control_call_never_waits_longer_than_the_clients_own_timeout() -> None:
    with pytest.raises(ValueError, match="control_timeout"):
        GatewayClient(["http://127.0.0.1:1"], ssl.create_default_context(), control_timeout=-1)
