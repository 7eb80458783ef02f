"""The lean proxy path's router: it takes only plain proxied requests a local agent may serve,
and reads each target exactly as aiohttp's router does; everything else is aiohttp's."""

from __future__ import annotations

import asyncio
import tracemalloc
from functools import partial
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tests.unit.gateway.stand_ins import LEAF, AgentSocket
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.drain import InFlight
from workflowplane.gateway.fast_proxy import READ_CHARS_KEPT, READS_KEPT, FastProxy
from workflowplane.gateway.kube_proxy import PROXY_ROUTE, KubeProxy, Target, raw_query
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.kits.http1_server import Request
from workflowplane.protocol import TunnelError, TunnelResponse

PLAIN = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"


class Connections:
    """Authorized for the CRs named; nothing else of the manager is used by the router."""

    def __init__(self, *keys: str) -> None:
        self.keys = set(keys)

    def serves(self, plane_type: str, plane_id: str, key: str) -> bool:
        return key in self.keys


def fast(*keys: str, draining: bool = False) -> FastProxy:
    metrics = GatewayMetrics()
    connections: Any = Connections(*keys)
    in_flight = InFlight()
    in_flight.draining = draining
    proxy = KubeProxy(connections, GatewayConfig(), metrics)
    return FastProxy(proxy, connections, in_flight, AnswerLog(metrics))


