"""Kubernetes API requests through gateway and agent (spec: Internal API, Limits)."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from lightkube.resources.core_v1 import Secret

from tests.integration.harness import (
    RunningAgent,
    RunningGateway,
    agent_ca,
    apply,
    eventually,
    registered_agent,
    start_agent,
    start_gateway,
    unique,
    workflow_plane_cr,
)
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.protocol import TunnelRequest
from workflowplane.protocol.binary import encode_binary
from workflowplane.protocol.gateway_client import (
    GATEWAY_NAMESPACE,
    INTERNAL_CLIENT_SECRET,
    client_ssl_context,
)
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
WP = "workflowplane"


async def _plane(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    agents: int = 1,
) -> tuple[str, list[RunningAgent]]:
    """A CR trusting one agent CA, and ``agents`` replicas sharing that identity (HA)."""
    plane_id, first = await registered_agent(control_plane, workflow_plane, gw, namespace, "p")
    config = first.config
    await eventually(lambda: gw.gateway.planes.for_plane(plane_id))
    await eventually(lambda: gw.gateway.planes.all_cas().count(b"BEGIN") > 0)
    running = [await start_agent(first)]
    running += [await start_agent(config) for _ in range(agents - 1)]
    return plane_id, running


async def _stop(agents: list[RunningAgent]) -> None:
    for agent in agents:
        await agent.stop()


def _proxy(
    gw: RunningGateway, plane_id: str, namespace: str, method: str, path: str, **kw: Any
) -> Any:
    return gw.client.proxy(
        method,
        plane_type=WP,
        plane_id=plane_id,
        cr_namespace=namespace,
        cr_name="wp",
        path=path,
        **kw,
    )


async def test_requests_through_the_tunnel(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    try:
        listed = await _proxy(gw, plane_id, namespace, "GET", "/api/v1/namespaces")
        direct = json.loads(
            kubectl(
                workflow_plane.kubeconfig, workflow_plane.context, "get", "namespaces", "-o", "json"
            ).stdout
        )
        assert {i["metadata"]["name"] for i in listed.json()["items"]} == {
            i["metadata"]["name"] for i in direct["items"]
        }
        target = unique("cm")
        base = "/api/v1/namespaces/default/configmaps"
        body = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": target},
                "data": {"a": "1"},
            }
        ).encode()
        created = await _proxy(gw, plane_id, namespace, "POST", base, body=body)
        assert created.status == 201, created.body
        patched = await _proxy(
            gw,
            plane_id,
            namespace,
            "PATCH",
            f"{base}/{target}",
            body=b'{"data":{"a":"2"}}',
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert patched.status == 200 and patched.json()["data"]["a"] == "2"
        seen = kubectl(
            workflow_plane.kubeconfig,
            workflow_plane.context,
            "get",
            "cm",
            target,
            "-o",
            "jsonpath={.data.a}",
        ).stdout
        assert seen == "2"
        deleted = await _proxy(gw, plane_id, namespace, "DELETE", f"{base}/{target}")
        assert deleted.status == 200
        missing = await _proxy(gw, plane_id, namespace, "GET", f"{base}/{target}")
        assert missing.status == 404
        status = missing.json()
        assert status["kind"] == "Status" and status["reason"] == "NotFound"
    finally:
        await _stop(agents)


async def test_watch_streams_events_as_they_happen(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    plane_ns = unique("watched")

    def run(*args: str) -> None:
        kubectl(workflow_plane.kubeconfig, workflow_plane.context, *args, "-n", plane_ns)

    kubectl(workflow_plane.kubeconfig, workflow_plane.context, "create", "namespace", plane_ns)
    # A watch from "now" first lists what exists as ADDED: seeing this one means it is open.
    run("create", "configmap", "before", "--from-literal=a=0")
    events: list[tuple[str, str]] = []

    async def watch() -> None:
        async for line in gw.client.proxy_stream(
            "GET",
            plane_type=WP,
            plane_id=plane_id,
            cr_namespace=namespace,
            cr_name="wp",
            path=f"/api/v1/namespaces/{plane_ns}/configmaps",
            query="watch=true",
        ):
            event = json.loads(line)
            events.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                return

    watcher = asyncio.create_task(watch())
    try:
        await eventually(lambda: ("ADDED", "before") in events)
        run("create", "configmap", "w1", "--from-literal=a=1")
        await eventually(lambda: ("ADDED", "w1") in events)
        run("patch", "configmap", "w1", "-p", '{"data":{"a":"2"}}')
        await eventually(lambda: ("MODIFIED", "w1") in events)
        run("delete", "configmap", "w1")
        await asyncio.wait_for(watcher, 10)
        assert events == [
            ("ADDED", "before"),
            ("ADDED", "w1"),
            ("MODIFIED", "w1"),
            ("DELETED", "w1"),
        ]
    finally:
        await cancel_and_wait([watcher])
        await _stop(agents)


async def test_our_pair_speaks_binary_frames_bodies_both_ways_and_chunked(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    """Our agent offers v3 first and our gateway selects it: request bodies, whole answers
    and an answer of several 1 MiB chunks all travel as binary frames, byte for byte."""
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    target = unique("big")
    kubectl(workflow_plane.kubeconfig, workflow_plane.context, "create", "namespace", target)
    try:
        (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
        assert conn.binary and conn.v2
        base = f"/api/v1/namespaces/{target}/configmaps"
        blob = "".join(chr(0x20 + i % 0x5F) for i in range(900_000)) + "é\u2603"
        for i in range(3):
            manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"b{i}"}}
            body = json.dumps({**manifest, "data": {"blob": blob}}).encode()
            created = await _proxy(gw, plane_id, namespace, "POST", base, body=body)
            assert created.status == 201, created.body[:300]
        plain = {"Accept-Encoding": "identity"}
        listed = await _proxy(gw, plane_id, namespace, "GET", base, headers=plain)
        assert listed.status == 200 and len(listed.body) > 2_700_000  # three chunks at least
        assert [item["data"]["blob"] for item in listed.json()["items"]] == [blob] * 3
    finally:
        kubectl(
            workflow_plane.kubeconfig,
            workflow_plane.context,
            "delete",
            "ns",
            target,
            "--wait=false",
        )
        await _stop(agents)


async def test_ha_agents_share_load_and_survive_one_loss(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace, agents=2)
    try:
        status = await gw.client.plane_status(WP, plane_id, namespace=namespace, name="wp")
        assert status["connectedAgents"] == 2
        used: set[str] = set()
        for _ in range(6):
            conn = gw.gateway.connections.pick(WP, plane_id, f"{namespace}/wp")
            assert conn is not None
            used.add(conn.id)
        assert len(used) == 2  # round robin touches both
        for _ in range(4):
            assert (await _proxy(gw, plane_id, namespace, "GET", "/version")).status == 200
        await agents[0].stop()
        await eventually(lambda: len(gw.gateway.connections.for_plane(WP, plane_id)) == 1)
        for _ in range(6):
            assert (await _proxy(gw, plane_id, namespace, "GET", "/version")).status == 200
    finally:
        await _stop(agents)


async def test_gateway_restart_agents_come_back_by_themselves(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    tmp_path: Path,
) -> None:
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    port = gw.gateway.ports["public"]
    await gw.stop()
    await eventually(lambda: not agents[0].agent.tunnel.connected.is_set())
    again = await start_gateway(control_plane, tmp_path, public_port=port)
    try:
        await asyncio.wait_for(agents[0].agent.tunnel.connected.wait(), 20)
        response = await again.client.proxy(
            "GET",
            plane_type=WP,
            plane_id=plane_id,
            cr_namespace=namespace,
            cr_name="wp",
            path="/version",
        )
        assert response.status == 200
    finally:
        await _stop(agents)
        await again.stop()


async def test_ca_rotation_changes_only_that_cr(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    ca = agent_ca(workflow_plane, agents[0].agent.config.secret_name)
    apply(control_plane, workflow_plane_cr("other", namespace, plane_id, ca_pem=ca))
    await eventually(lambda: len(gw.gateway.planes.for_plane(plane_id)) == 2)
    grant = await gw.client.notify(
        plane_type=WP, plane_id=plane_id, event="created", namespace=namespace, name="other"
    )
    # The gateway's own watch judges a CR that appears or changes its CA, perhaps before the
    # notify: one of the two grants (and below, revokes), and the notify's answer says which.
    assert grant["authorizationsGranted"] in (0, 1)
    conn = gw.gateway.connections.for_plane(WP, plane_id)[0]
    assert conn.authorized == {f"{namespace}/wp", f"{namespace}/other"}
    from workflowplane.pki import generate_ca  # noqa: PLC0415

    apply(
        control_plane,
        workflow_plane_cr(
            "other", namespace, plane_id, ca_pem=generate_ca("rotated").cert_pem.decode()
        ),
    )
    revoke = await gw.client.notify(
        plane_type=WP, plane_id=plane_id, event="updated", namespace=namespace, name="other"
    )
    assert revoke["authorizationsRevoked"] in (0, 1) and revoke["disconnectedAgents"] == 0
    assert conn.authorized == {f"{namespace}/wp"} and not conn.ws.closed
    # A notify of a deletion is checked against the API server: "wp" is still there, so
    # this one is an older CR's of that name, come late, and revokes nothing.
    stale = await gw.client.notify(
        plane_type=WP, plane_id=plane_id, event="deleted", namespace=namespace, name="wp"
    )
    assert stale["disconnectedAgents"] == 0 and conn.authorized == {f"{namespace}/wp"}
    gone = ("delete", "workflowplane", "wp", "-n", namespace)
    kubectl(control_plane.kubeconfig, control_plane.context, *gone)
    deleted = await gw.client.notify(
        plane_type=WP, plane_id=plane_id, event="deleted", namespace=namespace, name="wp"
    )
    # left authorized for nothing: closed, by the notify or by the watch that saw it first
    assert deleted["disconnectedAgents"] in (0, 1)
    await eventually(lambda: conn.ws.closed)
    await _stop(agents)


async def test_bad_input_is_refused_with_the_right_status(
    control_plane: ApiServer,
    crds: Path,
    workflow_plane: ApiServer,
    tmp_path: Path,
    namespace: str,
) -> None:
    gw = await start_gateway(control_plane, tmp_path, max_body_bytes=1024)
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    url = gw.client.proxy_url(WP, plane_id, namespace, "wp", "/api/v1/namespaces")
    session = await _internal_session(gw)
    try:
        async with session.post(url, data=b"x" * 4096) as resp:
            assert resp.status == 413

        async def chunks() -> Any:
            for _ in range(8):
                yield b"x" * 512

        async with session.post(url, data=chunks()) as resp:  # chunked: no Content-Length
            assert resp.status == 413
        for sneaky in ("/k8s/api/../../secrets", "/k8s/api/%2e%2e/secrets", "/k8s/api/a%00b"):
            raw = yarl.URL(url.replace("/k8s/api/v1/namespaces", sneaky), encoded=True)
            async with session.get(raw) as resp:
                assert resp.status == 400, sneaky
        async with session.request("TRACE", url) as resp:
            assert resp.status == 405
        for query in ("", "?watch=true"):  # the lean path, aiohttp's stream path
            answer = await _raw_get(gw, url + query, b"X-Label: caf\xff\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert b"X-Label is not UTF-8" in answer
        conn = gw.gateway.connections.for_plane(WP, plane_id)[0]
        await conn.ws.send_str("not json")  # agents drop malformed frames and carry on
        await conn.ws.send_bytes(b"\x01\x00not a frame")
        nowhere = TunnelRequest(request_id="x", target="nowhere", method="GET", path="/")
        await conn.ws.send_bytes(encode_binary(nowhere))
        # the agent answers "x" with a 404 nobody waits for: the gateway counts it as late
        await eventually(lambda: _sample(gw, "workflowplane_gateway_late_responses_total") >= 1)
        assert (await _proxy(gw, plane_id, namespace, "GET", "/version")).status == 200
    finally:
        await session.close()
        await _stop(agents)
        await gw.stop()


def _sample(gw: RunningGateway, name: str, **labels: str) -> float:
    """A sample of the gateway's own metrics registry (0 before it is first recorded)."""
    return gw.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def _internal_ssl(gw: RunningGateway) -> ssl.SSLContext:
    """The internal client certificate's TLS context (the client's own is private)."""
    secret = await gw.kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=GATEWAY_NAMESPACE)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    return client_ssl_context(data["ca.crt"], data["tls.crt"], data["tls.key"])


