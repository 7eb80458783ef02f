"""Isolation benchmark (issue #10): prints figures, asserts nothing.
Run: PYTHONPATH=src .venv/bin/python bench/isolation.py [--push-mib 1024] [--watches 200]

Measures, on this machine over loopback, with the gateway as its own process (its RSS read
from /proc):
1. gateway RSS growth while an agent pushes --push-mib MiB of stream data to callers that
   never read (each such caller is cut off when it falls a stream buffer behind; the agent
   then pushes into the next one, until the total is reached);
2. p50/p99 of a plain proxied GET through a real agent and API server, idle and while
   --watches watch=true streams are requested through the same agent (the gateway admits up
   to its caps and answers 429 beyond);
3. p99 of that GET while another plane's agent floods the gateway with frames nobody waits
   for, and how many bytes of log the flood wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import Agent
from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.protocol.gateway_client import GatewayClient
from workflowplane.testenv import CONTROL_PLANE, WORKFLOW_PLANE, Environment, free_port
from workflowplane.testenv.tools import async_client, gateway_server_ca, kubectl

WP = "workflowplane"
REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Setup:
    """API servers, the gateway process (log to a file), its CA and an internal client."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = Environment(tmp / "env", [CONTROL_PLANE, WORKFLOW_PLANE])
        self.ports = {"public": free_port(), "internal": free_port(), "health": free_port()}
        self.log = tmp / "gateway.log"
        self.gateway: subprocess.Popen[bytes] | None = None
        self.client: GatewayClient | None = None
        self.ca_file = tmp / "gw-ca.crt"

    def start(self) -> None:
        self.env.start()
        cp = self.env[CONTROL_PLANE]
        kubectl(
            cp.kubeconfig, cp.context, "apply", "--server-side", "-f", str(REPO / "deploy/crds")
        )
        kubectl(cp.kubeconfig, cp.context, "wait", "--for=condition=Established", "crd", "--all")
        wpctl = Path(sys.executable).parent / "wpctl"
        args = [
            str(wpctl),
            "gateway",
            "--kubeconfig",
            str(cp.kubeconfig),
            "--context",
            cp.context,
            "--host",
            "127.0.0.1",
        ]
        for name, port in self.ports.items():
            args += [f"--{name}-port", str(port)]
        self.gateway = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.ports['health']}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"gateway did not start; see {self.log}")
        gateway_server_ca(cp.kubeconfig, cp.context, self.ca_file)

    async def connect_client(self) -> GatewayClient:
        cp = self.env[CONTROL_PLANE]
        kube = async_client(cp.kubeconfig, cp.context)
        self.client = await GatewayClient.from_secret(
            kube, f"https://127.0.0.1:{self.ports['internal']}"
        )
        await kube.close()
        return self.client

    def stop(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            self.gateway.wait(10)
        self.env.stop()

    @property
    def pid(self) -> int:
        assert self.gateway is not None
        return self.gateway.pid

    def register(self, name: str, plane_id: str, ca_pem: bytes) -> None:
        cp = self.env[CONTROL_PLANE]
        manifest = {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": "WorkflowPlane",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"planeID": plane_id, "clusterAgent": {"clientCA": {"value": ca_pem.decode()}}},
        }
        kubectl(cp.kubeconfig, cp.context, "apply", "-f", "-", input=json.dumps(manifest))

    def context_for(self, leaf: KeyPair) -> ssl.SSLContext:
        files = Path(tempfile.mkdtemp(dir=self.tmp))
        (files / "c.crt").write_bytes(leaf.cert_pem)
        (files / "c.key").write_bytes(leaf.key_pem)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(files / "c.crt", files / "c.key")
        return context


async def scripted_ws(setup: Setup, plane_id: str) -> tuple[aiohttp.ClientSession, Any]:
    """A hand-driven agent connection for a new CR (CA inline) of ``plane_id``."""
    ca = generate_ca(f"bench-{plane_id}")
    setup.register(plane_id, plane_id, ca.cert_pem)
    session = aiohttp.ClientSession()
    url = f"wss://127.0.0.1:{setup.ports['public']}/ws?planeType={WP}&planeID={plane_id}"
    context = setup.context_for(issue_certificate(ca, "bench-agent"))
    for _ in range(100):  # until the gateway's TLS trust has the new CA
        try:
            return session, await session.ws_connect(url, ssl=context, max_msg_size=0)
        except (aiohttp.ClientError, OSError):
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway never admitted the bench agent")


async def non_reading_caller(setup: Setup, path: str) -> asyncio.StreamWriter:
    """Sends a watch request on the internal listener and never reads the answer."""
    cp = setup.env[CONTROL_PLANE]
    data = kubectl(
        cp.kubeconfig,
        cp.context,
        "get",
        "secret",
        "cluster-gateway-internal-client",
        "-n",
        "openchoreo-control-plane",
        "-o",
        "json",
    ).stdout
    secret = {k: base64.b64decode(v) for k, v in json.loads(data)["data"].items()}
    context = setup.context_for(KeyPair(secret["tls.crt"], secret["tls.key"]))
    context.load_verify_locations(cadata=secret["ca.crt"].decode())
    _, writer = await asyncio.open_connection(
        "127.0.0.1", setup.ports["internal"], ssl=context, server_hostname="localhost", limit=4096
    )
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await writer.drain()
    return writer


class Frames:
    """Reads a scripted agent's socket: stream inits queued, closed streams remembered."""

    def __init__(self, ws: Any) -> None:
        self.inits: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: set[str] = set()
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: Any) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame.get("isClose"):
                self.closed.add(frame["requestID"])
            elif "isUpgrade" in frame:
                self.inits.put_nowait(frame)


