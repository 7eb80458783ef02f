"""Gateway replicas as separate ``cluster-gateway`` processes (so kill -9 is a real kill), the
callers' client over all of them, and a recorder of what a plane's CR says while they die."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from lightkube import AsyncClient
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event

from tests.integration.harness import eventually
from workflowplane.api import PLANE_TYPE
from workflowplane.api.planes import ClusterWorkflowPlaneResource, WorkflowPlaneResource
from workflowplane.protocol.agent_patience import DEFAULT_PATIENCE, AgentPatience
from workflowplane.protocol.gateway_client import GATEWAY_NAMESPACE, GatewayClient
from workflowplane.protocol.replicas import lease_name
from workflowplane.testenv import ApiServer, free_port

READY_SECONDS = 90.0  # a process start on a busy 2-core machine (imports, PKI, cache sync)
PORT_ATTEMPTS = 3  # a first start whose ports were taken meanwhile: chosen again
PORT_TAKEN = "address already in use"
# The chart's terminationGracePeriodSeconds is drainSeconds + 10: the kubelet's SIGKILL after.
TERMINATION_GRACE_SECONDS = 10.0


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class GatewayProcess:
    """One replica; its ports stay the same across restarts (a pod behind its address)."""

    control_plane: ApiServer
    name: str
    log: Path
    public_port: int = field(default_factory=free_port)
    internal_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    drain_seconds: float = 5.0
    process: asyncio.subprocess.Process | None = None
    started: bool = False  # once ready, its ports are its own (a pod's address)

    @property
    def public_url(self) -> str:
        return f"wss://127.0.0.1:{self.public_port}/ws"

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.internal_port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "workflowplane.gateway",
            f"--kubeconfig={self.control_plane.kubeconfig}",
            f"--context={self.control_plane.context}",
            "--host=127.0.0.1",
            f"--public-port={self.public_port}",
            f"--internal-port={self.internal_port}",
            f"--health-port={self.health_port}",
            f"--replica-name={self.name}",
            f"--drain-seconds={self.drain_seconds}",
        ]

    async def start(self, kube: AsyncClient) -> None:
        """Start the process and wait until it is ready and in the Lease directory. On its
        first start only, ports another process took since ``free_port`` chose them (an
        outgoing connection's ephemeral port can) are chosen again."""
        if self.started:
            await self._start(kube)
            return
        for _ in range(PORT_ATTEMPTS - 1):
            if not await self._exits_on_a_taken_port(kube):
                return
            self.public_port, self.internal_port, self.health_port = (
                free_port(),
                free_port(),
                free_port(),
            )
        await self._start(kube)

    async def _exits_on_a_taken_port(self, kube: AsyncClient) -> bool:
        try:
            await self._start(kube)
        except AssertionError:
            if PORT_TAKEN in tail(self.log):
                return True
            raise
        return False

    async def _start(self, kube: AsyncClient) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv(), stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        try:
            await eventually(self._ready, timeout=READY_SECONDS, interval=0.2)
            await eventually(lambda: lease_present(kube, self.name), timeout=READY_SECONDS)
        except AssertionError as exc:
            raise AssertionError(
                f"replica {self.name} not ready: {exc}\n{tail(self.log)}"
            ) from None
        self.started = True

    async def _ready(self) -> bool:
        if self.process is None or self.process.returncode is not None:
            raise AssertionError(f"replica {self.name} exited:\n{tail(self.log)}")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.health_port}/readyz") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def kill(self) -> None:
        """kill -9: no drain, no Lease deleted, connections cut."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        """SIGTERM (the drain) and its exit code, within the pod's termination grace."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        grace = self.drain_seconds + TERMINATION_GRACE_SECONDS
        try:
            return await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            raise AssertionError(
                f"replica {self.name} still running {grace:.0f}s after SIGTERM (a pod would be "
                f"killed):\n{tail(self.log)}"
            ) from None

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def lease_present(kube: AsyncClient, replica: str) -> bool:
    leases = [lease async for lease in kube.list(Lease, namespace=GATEWAY_NAMESPACE)]
    return lease_name(replica) in {lease.metadata.name for lease in leases if lease.metadata}


