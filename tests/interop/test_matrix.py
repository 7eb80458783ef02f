"""Each pairing of agent and gateway against two real API servers (spec: gateway-agent.md).

What differs by pairing is said where it differs: OpenChoreo's gateway answers watch/follow with
501; OpenChoreo's agent forwards ``Impersonate-*`` (its gateway passes every caller header on);
our agent's errors carry a Kubernetes Status body, OpenChoreo's an empty one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import apply, eventually, unique, workflow_plane_cr
from tests.interop.conftest import Pair, Pairing
from workflowplane.testenv import ApiServer, free_port
from workflowplane.testenv.tools import kubectl

pytestmark = [pytest.mark.integration, pytest.mark.interop]
PROMPT_SECONDS = 5.0  # an error must come well before OpenChoreo's gateway's 30 s timeout
GO_GATEWAY_STREAMING = "Streaming operations (watch, logs -f, exec, port-forward) are not yet"
BIG_LIST_ITEMS, ITEM_BYTES = 20, 900_000  # ≈ 18 MB of ConfigMaps: over 16 MiB in one answer
# Uncompressed, so the answer really is that large on the tunnel (the API server would gzip it).
PLAIN = {"Accept-Encoding": "identity"}


def _wp(pair: Pair, *args: str, input: str | None = None) -> str:
    server = pair.workflow_plane
    return kubectl(server.kubeconfig, server.context, *args, input=input).stdout


def _status_message(body: bytes) -> str:
    return str(json.loads(body)["message"])


async def test_admission_by_the_crs_ca_and_refusal_of_an_untrusted_agent(
    pair: Pair, namespace: str
) -> None:
    plane = await pair.plane(namespace)
    assert await pair.api.connected(plane.plane_id, plane.cr)
    stranger = pair.agent(plane.plane_id)  # its own cert-manager leaf, which no CR trusts
    stranger.start()
    refusal = "bad handshake" if pair.pairing.agent == "go" else "401"
    await stranger.wait_log(refusal)
    status = await pair.api.call("GET", f"/api/v1/planes/workflowplane/{plane.plane_id}/status")
    assert status.json()["connectedAgents"] == 1


async def test_crud_through_the_tunnel(
    pair: Pair, namespace: str, make_namespace: Any, workflow_plane: ApiServer
) -> None:
    plane = await pair.plane(namespace)
    target = make_namespace(workflow_plane, "crud")
    base = f"/api/v1/namespaces/{target}/configmaps"
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}
    created = await pair.api.proxy(
        plane.plane_id, plane.cr, "POST", base, json={**manifest, "data": {"a": "1"}}
    )
    assert created.status == 201, created.body
    read = await pair.api.proxy(plane.plane_id, plane.cr, "GET", f"{base}/cm")
    assert read.status == 200 and read.json()["data"] == {"a": "1"}
    patched = await pair.api.proxy(
        plane.plane_id,
        plane.cr,
        "PATCH",
        f"{base}/cm",
        data=json.dumps({"data": {"b": "2"}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status == 200 and patched.json()["data"] == {"a": "1", "b": "2"}
    replaced = {**patched.json(), "data": {"c": "3"}}
    put = await pair.api.proxy(plane.plane_id, plane.cr, "PUT", f"{base}/cm", json=replaced)
    assert put.status == 200
    assert json.loads(_wp(pair, "get", "cm", "cm", "-n", target, "-o", "json"))["data"] == {
        "c": "3"
    }
    listed = await pair.api.proxy(plane.plane_id, plane.cr, "GET", base)
    assert "cm" in [item["metadata"]["name"] for item in listed.json()["items"]]
    deleted = await pair.api.proxy(plane.plane_id, plane.cr, "DELETE", f"{base}/cm")
    assert deleted.status == 200
    gone = await pair.api.proxy(plane.plane_id, plane.cr, "GET", f"{base}/cm")
    assert gone.status == 404


async def test_not_found_passes_through_as_the_api_servers_status(
    pair: Pair, namespace: str
) -> None:
    plane = await pair.plane(namespace)
    reply = await pair.api.proxy(
        plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default/configmaps/nope"
    )
    assert reply.status == 404
    assert reply.json()["reason"] == "NotFound" and reply.json()["kind"] == "Status"


async def test_unknown_target_is_answered_at_once(pair: Pair, namespace: str) -> None:
    """OpenChoreo's gateway lets ``monitoring`` through; neither agent serves it."""
    plane = await pair.plane(namespace)
    route = f"/api/proxy/workflowplane/{plane.plane_id}/{namespace}/wp/monitoring/api/v1/query"
    reply = await pair.api.call("GET", route)
    assert reply.status == 404 and reply.seconds < PROMPT_SECONDS
    if pair.pairing.agent == "ours":
        assert "unknown target: monitoring" in _status_message(reply.body)


@pytest.fixture
def dead_plane_kubeconfig(workflow_plane: ApiServer, tmp_path: Path) -> Path:
    """The plane's kubeconfig pointing at a port nothing listens on: its API server is down."""
    config = yaml.safe_load(workflow_plane.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    path = tmp_path / "dead.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_plane_api_server_down_is_a_prompt_502(
    pair: Pair, namespace: str, dead_plane_kubeconfig: Path
) -> None:
    plane = await pair.plane(namespace, kubeconfig=dead_plane_kubeconfig)
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces")
    assert reply.status == 502 and reply.seconds < PROMPT_SECONDS
    if pair.pairing.agent == "ours":
        assert "backend request failed" in _status_message(reply.body)


