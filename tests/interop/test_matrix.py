"""Each pairing of agent and gateway against two real API servers (spec: gateway-agent.md).

Every agent runs on what OpenChoreo's chart has cert-manager issue (a self-signed leaf) and every
plane CR trusts that leaf itself (``ca.crt == tls.crt``): our gateway pins it, as Go's verifier
does. What differs by pairing is said where it differs: OpenChoreo's gateway answers
watch/follow and upgrades on its proxy with 501; ours streams them to our agent and gives
OpenChoreo's agent a bounded watch instead; OpenChoreo's agent forwards ``Impersonate-*`` (its
gateway passes every caller header on, ours strips it); our agent's errors carry a Kubernetes
Status body, OpenChoreo's an empty one; OpenChoreo's agent reports no exec errors.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import apply, eventually, unique, workflow_plane_cr
from tests.interop.conftest import GATEWAY_FIXTURES, Pair, Pairing, Plane
from tests.interop.peers import tail
from tests.pki_chains import intermediate_ca, root_ca
from workflowplane.gateway.kube_proxy import DEGRADED_HEADER
from workflowplane.pki import issue_certificate
from workflowplane.protocol import TUNNEL_V3
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
    """Both gateways refuse with a 401 after the handshake (OpenChoreo's agent logs it as
    "bad handshake"), not with a TLS alert."""
    plane = await pair.plane(namespace)
    assert await pair.api.connected(plane.plane_id, plane.cr)
    stranger = pair.agent(plane.plane_id)  # its own cert-manager leaf, which no CR trusts
    stranger.start()
    refusal = "bad handshake" if pair.pairing.agent == "go" else "401"
    await stranger.wait_log(refusal)
    status = await pair.api.call("GET", f"/api/v1/planes/workflowplane/{plane.plane_id}/status")
    assert status.json()["connectedAgents"] == 1


async def test_an_agent_whose_leaf_an_intermediate_issued_is_admitted_by_the_root(
    pair: Pair, namespace: str
) -> None:
    """cert-manager behind a CA issuer writes the leaf and its intermediate to ``tls.crt``; the
    CR names the root. Each agent sends the chain in its handshake and each gateway verifies
    the leaf through it (Go's ``PeerCertificates[1:]``)."""
    root = root_ca("org-root")
    inter = intermediate_ca(root, "org-agents")
    leaf = issue_certificate(inter, "agent")
    plane_id = unique("p")
    agent = pair.agent(plane_id)
    certs = agent.directory / "certs"
    (certs / "tls.crt").write_bytes(leaf.cert_pem + inter.cert_pem)
    (certs / "tls.key").write_bytes(leaf.key_pem)
    (certs / "ca.crt").write_bytes(root.cert_pem)
    apply(pair.control_plane, workflow_plane_cr("wp", namespace, plane_id, agent.ca_pem))
    agent.start()
    await pair.wait_connected(Plane(plane_id, (namespace, "wp"), agent))
    reply = await pair.api.proxy(plane_id, (namespace, "wp"), "GET", "/api/v1/namespaces/default")
    assert reply.status == 200


async def test_kube_systems_secrets_are_refused_by_every_gateway(
    pair: Pair, namespace: str
) -> None:
    """OpenChoreo's gateway refuses them on every plane (validator.go's blockedPaths); ours
    refuses them too, and also the spellings its substring check lets through."""
    plane = await pair.plane(namespace)
    for path in (
        "/api/v1/namespaces/kube-system/secrets",
        "/api/v1/namespaces/kube-system/secrets/anything",
    ):
        reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path)
        assert reply.status == 403, (path, reply.body)
    if pair.pairing.gateway == "ours":
        watch = "/api/v1/watch/namespaces/kube-system/secrets"
        assert (await pair.api.proxy(plane.plane_id, plane.cr, "GET", watch)).status == 403
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert reply.status == 200


async def test_each_pairing_speaks_the_protocol_both_sides_know(pair: Pair, namespace: str) -> None:
    """Our pair negotiates binary frames (workflowplane.tunnel.v3); with OpenChoreo's agent or
    gateway on either side the connection stays v1 JSON (neither offers nor selects ours)."""
    plane = await pair.plane(namespace)
    ours = pair.pairing == Pairing("ours", "ours")
    if pair.pairing.agent == "ours":
        await plane.agent.wait_log("connected to", TUNNEL_V3 if ours else "v1 gateway")
    if pair.pairing.gateway == "ours":
        said = f"for planeID {plane.plane_id} ({TUNNEL_V3 if ours else 'v1'})"
        await eventually(lambda: said in tail(pair.gateway.log, 2000))
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert reply.status == 200 and reply.json()["metadata"]["name"] == "default"


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


