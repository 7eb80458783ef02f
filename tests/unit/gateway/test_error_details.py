"""An agent's error detail reaches the caller with its status and message, whatever it holds:
details JSON cannot carry are shown as their (bounded) repr, never turned into a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from aiohttp import web

from tests.unit.gateway.stand_ins import wired
from tests.unit.transports import RecordingTransport
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.drain import InFlight
from workflowplane.gateway.fast_proxy import FastProxy
from workflowplane.gateway.kube_proxy import DETAILS_SHOWN, KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.kits.http1_server import FrontServer, Limits
from workflowplane.protocol import TunnelError, TunnelResponse
from workflowplane.protocol.binary import HEADER

PLAIN = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"
EXT = msgspec.msgpack.Ext(1, b"\x00")
ARRAY_KEYS = msgspec.msgpack.decode(b"\x81\x92\x01\x02\x03")  # {[1, 2]: 3}, as a v3 agent's


def _proxy() -> KubeProxy:
    connections: Any = None  # answers are built without the connection manager
    return KubeProxy(connections, GatewayConfig(), GatewayMetrics())


def _answer(details: dict[str, Any]) -> web.Response:
    error = TunnelError(code=503, message="etcd down", details=details)
    answer = _proxy().plain_answer(TunnelResponse(request_id="r", status_code=503, error=error))
    assert isinstance(answer, web.Response)
    return answer


def _message(answer: web.Response) -> str:
    assert isinstance(answer.body, bytes)
    message = msgspec.json.decode(answer.body)["message"]
    assert isinstance(message, str)
    return message


@pytest.mark.parametrize(
    ("details", "shown"),
    [({"cause": EXT}, "'cause': <msgspec.msgpack.Ext"), ({"bad": ARRAY_KEYS}, "{(1, 2): 3}")],
    ids=["msgpack-extension", "array-keys"],
)
def test_details_json_cannot_carry_are_shown_as_their_repr(
    details: dict[str, Any], shown: str
) -> None:
    answer = _answer(details)
    assert answer.status == 503
    message = _message(answer)
    assert message.startswith("agent: etcd down (not JSON: {") and shown in message


def test_details_shown_as_their_repr_are_bounded() -> None:
    message = _message(_answer({"many": [EXT] * 100_000}))
    assert len(message) < DETAILS_SHOWN + 100 and message.endswith("characters))")


def _v3_error(rid: str) -> bytearray:
    """A v3 agent's error answer whose details hold a msgpack extension value."""
    error = {"code": 503, "message": "etcd down", "details": {"cause": EXT}}
    meta = msgspec.msgpack.encode({"statusCode": 503, "error": error})
    return bytearray(HEADER.pack(2, 0, len(rid), len(meta)) + rid.encode() + meta)


@pytest.mark.asyncio
async def test_a_callers_request_gets_the_agents_status_not_a_500() -> None:
    """Through the lean server, as the agent's frame is read."""
    conn, socket, proxy, endpoint, connections, metrics = wired()
    lean = FastProxy(proxy, connections, InFlight(), AnswerLog(metrics))
    protocol = FrontServer(lean.route, asyncio.Protocol, Limits())()
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(f"GET {PLAIN} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await socket.sent.wait()
    assert endpoint._direct(conn, _v3_error(socket.frames[0].request_id))
    for _ in range(20):
        await asyncio.sleep(0)
    written = bytes(transport.written)
    assert written.startswith(b"HTTP/1.1 503 "), written
    assert b"agent: etcd down (not JSON: " in written
