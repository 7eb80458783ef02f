"""How answers travel by connection kind (issue #11, docs/streaming.md), with scripted agents:
v1 (OpenChoreo's agent: one frame per answer, a stream init taken for a plain request) and
``workflowplane.tunnel.v2`` (chunked answers, watch/follow streams)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import RunningGateway, eventually, proxied, running_gateway
from tests.integration.tunnel.scripted import (
    ScriptedAgent,
    answer,
    leaf_of,
    scripted_agent,
    scripted_plane,
)
from workflowplane.gateway.kube_proxy import DEGRADED_HEADER
from workflowplane.kits.errors import TransientError
from workflowplane.protocol.gateway_client import ProxyResponse
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration
WP = "workflowplane"
REQUEST_TIMEOUT = 8.0
EVENTS = b'{"type":"ADDED","object":{"kind":"ConfigMap"}}\n'


async def _call(
    gw: RunningGateway,
    plane_id: str,
    namespace: str,
    path: str,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> ProxyResponse:
    return await proxied(gw, plane_id, namespace, path, query=query, headers=headers)


@pytest.fixture
async def gw(control_plane: ApiServer, crds: Path, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with running_gateway(
        control_plane, tmp_path, request_timeout_seconds=REQUEST_TIMEOUT
    ) as gateway:
        yield gateway


async def like_openchoreos_agent(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
    """Every frame is a plain request, answered once, whole (a stream init too)."""
    await agent.send(answer(frame["requestID"], body=EVENTS))


async def test_a_v1_agent_gets_a_bounded_watch_and_its_one_answer_is_the_callers(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(
        gw, plane_id, leaf_of(ca), tmp_path, like_openchoreos_agent, protocols=()
    ) as agent:
        (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
        assert not conn.v2
        watch = await _call(gw, plane_id, namespace, "/api/v1/configmaps", "watch=true")
        assert watch.status == 200 and watch.body == EVENTS
        assert watch.headers[DEGRADED_HEADER] == "v1-agent"
        logs = await _call(gw, plane_id, namespace, "/api/v1/namespaces/n/pods/p/log", "follow=1")
        assert logs.status == 200 and logs.headers[DEGRADED_HEADER] == "v1-agent"
        sent_watch, sent_logs = agent.received
        assert "isUpgrade" not in sent_watch and "isUpgrade" not in sent_logs  # plain requests
        assert sent_watch["query"] == f"watch=true&timeoutSeconds={REQUEST_TIMEOUT - 5:.0f}"
        assert "query" not in sent_logs  # follow dropped (omitempty): the log so far
        assert not conn.streams


async def test_a_stream_init_answered_whole_is_the_whole_answer_never_a_hang(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    """An agent that took our stream init for a plain request (as OpenChoreo's does) answers
    once, with the body: that is the caller's answer, at once."""
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, like_openchoreos_agent):
        reply = await _call(gw, plane_id, namespace, "/api/v1/configmaps", "watch=true")
        assert reply.status == 200 and reply.body == EVENTS
        assert DEGRADED_HEADER not in reply.headers


async def error_head_then_chunks(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
    """Our agent's stream for a watch the API server refuses: 403 head, body in chunks."""
    rid = frame["requestID"]
    await agent.send({"requestID": rid, "statusCode": 403})
    for part in (b'{"kind":"Status",', b'"reason":"Forbidden"}'):
        await agent.send({"requestID": rid, "data": base64.b64encode(part).decode()})
    await agent.send({"requestID": rid, "data": None, "isClose": True})


async def test_an_error_whose_body_comes_in_chunks_reaches_the_caller_whole(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, error_head_then_chunks):
        reply = await _call(gw, plane_id, namespace, "/api/v1/secrets", "watch=true")
        assert reply.status == 403 and json.loads(reply.body)["reason"] == "Forbidden"


def chunked(parts: list[bytes], *, end: dict[str, Any] | None = None) -> Any:
    """A v2 agent answering configmaps with a chunked head, ``parts``, then ``end``."""

    async def handler(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
        rid = frame["requestID"]
        if frame["path"] != "/api/v1/configmaps":
            await agent.send(answer(rid))
            return
        head = {"requestID": rid, "statusCode": 200, "chunked": True}
        await agent.send({**head, "headers": {"Content-Type": ["application/json"]}})
        for part in parts:
            await agent.send({"requestID": rid, "data": base64.b64encode(part).decode()})
        if end is not None:
            await agent.send({"requestID": rid, **end})

    return handler


async def test_a_chunked_answer_is_relayed_whole(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    parts = [bytes([65 + i]) * 300_000 for i in range(5)]
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    handler = chunked(parts, end={"data": None, "isClose": True})
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, handler):
        (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
        assert conn.v2 and not conn.binary  # an agent offering v2 alone keeps JSON frames
        reply = await _call(gw, plane_id, namespace, "/api/v1/configmaps")
        assert reply.status == 200 and reply.body == b"".join(parts)
        assert reply.headers["Content-Type"] == "application/json"
        assert not conn.bodies and not conn.streams


async def test_a_chunked_answer_that_fails_mid_way_does_not_look_complete(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    failure = {"data": base64.b64encode(b"upstream reset").decode(), "isClose": True}
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, chunked([b"x"], end=failure)):
        with pytest.raises(TransientError):
            await _call(gw, plane_id, namespace, "/api/v1/configmaps")
        assert (await _call(gw, plane_id, namespace, "/version")).status == 200


async def test_a_chunked_answer_that_stalls_is_cut_off_and_the_agent_told(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, chunked([b"x"])) as agent:
        with pytest.raises(TransientError):
            await _call(gw, plane_id, namespace, "/api/v1/configmaps")
        rid = agent.received[0]["requestID"]
        await eventually(lambda: rid in agent.closed_streams)


async def test_the_gateway_strips_the_callers_identity_whatever_the_agent_does(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    headers = {
        "Authorization": "Bearer caller",
        "Impersonate-User": "intruder",
        "Impersonate-Group": "system:masters",
        "Accept": "application/json",
    }
    async with scripted_agent(
        gw, plane_id, leaf_of(ca), tmp_path, like_openchoreos_agent, protocols=()
    ) as agent:
        await _call(gw, plane_id, namespace, "/api/v1/secrets", headers=headers)
        await _call(gw, plane_id, namespace, "/api/v1/secrets", "watch=true", headers=headers)
        assert len(agent.received) == 2
        for frame in agent.received:
            names = {name.lower() for name in frame["headers"]}
            assert "accept" in names and "authorization" not in names
            assert not any(name.startswith("impersonate-") for name in names)