async def push_to_non_readers(setup: Setup, total_mib: int) -> None:
    session, ws = await scripted_ws(setup, "bench-push")
    frames = Frames(ws)
    path = f"/api/proxy/{WP}/bench-push/default/bench-push/k8s/api/v1/pods?watch=true"
    data = base64.b64encode(b"p" * CHUNK).decode()
    pushed, streams, peak = 0, 0, 0.0
    base = rss_mib(setup.pid)
    started = time.monotonic()
    while pushed < total_mib * 2**20:
        writer = await non_reading_caller(setup, path)
        rid = (await asyncio.wait_for(frames.inits.get(), 30))["requestID"]
        await ws.send_str(json.dumps({"requestID": rid, "statusCode": 200, "headers": {}}))
        frame = json.dumps({"requestID": rid, "data": data})
        while rid not in frames.closed and pushed < total_mib * 2**20:
            await ws.send_str(frame)
            pushed += CHUNK
            if pushed % (64 * CHUNK) == 0:
                peak = max(peak, rss_mib(setup.pid))
        writer.transport.abort()
        streams += 1
    peak = max(peak, rss_mib(setup.pid))
    await asyncio.sleep(1)
    after = rss_mib(setup.pid)
    print(
        f"pushed {pushed / 2**20:,.0f} MiB to {streams} non-reading callers in "
        f"{time.monotonic() - started:.1f} s: gateway RSS {base:.0f} MiB before, "
        f"peak {peak:.0f} MiB (+{peak - base:.0f}), {after:.0f} MiB after"
    )
    frames.task.cancel()
    await ws.close()
    await session.close()


async def real_agent(setup: Setup, plane_id: str, crs: int) -> tuple[Agent, asyncio.Task[None]]:
    wp = setup.env[WORKFLOW_PLANE]
    config = AgentConfig(
        server_url=f"wss://127.0.0.1:{setup.ports['public']}",
        plane_id=plane_id,
        server_ca_file=setup.ca_file,
        kubeconfig=wp.kubeconfig,
        context=wp.context,
        secret_name=f"tls-{plane_id}",
    )
    agent = Agent(config)
    identity = await agent.ensure_identity()
    assert identity is not None
    for index in range(crs):
        setup.register(f"{plane_id}-{index}", plane_id, identity.ca.cert_pem)
    await asyncio.sleep(2)  # the gateway's watch has them
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.tunnel.connected.wait(), 30)
    return agent, task


