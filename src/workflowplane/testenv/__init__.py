"""Real Kubernetes API servers for tests and the local environment (envtest-style)."""

from workflowplane.testenv.apiserver import ApiServer, StartError, free_port
from workflowplane.testenv.assets import Assets, AssetsError
from workflowplane.testenv.environment import (
    CONTROL_PLANE,
    WORKFLOW_PLANE,
    Environment,
    ServerInfo,
    StateError,
    check_root,
    read_state,
    stop_detached,
)

__all__ = [
    "CONTROL_PLANE",
    "WORKFLOW_PLANE",
    "ApiServer",
    "Assets",
    "AssetsError",
    "Environment",
    "ServerInfo",
    "StartError",
    "StateError",
    "check_root",
    "free_port",
    "read_state",
    "stop_detached",
]