async def test_a_query_reaches_the_api_server_as_the_caller_sent_it(
    pair: Pair, namespace: str, make_namespace: Any, workflow_plane: ApiServer
) -> None:
    """Every gateway sends the query on still percent-encoded (Go's ``r.URL.RawQuery``) and
    every agent appends it as it is. Decoded on the way, a ``%2B`` became a ``+`` (a space
    to the API server) and a ``%25`` a bad escape: the field manager the API server records
    shows what arrived. kubectl's set-based selector and a ``%26`` in a value arrive too."""
    plane = await pair.plane(namespace)
    target = make_namespace(workflow_plane, "query")
    base = f"/api/v1/namespaces/{target}/configmaps"
    for name, app in (("a", "a"), ("c", "c")):
        manifest = {"apiVersion": "v1", "kind": "ConfigMap"}
        manifest["metadata"] = {"name": name, "labels": {"app": app}}  # type: ignore[assignment]
        query = "?fieldManager=tool%2Bv1%25x%26y"
        created = await pair.api.proxy(
            plane.plane_id, plane.cr, "POST", base + query, json=manifest
        )
        assert created.status == 201, created.body
        (managed,) = created.json()["metadata"]["managedFields"]
        assert managed["manager"] == "tool+v1%x&y"

    async def names(query: str) -> list[str]:
        reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", f"{base}?{query}")
        assert reply.status == 200, (query, reply.body)
        return [item["metadata"]["name"] for item in reply.json()["items"]]

    assert await names("labelSelector=app+in+%28a%2Cb%29") == ["a"]
    assert await names("fieldSelector=metadata.name%3Da%26c") == []  # no object "a&c"
    assert await names("fieldSelector=metadata.name%3Dc") == ["c"]


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
    if pair.pairing.gateway == "ours" or pair.pairing.agent == "ours":  # Go's agent: no body
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


async def test_a_list_over_our_agents_frame_bound_fails_at_once_or_comes_in_chunks(
    pair: Pair, namespace: str, big_namespace: str
) -> None:
    """To OpenChoreo's gateway (v1) our agent's frame bound applies: a prompt 502 saying so.
    To ours it sends the answer in chunks (workflowplane.tunnel.v2): no frame bound at all."""
    if pair.pairing.agent != "ours":
        pytest.skip("OpenChoreo's agent has no frame bound")
    plane = await pair.plane(namespace, extra=["--max-frame-bytes=4194304"])
    path = f"/api/v1/namespaces/{big_namespace}/configmaps"
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path, headers=PLAIN)
    if pair.pairing.gateway == "ours":
        assert reply.status == 200 and len(reply.json()["items"]) == BIG_LIST_ITEMS
    else:
        assert reply.status == 502 and reply.seconds < PROMPT_SECONDS
        message = _status_message(reply.body)
        assert "larger than" in message and "limit=" in message
    after = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert after.status == 200


WATCH_SECONDS = 3  # the caller's own bound (timeoutSeconds): the API server ends the watch


async def test_watch(
    pair: Pair, namespace: str, make_namespace: Any, workflow_plane: ApiServer
) -> None:
    """OpenChoreo's gateway: 501. Ours: streamed to our agent (an event made after the watch
    opened arrives while it is open); to OpenChoreo's agent (which answers a watch only when
    it ends) a bounded watch whose one answer reaches the caller, marked degraded. Never a
    hang, never a lost body."""
    plane = await pair.plane(namespace)
    target = make_namespace(workflow_plane, "watch")
    _wp(pair, "create", "configmap", "before", "-n", target)
    path = f"/api/v1/namespaces/{target}/configmaps?watch=true&timeoutSeconds={WATCH_SECONDS}"
    if pair.pairing == Pairing("ours", "ours"):
        route = pair.api.proxy_route(plane.plane_id, plane.cr) + path
        async with pair.api.stream("GET", route) as response:
            assert response.status == 200 and DEGRADED_HEADER not in response.headers
            first = json.loads(await response.content.readline())  # the initial ADDED
            _wp(pair, "create", "configmap", "after", "-n", target)
            second = json.loads(await response.content.readline())
        assert [e["object"]["metadata"]["name"] for e in (first, second)] == ["before", "after"]
        return
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path)
    if pair.pairing.gateway == "go":
        assert reply.status == 501 and reply.body.decode().startswith(GO_GATEWAY_STREAMING)
        assert reply.seconds < PROMPT_SECONDS
        return
    assert reply.status == 200 and reply.headers[DEGRADED_HEADER] == "v1-agent"
    assert reply.seconds < WATCH_SECONDS + PROMPT_SECONDS
    events = [json.loads(line) for line in reply.body.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "before")]


