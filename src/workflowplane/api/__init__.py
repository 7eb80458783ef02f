"""The openchoreo.dev API: plane kinds, their models, CRDs and shared helpers.

``planes``' names load lightkube: they are imported on first use, not with the package, so
that a process needing only ``api.consent`` or ``api.constants`` (the agent) does not load it.
"""

import importlib
from typing import TYPE_CHECKING

from workflowplane.api.constants import (
    AGENT_NAMESPACE,
    AGENT_SECRET_NAME,
    API_VERSION,
    CLUSTER_WORKFLOW_PLANE,
    FINALIZERS,
    GROUP,
    PLANE_TYPE,
    VERSION,
    WORKFLOW_PLANE,
    Condition,
    Reason,
)
from workflowplane.api.models import (
    AnyPlane,
    ClusterWorkflowPlane,
    InvalidManifest,
    WorkflowPlane,
    decode,
    decode_plane,
    to_builtins,
)

if TYPE_CHECKING:
    from workflowplane.api.planes import (
        PLANE_RESOURCES,
        ClientCAError,
        ClusterWorkflowPlaneResource,
        SecretLocation,
        WorkflowPlaneResource,
        ca_from_secret_data,
        client_ca_location,
        client_ca_location_of,
        cr_key,
        cr_key_of,
        effective_plane_id,
        plane_id_of,
        read_client_ca,
    )

__all__ = [
    "AGENT_NAMESPACE",
    "AGENT_SECRET_NAME",
    "API_VERSION",
    "CLUSTER_WORKFLOW_PLANE",
    "FINALIZERS",
    "GROUP",
    "PLANE_RESOURCES",
    "PLANE_TYPE",
    "VERSION",
    "WORKFLOW_PLANE",
    "AnyPlane",
    "ClientCAError",
    "ClusterWorkflowPlane",
    "ClusterWorkflowPlaneResource",
    "Condition",
    "InvalidManifest",
    "Reason",
    "SecretLocation",
    "WorkflowPlane",
    "WorkflowPlaneResource",
    "ca_from_secret_data",
    "client_ca_location",
    "client_ca_location_of",
    "cr_key",
    "cr_key_of",
    "decode",
    "decode_plane",
    "effective_plane_id",
    "plane_id_of",
    "read_client_ca",
    "to_builtins",
]


def __getattr__(name: str) -> object:
    planes = importlib.import_module("workflowplane.api.planes")  # lightkube: first use only
    try:
        return getattr(planes, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
