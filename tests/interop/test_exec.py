"""Exec through each pairing (issue #11): ``kubectl exec`` with a gateway's proxy as its server,
and OpenChoreo's own exec route (``/api/exec/...``, its CLI's raw stream).

The test API servers have no kubelet, so exec can only fail there; what is checked is that it
fails the way it fails without the tunnel, promptly: a pod with no node ("does not have a host
assigned", answered before any upgrade), and a pod on a node whose kubelet is not there (the
API server upgrades, then reports the dial error on the error channel). OpenChoreo's agent
loses the second error (its ``exec.go`` closes the stream without it), so through it the exec
just ends. A full exec runs against a stub API server with our agent (OpenChoreo's agent speaks
SPDY upstream: a real kubelet, e.g. kwok, is needed for it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.integration.harness import unique
from tests.integration.tunnel.stub_apiserver import stub_apiserver
from tests.interop.conftest import Pair, Pairing
from tests.interop.peers import WP
from workflowplane.protocol.exec import K8S_V5
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl, kubectl_binary

pytestmark = [pytest.mark.integration, pytest.mark.interop]
PROMPT_SECONDS = 10.0
GO_GATEWAY_STREAMING = "Streaming operations (watch, logs -f, exec, port-forward) are not yet"
CLOSED_PORT = 1  # the "kubelet" of the node: nothing listens there


@dataclass(frozen=True)
class ExecPods:
    namespace: str
    no_host: str  # never scheduled
    no_kubelet: str  # on a node whose kubelet is not there


@pytest.fixture(scope="session")
def exec_pods(workflow_plane: ApiServer) -> Iterator[ExecPods]:
    def run(*args: str, input: str | None = None) -> None:
        kubectl(workflow_plane.kubeconfig, workflow_plane.context, *args, input=input)

    pods = ExecPods(unique("exec"), "no-host", "no-kubelet")
    node = unique("node")
    run("create", "namespace", pods.namespace)
    run("create", "serviceaccount", "default", "-n", pods.namespace)
    run(
        "create",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    status = {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": CLOSED_PORT}},
    }
    run(
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    for name, node_name in ((pods.no_host, None), (pods.no_kubelet, node)):
        spec = {
            "containers": [{"name": "c", "image": "busybox"}],
            "automountServiceAccountToken": False,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": pods.namespace},
            "spec": {**spec, **({"nodeName": node_name} if node_name else {})},
        }
        run("create", "-f", "-", input=json.dumps(pod))
    yield pods
    kubectl(
        workflow_plane.kubeconfig,
        workflow_plane.context,
        "delete",
        "node",
        node,
        "--wait=false",
        check=False,
    )


def _exec(
    kubeconfig: Path, context: str, pods: ExecPods, pod: str
) -> subprocess.CompletedProcess[str]:
    argv = [kubectl_binary(), "--kubeconfig", str(kubeconfig), "--context", context]
    argv += ["exec", "-n", pods.namespace, pod, "--", "echo", "hi"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _through(pair: Pair, plane_id: str, cr: tuple[str, str], directory: Path) -> Path:
    """A kubeconfig whose server is the gateway's proxy for this CR, with the internal caller's
    certificate (as the controller holds it)."""
    pki = pair.server_ca.parent
    server = pair.gateway.internal_url + pair.api.proxy_route(plane_id, cr)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gw",
                "cluster": {"server": server, "certificate-authority": str(pair.server_ca)},
            }
        ],
        "users": [
            {
                "name": "gw",
                "user": {
                    "client-certificate": str(pki / "caller.crt"),
                    "client-key": str(pki / "caller.key"),
                },
            }
        ],
        "contexts": [{"name": "gw", "context": {"cluster": "gw", "user": "gw"}}],
        "current-context": "gw",
    }
    path = directory / "through-gateway.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("pod", ["no-host", "no-kubelet"])
async def test_kubectl_exec_fails_as_it_does_without_the_tunnel(
    pair: Pair,
    namespace: str,
    exec_pods: ExecPods,
    workflow_plane: ApiServer,
    tmp_path: Path,
    pod: str,
) -> None:
    plane = await pair.plane(namespace)
    direct = await asyncio.to_thread(
        _exec, workflow_plane.kubeconfig, workflow_plane.context, exec_pods, pod
    )
    assert direct.returncode != 0 and direct.stderr.startswith("error: ")
    kubeconfig = _through(pair, plane.plane_id, plane.cr, tmp_path)
    tunnelled = await asyncio.to_thread(_exec, kubeconfig, "gw", exec_pods, pod)
    if pair.pairing.gateway == "go":  # its proxy answers any upgrade with 501
        assert tunnelled.returncode != 0 and GO_GATEWAY_STREAMING in tunnelled.stderr
    elif pair.pairing == Pairing("go", "ours") and pod == "no-kubelet":
        # OpenChoreo's agent starts the stream, then closes it without the API server's error.
        assert (tunnelled.returncode, tunnelled.stdout, tunnelled.stderr) == (0, "", "")
    else:
        assert (tunnelled.returncode, tunnelled.stderr) == (direct.returncode, direct.stderr)


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[bytes], aiohttp.WSMessage]:
    """Every data message until the stream ends, and how it ended."""
    received: list[bytes] = []
    async with asyncio.timeout(PROMPT_SECONDS):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.BINARY:
                return received, message
            received.append(bytes(message.data))


async def test_openchoreos_exec_route_ends_promptly_when_the_kubelet_is_not_there(
    pair: Pair, namespace: str, exec_pods: ExecPods
) -> None:
    plane = await pair.plane(namespace)
    query = f"podNamespace={exec_pods.namespace}&podName={exec_pods.no_kubelet}&command=ls"
    async with pair.api.websocket(f"/api/exec/{WP}/{plane.plane_id}/{namespace}/wp?{query}") as ws:
        received, end = await _drain(ws)
    assert received == [b"\x01"]  # "started", then the end
    if pair.pairing == Pairing("ours", "ours"):  # the reason, in the close frame
        assert end.data == aiohttp.WSCloseCode.INTERNAL_ERROR
        assert "error sending request" in str(end.extra)


async def test_exec_runs_end_to_end_against_an_api_server_that_can(
    pair: Pair, namespace: str, tmp_path: Path
) -> None:
    if pair.pairing.agent == "go":
        pytest.skip("OpenChoreo's agent speaks SPDY upstream: it needs a kubelet (kwok)")
    async with stub_apiserver() as stub:
        plane = await pair.plane(namespace, kubeconfig=stub.kubeconfig(tmp_path))
        query = "podNamespace=default&podName=p&command=echo&command=hi"
        async with pair.api.websocket(
            f"/api/exec/{WP}/{plane.plane_id}/{namespace}/wp?{query}"
        ) as ws:
            received, end = await _drain(ws)
        assert received == [b"\x01", b"\x01hi\n", b"\x02to stderr\n"]
        assert end.type == aiohttp.WSMsgType.CLOSE and end.data == aiohttp.WSCloseCode.OK
        if pair.pairing.gateway == "go":
            return
        # kubectl's protocol through our gateway's proxy: stdin in, stdout out, exit status.
        path = "/api/v1/namespaces/default/pods/p/exec?command=cat&stdin=true&stdout=true"
        route = pair.api.proxy_route(plane.plane_id, plane.cr) + path
        async with pair.api.websocket(route, protocols=(K8S_V5,)) as ws:
            await ws.send_bytes(b"\x00typed")
            assert (await ws.receive(timeout=PROMPT_SECONDS)).data == b"\x01typed"
            await ws.send_bytes(b"\xff\x00")
            received, _ = await _drain(ws)
        assert [json.loads(m[1:])["status"] for m in received if m[:1] == b"\x03"] == ["Success"]