async def test_follow(pair: Pair, namespace: str) -> None:
    """A log that cannot be followed (no such pod): OpenChoreo's gateway 501, ours the API
    server's own 404 with its body, whichever agent (v1: as a plain request, degraded)."""
    plane = await pair.plane(namespace)
    path = "/api/v1/namespaces/default/pods/p/log?follow=true"
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", path)
    assert reply.seconds < PROMPT_SECONDS
    if pair.pairing.gateway == "go":
        assert reply.status == 501 and reply.body.decode().startswith(GO_GATEWAY_STREAMING)
    else:
        assert reply.status == 404 and reply.json()["reason"] == "NotFound"


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


async def test_notify_refuses_what_is_no_notification_and_deleted_alone_closes_the_plane(
    pair: Pair, namespace: str
) -> None:
    """Both gateways answer 400 for a body that is no notification (ours had answered a JSON
    array with a 500), and a ``deleted`` naming no CR closes every connection of the plane
    (the agents reconnect and are admitted afresh)."""
    plane = await pair.plane(namespace)
    for body in ([], "x", {"planeType": "workflowplane"}, {"event": "created"}):
        reply = await pair.api.call("POST", "/api/v1/planes/notify", json=body)
        assert reply.status == 400, (body, reply.body)
    event = {"planeType": "workflowplane", "planeID": plane.plane_id, "event": "deleted"}
    reply = await pair.api.call("POST", "/api/v1/planes/notify", json=event)
    assert reply.status == 200, reply.body
    assert reply.json()["action"] == "disconnect" and reply.json()["disconnectedAgents"] == 1
    await pair.wait_connected(plane)  # the CR is still there: the agent is back
    reply = await pair.api.proxy(plane.plane_id, plane.cr, "GET", "/api/v1/namespaces/default")
    assert reply.status == 200
    # a null where Go decodes "" (a ClusterWorkflowPlane's namespace) is no bad request:
    # Go answers 503 (no such CR to read), ours 200 (nothing to grant)
    cluster = {**event, "event": "updated", "namespace": None, "name": "no-such-cluster-plane"}
    reply = await pair.api.call("POST", "/api/v1/planes/notify", json=cluster)
    assert reply.status in (200, 503), reply.body


async def test_notify_deleted_disconnects_and_the_agent_comes_back(
    pair: Pair, namespace: str
) -> None:
    plane = await pair.plane(namespace)
    event = {"planeType": "workflowplane", "planeID": plane.plane_id, "event": "updated"}
    cr = {"namespace": namespace, "name": "wp"}
    reply = await pair.api.call("POST", "/api/v1/planes/notify", json={**event, **cr})
    assert reply.status == 200 and reply.json()["action"] == "revalidate"
    assert reply.json()["authorizationsRevoked"] == 0
    kubectl(
        pair.control_plane.kubeconfig,
        pair.control_plane.context,
        "delete",
        "workflowplane",
        "wp",
        "-n",
        namespace,
    )
    event = {**event, "event": "deleted"}
    reply = await pair.api.call(
        "POST", "/api/v1/planes/notify", json={**event, "namespace": namespace, "name": "wp"}
    )
    assert reply.status == 200 and reply.json()["action"] == "disconnect"
    # Ours may have closed it already: its own watch of the CRs saw the deletion (the
    # notify of a controller with a finalizer comes first, while the CR is still there).
    assert reply.json()["disconnectedAgents"] == 1 or pair.pairing.gateway == "ours"
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


@pytest.mark.parametrize("kind", sorted(GATEWAY_FIXTURES))
def test_gateway_health_answers_on_openchoreos_paths(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """The chart's probes (``/health``; ``/ready`` too), and ours beside them."""
    gateway = request.getfixturevalue(GATEWAY_FIXTURES[kind])
    paths = ["/health", "/ready"] + (["/healthz", "/readyz", "/metrics"] if kind == "ours" else [])
    for path in paths:
        with urllib.request.urlopen(gateway.health_url + path, timeout=5) as reply:
            assert reply.status == 200, path
