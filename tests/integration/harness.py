"""In-process gateways and agents wired to the session's real API servers, over real TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import Agent
from workflowplane.api import AGENT_NAMESPACE, PLANE_TYPE
from workflowplane.api.consent import parse_allow_list
from workflowplane.api.kube import load_config
from workflowplane.controller.health import ControllerHealth
from workflowplane.controller.runner import ControllerConfig, run_controller
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.server import Gateway
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol.gateway_client import GatewayClient, ProxyResponse
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import async_client, kubectl


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunningGateway:
    gateway: Gateway
    kube: AsyncClient
    client: GatewayClient
    server_ca_file: Path

    @property
    def public_url(self) -> str:
        return f"wss://127.0.0.1:{self.gateway.ports['public']}"

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.gateway.ports['internal']}"

    async def stop(self) -> None:
        await self.client.close()
        await self.gateway.stop()
        await self.kube.close()


async def start_gateway(control_plane: ApiServer, tmp: Path, **overrides: Any) -> RunningGateway:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "public_port": 0,
        "internal_port": 0,
        "health_port": 0,
        **overrides,
    }
    config = GatewayConfig(
        kubeconfig=control_plane.kubeconfig, context=control_plane.context, **settings
    )
    kube = AsyncClient(config=load_config(config.kubeconfig, config.context))
    gateway = Gateway(config, kube)
    await gateway.start()
    assert gateway.pki is not None
    ca_file = tmp / f"gateway-ca-{uuid.uuid4().hex[:6]}.crt"
    ca_file.write_bytes(gateway.pki.server_ca.cert_pem)
    client = await GatewayClient.from_secret(
        kube, f"https://127.0.0.1:{gateway.ports['internal']}", config.namespace
    )
    return RunningGateway(gateway, kube, client, ca_file)


async def proxied(
    gw: RunningGateway,
    plane_id: str,
    namespace: str,
    path: str,
    *,
    method: str = "GET",
    query: str = "",
    headers: dict[str, str] | None = None,
) -> ProxyResponse:
    """A request through ``gw`` for WorkflowPlane ``namespace/wp`` of ``plane_id``."""
    return await gw.client.proxy(
        method,
        plane_type=PLANE_TYPE,
        plane_id=plane_id,
        cr_namespace=namespace,
        cr_name="wp",
        path=path,
        query=query,
        headers=headers,
    )


def proxied_watch(
    gw: RunningGateway, plane_id: str, namespace: str, path: str
) -> AsyncIterator[bytes]:
    """A watch of ``path`` through ``gw`` for WorkflowPlane ``namespace/wp``: its lines."""
    return gw.client.proxy_stream(
        "GET",
        plane_type=PLANE_TYPE,
        plane_id=plane_id,
        cr_namespace=namespace,
        cr_name="wp",
        path=path,
        query="watch=true",
    )


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def agent_config(
    workflow_plane: ApiServer,
    gateway: RunningGateway,
    plane_id: str,
    secret_name: str,
    **overrides: Any,
) -> AgentConfig:
    base = AgentConfig(
        server_url=gateway.public_url,
        plane_id=plane_id,
        server_ca_file=gateway.server_ca_file,
        secret_name=secret_name,
        kubeconfig=workflow_plane.kubeconfig,
        context=workflow_plane.context,
        reconnect_initial_seconds=0.2,
        reconnect_max_seconds=2.0,
    )
    return replace(base, **overrides)


async def prepare_agent(config: AgentConfig) -> Agent:
    """An agent whose identity Secret exists (so its CA can be registered) but not started."""
    agent = Agent(config)
    await agent.ensure_identity()
    return agent


async def start_agent(agent: Agent | AgentConfig, *, wait: bool = True) -> RunningAgent:
    if not isinstance(agent, Agent):
        agent = await prepare_agent(agent)
    task = asyncio.create_task(agent.run())
    running = RunningAgent(agent, task)
    if wait:
        await asyncio.wait_for(agent.tunnel.connected.wait(), timeout=15)
    return running


def agent_ca(
    workflow_plane: ApiServer, secret_name: str, namespace: str = "openchoreo-workflow-plane"
) -> str:
    """The reference page's extraction: jsonpath ca.crt, base64 -d."""
    out = kubectl(
        workflow_plane.kubeconfig,
        workflow_plane.context,
        "get",
        "secret",
        secret_name,
        "-n",
        namespace,
        "-o",
        r"jsonpath={.data.ca\.crt}",
    ).stdout
    return base64.b64decode(out).decode()


def apply(server: ApiServer, manifest: dict[str, Any]) -> None:
    kubectl(server.kubeconfig, server.context, "apply", "-f", "-", input=json.dumps(manifest))


