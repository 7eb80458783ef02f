"""Exec and attach through the tunnel (issue #11): our gateway and agent end to end against a
stub API server that runs exec (``stub_apiserver.py``), and the gateway's side of OpenChoreo's
exec frames with a scripted agent that answers as OpenChoreo's agent does."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    RunningGateway,
    agent_config,
    eventually,
    running_gateway,
    start_agent,
)
from tests.integration.tunnel.scripted import (
    ScriptedAgent,
    answer,
    internal_context,
    leaf_of,
    scripted_agent,
    scripted_plane,
)
from tests.integration.tunnel.stub_apiserver import (
    StubApiServer,
    exit_status,
    stub_apiserver,
)
from workflowplane.protocol.exec import K8S_V4, K8S_V5
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration
WP = "workflowplane"
WAIT = 15.0
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    "Sec-WebSocket-Protocol": K8S_V5,
}


@dataclass
class ExecPlane:
    gw: RunningGateway
    stub: StubApiServer
    plane_id: str
    namespace: str
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.gw.gateway.ports['internal']}"

    def kubectl_url(self, pod: str, query: str, kind: str = "exec") -> str:
        """Where kubectl goes with the proxy as its server."""
        route = f"/api/proxy/{WP}/{self.plane_id}/{self.namespace}/wp/k8s"
        return f"{self.base}{route}/api/v1/namespaces/default/pods/{pod}/{kind}?{query}"

    def openchoreo_url(self, query: str) -> str:
        return f"{self.base}/api/exec/{WP}/{self.plane_id}/{self.namespace}/wp?{query}"


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@pytest.fixture
async def exec_plane(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    crds: Path,
    namespace: str,
    tmp_path: Path,
) -> AsyncIterator[ExecPlane]:
    """Our gateway, and our agent serving a plane whose API server is the stub."""
    async with running_gateway(control_plane, tmp_path) as gw, stub_apiserver() as stub:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        leaf = leaf_of(ca)
        config = agent_config(
            workflow_plane,
            gw,
            plane_id,
            "unused",
            kubeconfig=stub.kubeconfig(tmp_path),
            context=None,
            client_cert_file=_write(tmp_path, "agent.crt", leaf.cert_pem),
            client_key_file=_write(tmp_path, "agent.key", leaf.key_pem),
        )
        agent = await start_agent(config)
        connector = aiohttp.TCPConnector(ssl=await internal_context(gw, tmp_path))
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                yield ExecPlane(gw, stub, plane_id, namespace, session)
        finally:
            await agent.stop()


async def _next(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await ws.receive(timeout=WAIT)


async def test_kubectl_style_exec_streams_stdin_stdout_and_resizes_both_ways(
    exec_plane: ExecPlane,
) -> None:
    url = exec_plane.kubectl_url("p", "command=cat&stdin=true&stdout=true&stderr=true")
    async with exec_plane.session.ws_connect(url, protocols=(K8S_V5, K8S_V4)) as ws:
        assert ws.protocol == K8S_V5
        await ws.send_bytes(b"\x00hello")
        assert (await _next(ws)).data == b"\x01hello"
        await ws.send_bytes(b"\x04" + json.dumps({"Width": 80, "Height": 24}).encode())
        await eventually(lambda: exec_plane.stub.sizes == [{"Width": 80, "Height": 24}])
        await ws.send_bytes(b"\xff\x00")  # v5: stdin closed
        end = await _next(ws)
        assert end.data[:1] == b"\x03" and json.loads(end.data[1:])["status"] == "Success"
        assert (await _next(ws)).type == aiohttp.WSMsgType.CLOSE
    assert exec_plane.stub.stdin == b"hello"


async def test_a_non_zero_exit_reaches_the_caller_as_the_api_servers_status(
    exec_plane: ExecPlane,
) -> None:
    url = exec_plane.kubectl_url("p", "command=exit&command=3&stdout=true&stderr=true")
    async with exec_plane.session.ws_connect(url, protocols=(K8S_V4,)) as ws:
        assert ws.protocol == K8S_V4
        end = await _next(ws)
        assert end.data == b"\x03" + exit_status(3)  # kubectl reads the exit code from it


async def test_openchoreos_exec_route_carries_its_raw_stream(exec_plane: ExecPlane) -> None:
    query = "podNamespace=default&podName=p&command=echo&command=hi&tty=false"
    async with exec_plane.session.ws_connect(exec_plane.openchoreo_url(query)) as ws:
        received = [(await _next(ws)).data for _ in range(3)]
        assert received == [b"\x01", b"\x01hi\n", b"\x02to stderr\n"]  # started, out, err
        end = await _next(ws)
        assert end.type == aiohttp.WSMsgType.CLOSE and end.data == aiohttp.WSCloseCode.OK
    # What the API server was asked: OpenChoreo's buildK8sExecQuery, in Go's order.
    assert exec_plane.stub.queries == ["command=echo&command=hi&stderr=true&stdout=true"]


async def test_exec_errors_come_before_the_upgrade_as_the_api_servers_answer(
    exec_plane: ExecPlane,
) -> None:
    """A pod that is not there: the probe's 404, as kubectl gets it without the tunnel."""
    url = exec_plane.kubectl_url("nope", "command=ls&stdout=true")
    async with exec_plane.session.get(url, headers=UPGRADE) as reply:
        assert reply.status == 404
        assert (await reply.json())["message"] == 'pods "nope" not found'
    route = exec_plane.openchoreo_url("podNamespace=default&podName=nope&command=ls")
    async with exec_plane.session.get(route, headers=UPGRADE) as reply:
        assert reply.status == 404
    assert exec_plane.stub.queries == []  # nothing ran


