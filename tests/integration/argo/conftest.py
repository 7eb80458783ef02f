"""Real Argo: a workflow plane of its own running Argo's workflow-controller, kube-scheduler,
the garbage collector (kube-controller-manager), kwok and External Secrets (built from their Go
modules once, cached), for the whole session, with a fake-provider ClusterSecretStore holding
Git credentials.

Its own API server, not the session's ``workflow_plane``: the runs tests play Argo there by
patching Workflow statuses, which a real controller would overwrite. The binaries are built
after collection, outside any test's timeout and with their progress shown, only when a test
here is selected; without Go these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import (
    RunningGateway,
    agent_ca,
    agent_config,
    apply,
    prepare_agent,
    start_agent,
    unique,
)
from tests.integration.runs.conftest import controller
from workflowplane.testenv import ApiServer, Environment
from workflowplane.testenv import plane_systems as systems
from workflowplane.testenv.gobuild import BuildError
from workflowplane.testenv.plane_runtime import PlaneRuntime, fake_secret_store
from workflowplane.testenv.tools import kubectl

__all__ = ["controller"]

HERE = Path(__file__).resolve().parent
SECRET_STORE = "fake-store"
GIT_CREDENTIALS = {"username": "git", "password": "s3cret"}
NO_GO = (
    "Go is not installed: Argo's workflow-controller, kube-scheduler, kube-controller-manager, "
    "kwok and External Secrets are built from their Go modules"
)
_build_error: list[BuildError] = []


def _ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).parents


def pytest_collection_finish(session: pytest.Session) -> None:
    ours = [item for item in session.items if _ours(item)]
    if not ours:
        return
    if not systems.missing():
        return
    if shutil.which("go") is None:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=NO_GO))
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        try:
            systems.ensure()
        except BuildError as exc:
            _build_error.append(exc)


@pytest.fixture(scope="session")
def plane_binaries() -> systems.PlaneBinaries:
    if _build_error:
        raise _build_error[0]
    return systems.ensure()


@dataclass
class ArgoPlane:
    server: ApiServer
    runtime: PlaneRuntime

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        server = self.server
        return kubectl(server.kubeconfig, server.context, *args, input=input, check=check).stdout


@pytest.fixture(scope="session")
def argo_plane(
    tmp_path_factory: pytest.TempPathFactory, plane_binaries: systems.PlaneBinaries
) -> Iterator[ArgoPlane]:
    env = Environment(tmp_path_factory.mktemp("argo-plane"), ["argo-plane"])
    env.start()
    runtime = PlaneRuntime.for_server(env["argo-plane"], plane_binaries)
    try:
        runtime.start()
        plane = ArgoPlane(env["argo-plane"], runtime)
        store = fake_secret_store(SECRET_STORE, {"git/app": json.dumps(GIT_CREDENTIALS)})
        plane.kubectl("apply", "-f", "-", input=json.dumps(store))
        yield plane
    finally:
        runtime.stop()
        env.stop()


@pytest.fixture
async def argo_cluster_plane(
    control_plane: ApiServer, argo_plane: ArgoPlane, gw: RunningGateway
) -> AsyncIterator[str]:
    """A ClusterWorkflowPlane of its own (name = planeID) trusting an agent in the Argo plane."""
    name = unique("argo")
    agent = await prepare_agent(agent_config(argo_plane.server, gw, name, unique("agent-tls")))
    apply(
        control_plane,
        {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": "ClusterWorkflowPlane",
            "metadata": {"name": name},
            "spec": {
                "planeID": name,
                "clusterAgent": {
                    "clientCA": {"value": agent_ca(argo_plane.server, agent.config.secret_name)}
                },
                "secretStoreRef": {"name": SECRET_STORE},
            },
        },
    )
    running = await start_agent(agent)
    try:
        yield name
    finally:
        await running.stop()
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "delete",
            "clusterworkflowplane",
            name,
            "--wait=false",
        )
