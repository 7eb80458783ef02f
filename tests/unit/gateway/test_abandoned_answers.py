"""A chunked answer whose request is cancelled (its caller left) in the pass its head arrives
leaves no body buffer behind: it is dropped and the agent told to stop, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.gateway.stand_ins import AgentSocket, OneAgent, wired
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.drain import InFlight
from workflowplane.gateway.fast_proxy import FastProxy
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.kits.http1_server import Request
from workflowplane.protocol import StreamChunk, TunnelRequest, TunnelResponse

pytestmark = pytest.mark.asyncio
PLAIN = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"


class _Answers:
    def whole(self, *_: Any) -> None: ...

    def stream(self, *_: Any) -> None: ...


def _wired() -> tuple[AgentConnection, AgentSocket, KubeProxy, AgentEndpoint]:
    gateway = wired()
    return gateway.conn, gateway.socket, gateway.proxy, gateway.endpoint


async def _cancel_as_the_head_arrives(
    task: asyncio.Future[Any], conn: AgentConnection, socket: AgentSocket, endpoint: AgentEndpoint
) -> str:
    """One pass of the loop: the chunked head is read, and the caller's request cancelled."""
    await socket.sent.wait()
    rid = socket.frames[0].request_id
    assert endpoint._dispatch(conn, TunnelResponse(request_id=rid, status_code=200, chunked=True))
    assert rid in conn.bodies
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return rid


async def test_a_cancelled_ask_drops_the_chunked_body_and_tells_the_agent_once() -> None:
    conn, socket, proxy, endpoint = _wired()
    frame = TunnelRequest(request_id="r-1", method="GET", path="/api/v1/pods")
    task = asyncio.create_task(proxy.ask(conn, frame))
    rid = await _cancel_as_the_head_arrives(task, conn, socket, endpoint)
    assert conn.bodies == {} and conn.pending == {}
    assert socket.closes(rid) == 1
    # the rest of the body is useless now (counted and throttled), never held
    assert not endpoint._dispatch(conn, StreamChunk(request_id=rid, data=b"x" * 100_000))


async def test_a_lean_request_cancelled_as_its_chunked_head_arrives_leaves_no_buffer() -> None:
    conn, socket, proxy, endpoint = _wired()
    connections: Any = OneAgent(conn)
    lean = FastProxy(proxy, connections, InFlight(), AnswerLog(GatewayMetrics()))
    handler = lean.route("GET", PLAIN, [])
    assert handler is not None
    answers: Any = _Answers()  # the lean server's responder: nothing is answered here
    task = asyncio.ensure_future(handler(Request("GET", PLAIN, [], b""), answers))
    rid = await _cancel_as_the_head_arrives(task, conn, socket, endpoint)
    assert conn.bodies == {} and conn.answer_now == {}
    assert socket.closes(rid) == 1