@pytest.mark.parametrize(
    "pod",
    [
        "podNamespace=..&podName=p",
        "podNamespace=default&podName=p%2F..%2Fx",
        "podNamespace=default&podName=p%00",
    ],
)
async def test_openchoreos_route_refuses_pod_names_that_are_not_names(
    exec_plane: ExecPlane, pod: str
) -> None:
    """They become path segments of the request to the plane: a '..' or a '/' in them would
    name another path there."""
    route = exec_plane.openchoreo_url(f"{pod}&command=ls")
    async with exec_plane.session.get(route, headers=UPGRADE) as reply:
        assert reply.status == 400
        assert "must be a Kubernetes object name" in (await reply.json())["message"]
    assert exec_plane.stub.queries == []  # nothing reached the plane


async def test_a_caller_that_goes_away_ends_the_exec_upstream(exec_plane: ExecPlane) -> None:
    url = exec_plane.kubectl_url("p", "command=sleep&stdin=true&stdout=true")
    async with exec_plane.session.ws_connect(url, protocols=(K8S_V5,)) as ws:
        await ws.send_bytes(b"\x00x")
        await eventually(lambda: exec_plane.stub.stdin == b"x")
    await eventually(lambda: exec_plane.stub.sessions_ended == 1, timeout=WAIT)
    (conn,) = exec_plane.gw.gateway.connections.for_plane(WP, exec_plane.plane_id)
    await eventually(lambda: not conn.streams)


async def test_what_is_not_served_is_refused_with_the_reason(exec_plane: ExecPlane) -> None:
    spdy = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
    url = exec_plane.kubectl_url("p", "command=ls&stdout=true")
    async with exec_plane.session.post(url, headers=spdy) as reply:
        assert reply.status == 400 and "WebSocket" in (await reply.json())["message"]
    forward = exec_plane.kubectl_url("p", "ports=80", kind="portforward")
    async with exec_plane.session.get(forward, headers=UPGRADE) as reply:
        assert reply.status == 501
    v1_only = {**UPGRADE, "Sec-WebSocket-Protocol": "channel.k8s.io"}
    async with exec_plane.session.get(url, headers=v1_only) as reply:
        assert reply.status == 400 and K8S_V5 in (await reply.json())["message"]
    assert exec_plane.stub.queries == []


# ---- the gateway's side of OpenChoreo's exec frames (its agent, scripted) -------------------


async def openchoreo_exec(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
    """As OpenChoreo's agent: the probe (a plain POST) goes to the API server, which says it
    needs an upgrade; a stream init gets ``[1]``, one line of output, then ``isClose``."""
    rid = frame["requestID"]
    if not frame.get("isUpgrade"):
        status = {"kind": "Status", "message": "Upgrade request required", "code": 400}
        await agent.send(answer(rid, status=400, body=json.dumps(status).encode()))
        return
    for data, stream in ((b"\x01", 1), (b"\x01out\n", 1)):
        await agent.send(
            {"requestID": rid, "data": base64.b64encode(data).decode(), "streamId": stream}
        )
    await eventually(
        lambda: any(f.get("data") and f["requestID"] == rid for f in agent.received[1:])
    )
    await agent.send({"requestID": rid, "data": None, "isClose": True})


async def test_openchoreos_agent_gets_its_stream_init_and_stdin_as_its_gateway_sends_them(
    control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    async with running_gateway(control_plane, tmp_path) as gw:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        context = await internal_context(gw, tmp_path)
        base = f"https://127.0.0.1:{gw.gateway.ports['internal']}"
        route = f"{base}/api/exec/{WP}/{plane_id}/{namespace}/wp"
        query = "podNamespace=ns&podName=p&command=sh&stdin=true&tty=true"
        async with (
            scripted_agent(
                gw, plane_id, leaf_of(ca), tmp_path, openchoreo_exec, protocols=()
            ) as agent,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.ws_connect(f"{route}?{query}") as ws,
        ):
            assert (await _next(ws)).data == b"\x01"
            await ws.send_bytes(b"\x00in")
            assert (await _next(ws)).data == b"\x01out\n"
            assert (await _next(ws)).type == aiohttp.WSMsgType.CLOSE
        probe, init, stdin = agent.received[:3]
        assert probe["method"] == "POST" and "isUpgrade" not in probe
        assert {k: init[k] for k in ("method", "path", "isUpgrade", "upgradeProto")} == {
            "method": "POST",
            "path": "/api/v1/namespaces/ns/pods/p/exec",
            "isUpgrade": True,
            "upgradeProto": "SPDY/3.1",
        }
        assert init["query"] == "command=sh&stderr=true&stdin=true&stdout=true&tty=true"
        assert stdin == {
            "requestID": init["requestID"],
            "data": base64.b64encode(b"\x00in").decode(),
        }


async def test_attach_needs_an_agent_that_does_not_run_it_as_exec(
    control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    """OpenChoreo's agent runs every upgrade as exec (``/bin/sh`` when no command is given)."""
    async with running_gateway(control_plane, tmp_path) as gw:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        context = await internal_context(gw, tmp_path)
        base = f"https://127.0.0.1:{gw.gateway.ports['internal']}"
        url = (
            f"{base}/api/proxy/{WP}/{plane_id}/{namespace}/wp/k8s/api/v1/namespaces/n/pods/p/attach"
        )
        async with (
            scripted_agent(
                gw, plane_id, leaf_of(ca), tmp_path, openchoreo_exec, protocols=()
            ) as agent,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.get(url, headers=UPGRADE) as reply,
        ):
            assert reply.status == 501 and "attach" in (await reply.json())["message"]
            assert agent.received == []
