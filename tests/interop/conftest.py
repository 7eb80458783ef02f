"""The interop matrix: every test runs once per pairing of an agent and a gateway.

A pairing is (agent kind, gateway kind), each ``go`` (OpenChoreo's binaries, built from the peer's
source) or ``ours``. Agents are started with OpenChoreo's chart command line and run on what its
cert-manager Secret holds. Adding a pairing is adding it to ``PAIRINGS`` (and, for a new gateway
kind, its fixture to ``GATEWAY_FIXTURES``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.integration.harness import apply, eventually, unique, workflow_plane_cr
from tests.interop.peers import (
    AgentProcess,
    GatewayPKI,
    GoGateway,
    InternalAPI,
    OurGateway,
    health_port_lock,
    tail,
)
from workflowplane.testenv import ApiServer
from workflowplane.testenv import peer as peer_build
from workflowplane.testenv.peer import PeerBinaries
from workflowplane.testenv.tools import kubectl


@dataclass(frozen=True)
class Pairing:
    agent: str
    gateway: str

    @property
    def id(self) -> str:
        return f"{self.agent}-agent-to-{self.gateway}-gateway"


PAIRINGS = [
    Pairing("go", "go"),
    Pairing("ours", "go"),
    Pairing("go", "ours"),
    Pairing("ours", "ours"),
]
GATEWAY_FIXTURES = {"go": "go_gateway", "ours": "our_gateway"}


class GatewayUnderTest(Protocol):
    public_url: str
    internal_url: str


@dataclass
class Plane:
    plane_id: str
    cr: tuple[str, str]  # (namespace or "" for a ClusterWorkflowPlane, name)
    agent: AgentProcess


@dataclass
class Pair:
    """One pairing's gateway, its internal API, and the agents a test starts."""

    pairing: Pairing
    gateway: Any
    api: InternalAPI
    binaries: PeerBinaries
    server_ca: Path
    workflow_plane: ApiServer
    control_plane: ApiServer
    workdir: Path
    agents: list[AgentProcess] = field(default_factory=list)
    cluster_crs: list[str] = field(default_factory=list)

    def agent(self, plane_id: str, *, kubeconfig: Path | None = None, **kw: Any) -> AgentProcess:
        made = AgentProcess(
            kind=self.pairing.agent,
            binaries=self.binaries,
            gateway_url=self.gateway.public_url,
            server_ca=self.server_ca,
            plane_id=plane_id,
            kubeconfig=kubeconfig or self.workflow_plane.kubeconfig,
            directory=self.workdir / unique("agent"),
            **kw,
        )
        self.agents.append(made)
        return made

    async def plane(
        self, namespace: str, *, cluster: bool = False, wait: bool = True, **kw: Any
    ) -> Plane:
        """A new planeID, an agent for it, and a plane CR trusting the agent's leaf."""
        plane_id = unique("p")
        agent = self.agent(plane_id, **kw)
        if cluster:
            cr = ("", unique("cwp"))
            apply(self.control_plane, cluster_workflow_plane_cr(cr[1], plane_id, agent.ca_pem))
            self.cluster_crs.append(cr[1])
        else:
            cr = (namespace, "wp")
            apply(self.control_plane, workflow_plane_cr("wp", namespace, plane_id, agent.ca_pem))
        agent.start()
        plane = Plane(plane_id, cr, agent)
        if wait:
            await self.wait_connected(plane)
        return plane

    async def wait_connected(self, plane: Plane, timeout: float = 30) -> None:  # noqa: ASYNC109
        async def connected() -> bool:
            return await self.api.connected(plane.plane_id, plane.cr)

        try:
            await eventually(connected, timeout=timeout, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{tail(plane.agent.log)}") from None

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        for name in self.cluster_crs:
            kubectl(
                self.control_plane.kubeconfig,
                self.control_plane.context,
                "delete",
                "clusterworkflowplane",
                name,
                "--wait=false",
                check=False,
            )


def cluster_workflow_plane_cr(name: str, plane_id: str, ca_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "ClusterWorkflowPlane",
        "metadata": {"name": name},
        "spec": {"planeID": plane_id, "clusterAgent": {"clientCA": {"value": ca_pem}}},
    }


@contextlib.contextmanager
def uncaptured(request: pytest.FixtureRequest) -> Iterator[None]:
    """Build progress straight to the terminal (a first build takes minutes)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        yield


@pytest.fixture(scope="session")
def peer_binaries(request: pytest.FixtureRequest) -> PeerBinaries:
    """OpenChoreo's agent and gateway, built once per peer source (minutes the first time)."""
    if not (peer_build.source_dir() / "go.mod").is_file():
        pytest.skip(f"OpenChoreo's peer source is not at {peer_build.source_dir()}")
    with uncaptured(request):
        return peer_build.ensure()


@pytest.fixture(scope="session")
def gateway_pki(tmp_path_factory: pytest.TempPathFactory) -> GatewayPKI:
    return GatewayPKI(tmp_path_factory.mktemp("gateway-pki"))


@pytest.fixture(scope="session")
def go_gateway(
    peer_binaries: PeerBinaries,
    control_plane: ApiServer,
    crds: Path,
    gateway_pki: GatewayPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GoGateway]:
    """One OpenChoreo gateway for the session (its health port is machine-wide: locked)."""
    log = tmp_path_factory.mktemp("go-gateway") / "gateway.log"
    with health_port_lock():
        gateway = GoGateway(control_plane, gateway_pki, log, binaries=peer_binaries)
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="session")
def our_gateway(
    control_plane: ApiServer,
    crds: Path,
    gateway_pki: GatewayPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OurGateway]:
    """Our gateway for the session, started with OpenChoreo's chart command line."""
    log = tmp_path_factory.mktemp("our-gateway") / "gateway.log"
    gateway = OurGateway(control_plane, gateway_pki, log)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(params=PAIRINGS, ids=lambda pairing: pairing.id)
async def pair(
    request: pytest.FixtureRequest,
    peer_binaries: PeerBinaries,
    gateway_pki: GatewayPKI,
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    tmp_path: Path,
) -> AsyncIterator[Pair]:
    pairing: Pairing = request.param
    gateway = request.getfixturevalue(GATEWAY_FIXTURES[pairing.gateway])
    api = InternalAPI(gateway.internal_url, gateway_pki.caller_ssl())
    made = Pair(
        pairing,
        gateway,
        api,
        peer_binaries,
        gateway_pki.file("server-ca.crt"),
        workflow_plane,
        control_plane,
        tmp_path,
    )
    try:
        yield made
    finally:
        made.close()
        await api.close()