@pytest.fixture(scope="session")
def big_namespace(workflow_plane: ApiServer) -> Iterator[str]:
    """ConfigMaps whose list is ≈ 18 MB (over 16 MiB), created once for the session."""
    name = unique("big")
    kubectl(workflow_plane.kubeconfig, workflow_plane.context, "create", "namespace", name)
    items = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm-{index:02d}", "namespace": name},
            "data": {"blob": chr(ord("a") + index) * ITEM_BYTES},
        }
        for index in range(BIG_LIST_ITEMS)
    ]
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    kubectl(workflow_plane.kubeconfig, workflow_plane.context, "create", "-f", "-", input=manifest)
    yield name
    kubectl(
        workflow_plane.kubeconfig,
        workflow_plane.context,
        "delete",
        "namespace",
        name,
        "--wait=false",
        check=False,
    )


async def test_a_list_over_16_mib_reaches_the_caller(
    pair: Pair, namespace: str, big_namespace: str
) -> None:
    plane = await pair.plane(namespace)
    path = f"/api/v1/namespaces/{big_namespace}/configmaps"
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path, headers=PLAIN)
    assert reply.status == 200 and "Content-Encoding" not in reply.headers
    assert len(reply.body) > 16 * 1024 * 1024
    items = reply.json()["items"]
    blobs = [item["data"]["blob"] for item in items if item["metadata"]["name"].startswith("cm-")]
    assert len(blobs) == BIG_LIST_ITEMS and all(len(blob) == ITEM_BYTES for blob in blobs)
    small = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert small.status == 200  # the connection that carried it still serves others


async def test_a_list_over_our_agents_frame_bound_fails_at_once_with_the_reason(
    pair: Pair, namespace: str, big_namespace: str
) -> None:
    if pair.pairing.agent != "ours":
        pytest.skip("OpenChoreo's agent has no frame bound")
    plane = await pair.plane(namespace, extra=["--max-frame-bytes=4194304"])
    path = f"/api/v1/namespaces/{big_namespace}/configmaps"
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path, headers=PLAIN)
    assert reply.status == 502 and reply.seconds < PROMPT_SECONDS
    message = _status_message(reply.body)
    assert "larger than" in message and "limit=" in message
    after = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert after.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/configmaps?watch=true",
        "/api/v1/namespaces/default/pods/p/log?follow=true",
    ],
    ids=["watch", "follow"],
)
async def test_watch_and_follow(pair: Pair, namespace: str, path: str) -> None:
    plane = await pair.plane(namespace)
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path)
    if pair.pairing.gateway == "go":
        assert reply.status == 501 and reply.body.decode().startswith(GO_GATEWAY_STREAMING)
        assert reply.seconds < PROMPT_SECONDS
    else:
        pytest.fail(f"no expectation for {pair.pairing.gateway} gateways yet")


async def test_caller_credentials_and_impersonation(pair: Pair, namespace: str) -> None:
    """Both agents drop the caller's Authorization. ``Impersonate-*`` is dropped by our agent
    and by our gateway; OpenChoreo's gateway passes it on and its agent forwards it, so with
    both of OpenChoreo's the API server impersonates (the agent's identity may)."""
    plane = await pair.plane(namespace)
    bogus = {"Authorization": "Bearer not-a-token"}
    reply = await pair.api.proxy(
        plane.plane_id, plane.cr, "GET", "/api/v1/namespaces", headers=bogus
    )
    assert reply.status == 200
    impersonating = {"Impersonate-User": "intruder", "Impersonate-Group": "nobody"}
    reply = await pair.api.proxy(
        plane.plane_id, plane.cr, "GET", "/api/v1/namespaces", headers=impersonating
    )
    if pair.pairing == Pairing("go", "go"):
        assert reply.status == 403 and '"intruder"' in _status_message(reply.body)
    else:
        assert reply.status == 200


async def test_notify_deleted_disconnects_and_the_agent_comes_back(
    pair: Pair, namespace: str
) -> None:
    plane = await pair.plane(namespace)
    kubectl(
        pair.control_plane.kubeconfig,
        pair.control_plane.context,
        "delete",
        "workflowplane",
        "wp",
        "-n",
        namespace,
    )
    event = {"planeType": "workflowplane", "planeID": plane.plane_id, "event": "deleted"}
    reply = await pair.api.call(
        "POST", "/api/v1/planes/notify", json={**event, "namespace": namespace, "name": "wp"}
    )
    assert reply.status == 200 and reply.json()["action"] == "disconnect"
    assert reply.json()["disconnectedAgents"] == 1
    refused = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces")
    assert refused.status in (403, 502)
    apply(
        pair.control_plane,
        workflow_plane_cr("wp", namespace, plane.plane_id, plane.agent.ca_pem),
    )
    await pair.wait_connected(plane)  # the agent reconnected by itself
    back = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces")
    assert back.status == 200


async def test_reconnect_closes_and_the_agent_returns(pair: Pair, namespace: str) -> None:
    plane = await pair.plane(namespace)
    route = f"/api/v1/planes/workflowplane/{plane.plane_id}/reconnect"
    reply = await pair.api.call("POST", route)
    assert reply.status == 200 and reply.json() == {"success": True, "disconnectedAgents": 1}

    async def served_again() -> bool:
        answer = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces")
        return answer.status == 200

    await eventually(served_again, timeout=30, interval=0.2)


async def test_cluster_workflow_plane(pair: Pair, namespace: str) -> None:
    plane = await pair.plane(namespace, cluster=True)
    assert plane.cr[0] == ""
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert reply.status == 200 and reply.json()["metadata"]["name"] == "default"
    other = await pair.api.proxy(plane.plane_id, (namespace, "wp"), "GET", "/api/v1/namespaces")
    assert other.status == 403  # no connection is authorized for a CR that does not trust it