async def get_latency(client: GatewayClient, plane_id: str, count: int = 300) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        answer = await client.proxy(
            "GET",
            plane_type=WP,
            plane_id=plane_id,
            cr_namespace="default",
            cr_name=f"{plane_id}-0",
            path="/api/v1/namespaces/default/configmaps",
        )
        samples.append(time.perf_counter() - started)
        assert answer.status == 200, answer.body[:200]
    return samples


async def watches_and_a_get(setup: Setup, client: GatewayClient, watches: int) -> None:
    crs = 8
    _, task = await real_agent(setup, "bench-watch", crs)
    idle = await get_latency(client, "bench-watch")
    print(
        f"plain GET, no watches:        p50 {pct(idle, 0.5):.1f} ms, p99 {pct(idle, 0.99):.1f} ms"
    )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client._ssl, limit=0))
    opened: list[aiohttp.ClientResponse] = []
    refused = 0
    for index in range(watches):
        url = client.proxy_url(
            WP,
            "bench-watch",
            "default",
            f"bench-watch-{index % crs}",
            "/api/v1/namespaces/default/configmaps",
        )
        response = await session.get(url + "?watch=true")
        if response.status == 200:
            opened.append(response)
        else:
            refused += 1
            response.release()
    busy = await get_latency(client, "bench-watch")
    print(
        f"plain GET, {watches} watches requested ({len(opened)} open, {refused} refused "
        f"429): p50 {pct(busy, 0.5):.1f} ms, p99 {pct(busy, 0.99):.1f} ms"
    )
    await flood_and_a_get(setup, client)
    for response in opened:
        response.close()
    await session.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def flood_and_a_get(setup: Setup, client: GatewayClient, seconds: float = 5.0) -> None:
    """Another plane's agent, in its own process, sends frames nobody waits for."""
    ca = generate_ca("bench-flood")
    setup.register("bench-flood", "bench-flood", ca.cert_pem)
    leaf = issue_certificate(ca, "bench-flood-agent")
    files = Path(tempfile.mkdtemp(dir=setup.tmp))
    (files / "c.crt").write_bytes(leaf.cert_pem)
    (files / "c.key").write_bytes(leaf.key_pem)
    url = f"wss://127.0.0.1:{setup.ports['public']}/ws?planeType={WP}&planeID=bench-flood"
    log_before = setup.log.stat().st_size
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--flood-child",
        url,
        str(files),
        str(setup.ca_file),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    await child.stdout.readline()  # "connected"
    samples: list[float] = []
    while child.returncode is None:
        samples += await get_latency(client, "bench-watch", 20)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), 0.001)
    sent = int((await child.stdout.read()).decode().strip() or 0)
    print(
        f"plain GET while another agent floods {sent / seconds:,.0f} frames/s: "
        f"p50 {pct(samples, 0.5):.1f} ms, p99 {pct(samples, 0.99):.1f} ms; gateway log grew "
        f"{setup.log.stat().st_size - log_before:,} bytes"
    )


async def flood_child(url: str, files: str, ca_file: str, seconds: float) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(Path(files) / "c.crt", Path(files) / "c.key")
    junk = json.dumps({"requestID": "nobody-waits", "statusCode": 200, "body": ""})
    sent = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # until the gateway's TLS trust has the new CA
            try:
                ws = await session.ws_connect(url, ssl=context)
                break
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.1)
        print("connected", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(100):
                await ws.send_str(junk)
            sent += 100
        await ws.close()
    print(sent, flush=True)


async def main() -> None:
    if sys.argv[1:2] == ["--flood-child"]:
        url, files, ca_file, seconds = sys.argv[2:6]
        await flood_child(url, files, ca_file, float(seconds))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--push-mib", type=int, default=1024)
    parser.add_argument("--watches", type=int, default=200)
    args = parser.parse_args()
    setup = Setup(Path(tempfile.mkdtemp(prefix="wp-bench-isolation-")))
    setup.start()
    try:
        client = await setup.connect_client()
        print(f"machine: {os.cpu_count()} cores; gateway pid {setup.pid}")
        await push_to_non_readers(setup, args.push_mib)
        await watches_and_a_get(setup, client, args.watches)
        await client.close()
    finally:
        setup.stop()


if __name__ == "__main__":
    asyncio.run(main())