async def _internal_session(gw: RunningGateway, limit: int = 100) -> aiohttp.ClientSession:
    """A raw HTTP session with the internal client certificate."""
    connector = aiohttp.TCPConnector(ssl=await _internal_ssl(gw), limit=limit)
    return aiohttp.ClientSession(connector=connector)


async def _raw_get(gw: RunningGateway, url: str, extra_head: bytes) -> bytes:
    """A GET of ``url`` written byte for byte (``extra_head``: header lines a client library
    would refuse to send), and its whole answer."""
    target = yarl.URL(url, encoded=True)
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=await _internal_ssl(gw), server_hostname=target.host
    )
    try:
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s\r\n"
            % (target.raw_path_qs.encode(), target.host.encode(), extra_head)
        )
        got = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                got += chunk
        except TimeoutError:
            raise AssertionError(f"no end: {got!r}") from None
        return got
    finally:
        writer.close()


async def test_plain_requests_are_served_lean_and_a_connection_that_mixes_goes_on(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    """Plain proxied requests are answered by the lean server (aiohttp's answers carry its
    ``Server`` header, the lean ones none), counted like any other; a control call on the same
    connection hands it to aiohttp, which serves what follows on it."""
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    url = gw.client.proxy_url(WP, plane_id, namespace, "wp", "/version")
    session = await _internal_session(gw, limit=1)
    counted = {"plane_id": plane_id, "verb": "get", "code": "200"}
    before = _sample(gw, "workflowplane_gateway_proxy_requests_total", **counted)
    try:
        for _ in range(3):
            async with session.get(url) as resp:
                assert resp.status == 200 and "gitVersion" in await resp.json()
                assert "Server" not in resp.headers
        assert _sample(gw, "workflowplane_gateway_proxy_requests_total", **counted) == before + 3
        openapi = await _whole_openapi(session, gw, plane_id, namespace)
        assert "Server" not in openapi.headers  # a chunked answer, relayed by the lean server
        async with session.get(f"{gw.internal_url}/api/v1/planes/status") as resp:
            assert resp.status == 200 and "aiohttp" in resp.headers["Server"]
        async with session.get(url) as resp:
            assert resp.status == 200 and "gitVersion" in await resp.json()
            assert "aiohttp" in resp.headers["Server"]
        # three GETs of /version, the OpenAPI document, and this one
        assert _sample(gw, "workflowplane_gateway_proxy_requests_total", **counted) == before + 5
        openapi = await _whole_openapi(session, gw, plane_id, namespace)
        assert "aiohttp" in openapi.headers["Server"]  # and by aiohttp, the same way
    finally:
        await session.close()
        await _stop(agents)


async def _whole_openapi(
    session: aiohttp.ClientSession, gw: RunningGateway, plane_id: str, namespace: str
) -> aiohttp.ClientResponse:
    """The plane's OpenAPI document (megabytes: it travels in chunks), read whole and checked."""
    url = gw.client.proxy_url(WP, plane_id, namespace, "wp", "/openapi/v2")
    async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
        body = await resp.read()
        assert resp.status == 200 and len(body) > 1024 * 1024, (resp.status, len(body))
        assert "paths" in json.loads(body)
        return resp


async def test_internal_api_requires_the_internal_client_certificate(
    gw: RunningGateway, tmp_path: Path
) -> None:
    context = ssl.create_default_context(cafile=str(gw.server_ca_file))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{gw.internal_url}/api/v1/planes/status", ssl=context):
                pass
    assert (await gw.client.all_status())["total"] >= 0


async def test_large_compressed_responses_arrive_intact(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    """The API server gzips responses over 128 KiB; bytes and Content-Encoding travel as is."""
    plane_id, agents = await _plane(control_plane, workflow_plane, gw, namespace)
    try:
        big = unique("big")
        payload = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": big},
            "data": {f"k{i}": "v" * 1000 for i in range(300)},
        }
        base = "/api/v1/namespaces/default/configmaps"
        created = await _proxy(
            gw, plane_id, namespace, "POST", base, body=json.dumps(payload).encode()
        )
        assert created.status == 201, created.body[:200]
        fetched = await _proxy(
            gw, plane_id, namespace, "GET", f"{base}/{big}", headers={"Accept-Encoding": "gzip"}
        )
        assert fetched.status == 200
        assert fetched.json()["data"] == payload["data"]
    finally:
        await _stop(agents)
