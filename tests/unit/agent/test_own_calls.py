"""The agent's own API calls (its Secret, its consent ConfigMap and the watch of it) do not
queue behind what the tunnel carries: the gateway's watches may hold every connection of the
upstream's stream pool for as long as they like, and the consent watch, restarted (the API
server ends watches every half hour or so), waited for a slot without end: a revocation by
the plane's owner was never heard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import Agent

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = b'{"type":"ADDED","object":{"metadata":{"name":"consent"},"data":{}}}\n'


async def _api_server_of_endless_watches(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Every request a watch that stays open; the consent ConfigMap's gets its object."""
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(HEAD)
    if b"configmaps" in head:
        writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
    await writer.drain()
    with contextlib.suppress(ConnectionError):
        await reader.read()  # until the agent hangs up


@contextlib.asynccontextmanager
async def _agent(tmp_path: Path, streams: int) -> AsyncIterator[Agent]:
    server = await asyncio.start_server(_api_server_of_endless_watches, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]\n'
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    config = AgentConfig(
        server_url="wss://gw/ws",
        plane_id="p",
        kubeconfig=tmp_path / "kubeconfig",
        max_concurrent_streams=streams,
    )
    agent = Agent(config)
    try:
        yield agent
    finally:
        await agent.upstream.close()
        await agent.own_upstream.close()
        server.close()


async def test_the_consent_watch_starts_while_the_tunnels_watches_fill_the_pool(
    tmp_path: Path,
) -> None:
    async with _agent(tmp_path, streams=2) as agent:
        held = [agent.upstream.stream("GET", "/api/v1/pods", "watch=true", None) for _ in range(2)]
        for watch in held:  # the gateway's watches: every connection of the stream pool
            await anext(watch)
        kube = agent._kube()
        async with asyncio.timeout(10):
            events = kube.watch("/api/v1/namespaces/ns/configmaps", "consent")
            kind, item = await anext(events)
        assert kind == "ADDED" and item["metadata"]["name"] == "consent"
        await events.aclose()
        for watch in held:
            await watch.aclose()
