"""Fixtures shared by every test tier: real API servers are started only when asked for."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from workflowplane.testenv import CONTROL_PLANE, WORKFLOW_PLANE, ApiServer, Environment
from workflowplane.testenv.tools import kubectl

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "deploy" / "crds"


@pytest.fixture(scope="session")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """A control plane and a workflow plane API server for the whole session."""
    env = Environment(tmp_path_factory.mktemp("testenv"), [CONTROL_PLANE, WORKFLOW_PLANE])
    env.start()
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="session")
def control_plane(environment: Environment) -> ApiServer:
    return environment[CONTROL_PLANE]


@pytest.fixture(scope="session")
def workflow_plane(environment: Environment) -> ApiServer:
    return environment[WORKFLOW_PLANE]


@pytest.fixture(scope="session")
def crds(control_plane: ApiServer) -> Path:
    """The project's CRDs installed (and established) in the control plane."""
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "apply",
        "--server-side",
        "-f",
        str(CRD_DIR),
    )
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "--all",
    )
    return CRD_DIR


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_namespace() -> Callable[[ApiServer, str], str]:
    """Create a fresh namespace on a server; returns its name."""

    def create(server: ApiServer, prefix: str = "t") -> str:
        name = _unique(prefix)
        kubectl(server.kubeconfig, server.context, "create", "namespace", name)
        return name

    return create


@pytest.fixture
def namespace(control_plane: ApiServer, make_namespace: Callable[[ApiServer, str], str]) -> str:
    """A fresh namespace in the control plane."""
    return make_namespace(control_plane, "t")
