"""Runs tests: a real gateway, a real controller, and an agent behind ClusterWorkflowPlane
``default``, all on the session's two API servers. The workflow plane has Argo's Workflow
CRD (and ExternalSecret's) installed but, on purpose, no Argo controller: these tests need
phases and timestamps exactly as they write them (a finish while the controller is down, a
Workflow deleted on the plane, a name conflict), so they play Argo by patching a Workflow's
status. The runs on real Argo (kwok's simulated pods) are in ``tests/integration/argo``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.harness import (
    RunningAgent,
    RunningController,
    RunningGateway,
    agent_ca,
    agent_config,
    apply,
    controller_running,
    prepare_agent,
    start_agent,
    unique,
)
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

PLANE_CRDS = REPO / "deploy" / "workflow-plane-crds"
SECRET_STORE = "vault-backend"


@pytest.fixture(scope="session")
def plane_crds(workflow_plane: ApiServer) -> Path:
    kubeconfig, context = workflow_plane.kubeconfig, workflow_plane.context
    kubectl(kubeconfig, context, "apply", "--server-side", "-f", str(PLANE_CRDS))
    for name in ("workflows.argoproj.io", "externalsecrets.external-secrets.io"):
        kubectl(kubeconfig, context, "wait", "--for=condition=Established", "crd", name)
    return PLANE_CRDS


@dataclass
class DefaultPlane:
    plane_id: str
    agent: RunningAgent


@pytest.fixture
async def default_plane(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, plane_crds: Path
) -> AsyncIterator[DefaultPlane]:
    """ClusterWorkflowPlane ``default`` (with a secret store) trusting this test's agent."""
    plane_id = unique("runs")
    agent = await prepare_agent(agent_config(workflow_plane, gw, plane_id, unique("agent-tls")))
    ca = agent_ca(workflow_plane, agent.config.secret_name)
    apply(
        control_plane,
        {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": "ClusterWorkflowPlane",
            "metadata": {"name": "default"},
            "spec": {
                "planeID": plane_id,
                "clusterAgent": {"clientCA": {"value": ca}},
                "secretStoreRef": {"name": SECRET_STORE},
            },
        },
    )
    running = await start_agent(agent)
    try:
        yield DefaultPlane(plane_id, running)
    finally:
        await running.stop()


@pytest.fixture
async def controller(
    control_plane: ApiServer, gw: RunningGateway
) -> AsyncIterator[RunningController]:
    async with controller_running(control_plane, gw) as running:
        yield running