def workflow_plane_cr(
    name: str,
    namespace: str,
    plane_id: str,
    ca_pem: str | None = None,
    secret: tuple[str, str] | None = None,
) -> dict[str, Any]:
    client_ca: dict[str, Any] = (
        {"value": ca_pem}
        if ca_pem is not None
        else {"secretKeyRef": {"name": secret[0], "key": secret[1]}}
        if secret
        else {}
    )
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"planeID": plane_id, "clusterAgent": {"clientCA": client_ca}},
    }


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:  # noqa: ASYNC109
    """Poll an async or sync check until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        last = result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_gateway(
    control_plane: ApiServer, tmp: Path, **overrides: Any
) -> AsyncIterator[RunningGateway]:
    gw = await start_gateway(control_plane, tmp, **overrides)
    try:
        yield gw
    finally:
        await gw.stop()


async def registered_agent(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    prefix: str,
    name: str = "wp",
) -> tuple[str, Agent]:
    """A new planeID, an agent identity for it, and WorkflowPlane ``name`` trusting its CA
    inline (the agent is prepared, not started)."""
    plane_id = unique(prefix)
    agent = await prepare_agent(agent_config(workflow_plane, gw, plane_id, unique("agent-tls")))
    apply(
        control_plane,
        workflow_plane_cr(
            name, namespace, plane_id, ca_pem=agent_ca(workflow_plane, agent.config.secret_name)
        ),
    )
    return plane_id, agent


@dataclass
class RunningController:
    """A controller running in its own thread; ``thread_id`` tells its log records apart.

    ``health`` holds its metrics (``health.metrics.registry``) and its health listener's
    port on 127.0.0.1 (``health_url``); ``loop`` is its event loop."""

    thread_id: int = 0
    health: ControllerHealth = field(default_factory=ControllerHealth)
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health.port}"

    def sample(self, name: str, **labels: str) -> float:
        """A metric's current value (0 when the series does not exist yet)."""
        return self.health.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def controller_running(
    control_plane: ApiServer,
    gw: RunningGateway | Sequence[str],
    resync: float = 30.0,
    *,
    peering: str | None = None,
    priority: int = 0,
    health: ControllerHealth | None = None,
    gateway: Callable[[GatewayClient], Any] | None = None,
    disconnect_grace: float = 2.0,
) -> AsyncIterator[RunningController]:
    """The real (kopf) controller, planes and runs, until the block ends, in its own thread and
    event loop as a separate process would be: when kopf stops it cancels every task started
    in its loop while it ran, which here would include the in-process gateway's and agents'.

    ``gw`` is one in-process gateway or the internal URLs of several replicas; ``health``
    (default: default limits) is served on a free port; ``gateway`` may wrap the
    controller's gateway client (to stall or fail it); ``disconnect_grace`` is short by default:
    tests that stop agents wait for the disconnect."""
    stop, ready = threading.Event(), threading.Event()
    config = ControllerConfig(
        kubeconfig=control_plane.kubeconfig,
        context=control_plane.context,
        resync_seconds=resync,
        disconnect_grace_seconds=disconnect_grace,
        peering=peering,
        priority=priority,
        health_host="127.0.0.1",
        health_port=0,
    )
    running = RunningController(health=health or ControllerHealth())

    async def controller() -> None:
        running.thread_id = threading.get_ident()
        running.loop = asyncio.get_running_loop()
        kube = AsyncClient(config=load_config(control_plane.kubeconfig, control_plane.context))
        try:
            urls = gw.internal_url if isinstance(gw, RunningGateway) else list(gw)
            client = await GatewayClient.from_secret(kube, urls)
        finally:
            await kube.close()
        api = gateway(client) if gateway is not None else client
        try:
            await run_controller(
                config, api, stop_flag=stop, ready_flag=ready, health=running.health
            )
        finally:
            await client.close()

    thread = asyncio.create_task(asyncio.to_thread(asyncio.run, controller()))
    try:
        if not await asyncio.to_thread(ready.wait, 30):
            raise AssertionError("the controller did not become ready within 30s")
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(thread, 30)


async def write_agent_identity(workflow_plane: ApiServer, secret: str, *allow: str) -> bytes:
    """The agent's Secret as its owner would have it issued: a CA, and a leaf carrying the
    allow-list as URI SANs. Returns the CA (what tenants register)."""
    ca = generate_ca("plane-owner-ca")
    leaf = issue_certificate(ca, "cluster-agent", uris=parse_allow_list(allow).uris())
    data = {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem, "tls.crt": leaf.cert_pem}
    data["tls.key"] = leaf.key_pem
    client = async_client(workflow_plane.kubeconfig, workflow_plane.context)
    try:
        with contextlib.suppress(ApiError):
            await client.create(Namespace(metadata=ObjectMeta(name=AGENT_NAMESPACE)))
        await client.create(
            Secret(
                metadata=ObjectMeta(name=secret, namespace=AGENT_NAMESPACE),
                data={k: base64.b64encode(v).decode() for k, v in data.items()},
            )
        )
    finally:
        await client.close()
    return ca.cert_pem