def test_a_plain_proxied_request_for_an_authorized_cr_is_taken() -> None:
    assert fast("team-a/build").route("GET", PLAIN, [("Accept", "application/json")])


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/api/v1/planes/status", []),  # the control API
        ("GET", "/api/exec/workflowplane/p1/team-a/build", []),
        ("TRACE", PLAIN, []),  # aiohttp's 405
        ("GET", PLAIN + "?watch=true", []),  # a stream
        ("GET", PLAIN + "/p/log?follow=1", []),  # a pod's log followed
        ("GET", PLAIN + "?%77atch=true", []),  # a stream, percent-encoded
        ("GET", PLAIN.replace("/pods", "/p%6Fds"), []),  # aiohttp decodes the path
        ("GET", PLAIN + "/../secrets", []),  # aiohttp's 400
        ("GET", PLAIN + "?x=/../..", []),
        ("GET", PLAIN + "#frag", []),
        ("GET", PLAIN + "?name=\u00e9", []),
        ("GET", PLAIN, [("Upgrade", "SPDY/3.1"), ("Connection", "Upgrade")]),  # exec, attach
        ("POST", PLAIN, [("Expect", "100-continue")]),
        ("POST", PLAIN, [("Content-Encoding", "gzip")]),  # aiohttp decompresses it
        ("GET", PLAIN.replace("team-a", "team-b"), []),  # not authorized: 403, or a peer's
        ("GET", PLAIN.replace("/x/pods", "/kube-system/secrets"), []),  # blocked: aiohttp's 403
    ],
    ids=[
        "control-api",
        "exec-route",
        "method",
        "watch",
        "follow",
        "encoded-watch",
        "encoded-path",
        "dot-dot",
        "dot-dot-query",
        "fragment",
        "non-ascii",
        "upgrade",
        "expect",
        "content-encoding",
        "unauthorized",
        "blocked",
    ],
)
def test_anything_else_is_left_to_aiohttp(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    assert fast("team-a/build").route(method, target, headers) is None


def test_a_draining_replica_leaves_every_request_to_aiohttp() -> None:
    """Whose drain answers 503 with X-Workflowplane-Unsent, so the caller retries elsewhere."""
    assert fast("team-a/build", draining=True).route("GET", PLAIN, []) is None


SENT_QUERIES = [
    "",
    "limit=500",
    "labelSelector=app%3Dweb%2Ctier%21%3Ddb",
    "labelSelector=app+in+%28a%2Cb%29",  # decoded: a space in the request line
    "fieldSelector=metadata.name%3Dx&limit=1",
    "a=b+c",
    "x=%2B%20%25&y=%26",  # decoded: "+" a space, "%" a bad escape, "&" a new parameter
    "labelSelector=a%23b",  # decoded: "#" would end the query
    "continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MX0%3D",
]


@pytest.mark.parametrize("query", SENT_QUERIES)
def test_the_lean_path_sends_the_query_as_the_caller_sent_it(query: str) -> None:
    """As OpenChoreo's gateway does (``r.URL.RawQuery``): the agent appends it to its request
    as it is, so a decoded ``%26``, ``%23``, ``+`` or ``%25`` would change or break it."""
    taken = fast("team-a/build").route("GET", f"{PLAIN}?{query}" if query else PLAIN, [])
    assert isinstance(taken, partial)
    assert taken.args[2] == query


@pytest.mark.parametrize("query", SENT_QUERIES)
async def test_aiohttps_path_sends_the_query_as_the_caller_sent_it(query: str) -> None:
    metrics = GatewayMetrics()
    connections: Any = Connections("team-a/build")
    proxy = KubeProxy(connections, GatewayConfig(), metrics)
    sent: list[str] = []

    def plain_request(*args: Any) -> web.Response:
        sent.append(args[3])
        return web.Response(status=599)

    proxy.plain_request = plain_request  # type: ignore[method-assign]
    app = web.Application()
    app.router.add_route("*", PROXY_ROUTE, proxy.handle)
    request = make_mocked_request("GET", f"{PLAIN}?{query}" if query else PLAIN, app=app)
    match = await app.router.resolve(request)
    request._match_info = match  # as aiohttp's handler sees it
    assert (await proxy.handle(request)).status == 599
    assert sent == [query]


@pytest.mark.parametrize(
    "target",
    [
        PLAIN,
        "/api/proxy/workflowplane/p1/_cluster/shared/k8s/apis/argoproj.io/v1alpha1/workflows",
        "/api/proxy/workflowplane/p1/team-a/build/k8s/",
        "/api/proxy/workflowplane/p1/team-a/build/k8s/version?timeout=5s",
    ],
)
async def test_the_target_is_read_as_aiohttps_router_reads_it(target: str) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_route("*", PROXY_ROUTE, answer)
    request = make_mocked_request("GET", target, app=app)
    seen = dict(await app.router.resolve(request))

    key = Target.of(seen).key
    taken = fast(key).route("GET", target, [])
    assert isinstance(taken, partial)
    where, what, query = taken.args
    assert where == Target.of(seen)
    assert what.path == "/" + seen["path"]
    assert query == raw_query(request)


class Answers:
    """A Responder's whole answers, as written."""

    def __init__(self) -> None:
        self.written: list[tuple[int, list[tuple[str, str]], bytes]] = []

    def whole(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.written.append((status, headers, body))


async def test_a_request_whose_body_was_still_arriving_when_the_drain_began_gets_a_503() -> None:
    """It was taken before the drain, counted in flight only once whole: it must not reach
    an agent the drain is about to close, and its caller may retry it elsewhere (Unsent)."""
    proxy = fast("team-a/build")
    handler = proxy.route("POST", PLAIN, [])
    assert handler is not None
    proxy._in_flight.draining = True
    answers: Any = Answers()
    await handler(Request("POST", PLAIN, [], b"{}"), answers)
    ((status, headers, _),) = answers.written
    assert status == 503
    assert ("X-Workflowplane-Unsent", "1") in headers


def test_the_targets_remembered_are_bounded() -> None:
    """Callers choose targets: remembering how each reads must not grow without end."""
    proxy = fast("team-a/build")
    for i in range(READS_KEPT + 10):
        assert proxy.route("GET", f"{PLAIN}/pod-{i}", [])
    assert len(proxy._reads) <= READS_KEPT


@pytest.mark.parametrize("taken", [True, False], ids=["proxied", "declined"])
def test_the_targets_remembered_are_bounded_in_characters_too(taken: bool) -> None:
    """A target may be as long as a request head: 4,096 of 60 kB held 234 MiB (declined)
    and 471 MiB (proxied, the query kept again in the read)."""
    proxy = fast("team-a/build")
    base = PLAIN if taken else "/api/v1/not-proxied"
    tracemalloc.start()
    try:
        for i in range(200):
            target = f"{base}?labelSelector={'a' * 60_000}{i}"
            assert bool(proxy.route("GET", target, [])) is taken
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 * READ_CHARS_KEPT, f"{held} bytes held for 200 targets of 60 kB"


class ServingConnections(Connections):
    """Authorized for the CRs named, with one real agent connection to pick."""

    def __init__(self, conn: AgentConnection, *keys: str) -> None:
        super().__init__(*keys)
        self.conn = conn

    def pick(self, *_: Any, **__: Any) -> AgentConnection:
        return self.conn


def one_agent(
    *, v2: bool = False
) -> tuple[AgentSocket, AgentConnection, FastProxy, AgentEndpoint, GatewayMetrics]:
    """The lean path in front of one v3 agent connection authorized for team-a/build."""
    metrics = GatewayMetrics()
    socket = AgentSocket()
    conn = AgentConnection(
        "workflowplane", "p1", socket, LEAF, {"team-a/build"}, v2=v2, binary=True
    )
    connections: Any = ServingConnections(conn, "team-a/build")
    proxy = FastProxy(
        KubeProxy(connections, GatewayConfig(), metrics),
        connections,
        InFlight(),
        AnswerLog(metrics),
    )
    return socket, conn, proxy, AgentEndpoint(connections, GatewayConfig(), metrics), metrics


async def asked(
    proxy: FastProxy, socket: AgentSocket, method: str
) -> tuple[asyncio.Task[None], Any, str]:
    """A ``method`` request of PLAIN taken by the lean path and sent to the agent: the
    handler's task, its answers and the frame's requestID."""
    handler = proxy.route(method, PLAIN, [])
    assert handler is not None
    answers: Any = Answers()
    task = asyncio.create_task(handler(Request(method, PLAIN, [], b""), answers))
    await socket.sent.wait()
    return task, answers, socket.frames[0].request_id


@pytest.mark.parametrize(
    ("reply", "early"),
    [
        (TunnelResponse(request_id="", status_code=200, body=b"{}"), True),
        (TunnelResponse(request_id="", status_code=99, body=b"{}"), False),  # not final: 502
        (TunnelResponse(request_id="", status_code=404, error=TunnelError(404, "gone")), False),
    ],
    ids=["whole", "invalid-status", "error"],
)
async def test_a_whole_answer_is_written_as_it_is_read_and_counted_once(
    reply: TunnelResponse, early: bool
) -> None:
    """The agent endpoint hands a whole answer to the lean path before the waiting task
    resumes: the caller has it at once, with no trip through the event loop; anything else
    is answered by the task, as before. Either way it is written and counted once."""
    socket, conn, proxy, endpoint, metrics = one_agent()
    task, answers, rid = await asked(proxy, socket, "GET")
    assert endpoint._dispatch(conn, msgspec.structs.replace(reply, request_id=rid))
    assert len(answers.written) == (1 if early else 0)  # before the task ran again
    await task
    ((status, _, _),) = answers.written
    assert status == (reply.status_code if early else 502 if reply.status_code == 99 else 404)
    counted = metrics.registry.get_sample_value(
        "workflowplane_gateway_proxy_requests_total",
        {"plane_id": "unknown", "verb": "list", "code": str(status)},
    )
    assert counted == 1 and not conn.answer_now and not conn.pending


async def test_a_header_that_is_not_utf8_gets_a_400_naming_it_not_a_500() -> None:
    """Its bytes (read as surrogates) cannot travel in a frame; the caller is told which
    header, and nothing is sent."""
    socket, conn, proxy, _, _ = one_agent()
    headers = [("Accept", "application/json"), ("X-Label", "caf\udcc3\udca9\udcff")]
    handler = proxy.route("GET", PLAIN, headers)
    assert handler is not None
    answers: Any = Answers()
    await handler(Request("GET", PLAIN, headers, b""), answers)
    ((status, _, body),) = answers.written
    assert status == 400 and b"X-Label is not UTF-8" in body
    assert socket.frames == [] and not conn.pending


async def test_a_head_requests_chunked_answer_is_not_pumped_the_agent_is_told_to_stop() -> None:
    """As on aiohttp's path: a HEAD's answer has no body, so the agent's chunks would only
    be read and thrown away while the caller waits for the agent to end them."""
    socket, conn, proxy, endpoint, _ = one_agent(v2=True)
    task, answers, rid = await asked(proxy, socket, "HEAD")
    head = TunnelResponse(request_id=rid, status_code=200, chunked=True)
    assert endpoint._dispatch(conn, head)
    async with asyncio.timeout(5):
        await task
    ((status, _, _),) = answers.written
    assert status == 200 and socket.closes(rid) == 1 and not conn.bodies