@dataclass
class Fleet:
    """Replicas of one gateway on the session's control plane."""

    control_plane: ApiServer
    kube: AsyncClient
    replicas: list[GatewayProcess]

    @property
    def internal_urls(self) -> list[str]:
        return [r.internal_url for r in self.replicas]

    @property
    def public_urls(self) -> str:
        return ",".join(r.public_url for r in self.replicas)

    async def client(self, patience: AgentPatience = DEFAULT_PATIENCE) -> GatewayClient:
        """A caller's client given every replica (as the controller and CLI are)."""
        return await GatewayClient.from_secret(
            self.kube, self.internal_urls, GATEWAY_NAMESPACE, patience
        )

    def serving(self, port: int) -> GatewayProcess:
        """The replica whose public port is ``port``."""
        return next(r for r in self.replicas if r.public_port == port)


async def plane_connected(client: GatewayClient, plane_id: str, namespace: str, name: str) -> bool:
    """Whether any replica the client reaches holds an agent of WorkflowPlane ``name``."""
    status = await client.plane_status(PLANE_TYPE, plane_id, namespace=namespace, name=name)
    return status.get("connected") is True


@contextlib.asynccontextmanager
async def fleet_of(
    control_plane: ApiServer, kube: AsyncClient, tmp: Path, prefix: str, count: int
) -> AsyncIterator[Fleet]:
    """``count`` replicas, started one after the other (the first creates the PKI)."""
    replicas = [
        GatewayProcess(control_plane, f"{prefix}-{i}", tmp / f"{prefix}-{i}.log")
        for i in range(count)
    ]
    try:
        for replica in replicas:
            await replica.start(kube)
        yield Fleet(control_plane, kube, replicas)
    finally:
        for replica in replicas:
            await replica.stop()


@dataclass
class StatusRecorder:
    """Every ``(connected, connectedAgents)`` of a plane CR's ``status.agentConnection``,
    read over and over while the test runs (from when it first shows its agents connected)."""

    kube: AsyncClient
    name: str
    namespace: str | None  # None: ClusterWorkflowPlane ``name``
    seen: list[tuple[Any, Any]] = field(default_factory=list)
    reads: int = 0

    async def current(self) -> tuple[Any, Any]:
        if self.namespace is None:
            obj = await self.kube.get(ClusterWorkflowPlaneResource, self.name)
        else:
            obj = await self.kube.get(WorkflowPlaneResource, self.name, namespace=self.namespace)
        status = (obj.get("status") or {}).get("agentConnection") or {}
        return status.get("connected"), status.get("connectedAgents")

    async def run(self, agents: int) -> None:
        await eventually(lambda: self._is(agents), timeout=60)
        while True:
            self.seen.append(await self.current())
            self.reads += 1
            await asyncio.sleep(0.05)

    async def _is(self, agents: int) -> bool:
        return await self.current() == (True, agents)


@contextlib.asynccontextmanager
async def recording(recorder: StatusRecorder, agents: int) -> AsyncIterator[StatusRecorder]:
    """The recorder running for the block (it has seen the agents connected when it starts)."""
    task = asyncio.create_task(recorder.run(agents))
    try:
        await eventually(lambda: recorder.reads > 0 or task.done(), timeout=90)
        if task.done():
            task.result()
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def warnings_for(
    kube: AsyncClient, name: str, namespace: str, *, besides: Collection[str] = ()
) -> list[str]:
    """Reasons of the Warning events about object ``name`` in ``namespace``, leaving out the
    events named in ``besides`` (taken before the test by :func:`warning_events`: an object
    shared with earlier tests, such as the ClusterWorkflowPlane ``default``, has its own)."""
    return [
        f"{event.reason}: {event.message}"
        async for event in _warnings(kube, name, namespace)
        if (event.metadata.name if event.metadata else None) not in besides
    ]


async def warning_events(kube: AsyncClient, name: str, namespace: str) -> set[str]:
    """The names of the Warning events about object ``name`` there now."""
    return {
        event.metadata.name
        async for event in _warnings(kube, name, namespace)
        if event.metadata and event.metadata.name
    }


async def _warnings(kube: AsyncClient, name: str, namespace: str) -> AsyncIterator[Event]:
    async for event in kube.list(Event, namespace=namespace):
        if event.type == "Warning" and event.involvedObject.name == name:
            yield event
