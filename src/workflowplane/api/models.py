"""Typed models of the plane kinds: the one place that defines their shape in Python.

The CRDs under ``deploy/crds`` are what the API server enforces; these models enforce the same
rules (tests/unit/api proves both accept and reject the same manifests, field for field), so
components can rely on a decoded object being valid. Field names follow the wire (camelCase).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from workflowplane.api.constants import (
    API_VERSION,
    CLUSTER_OBSERVABILITY_PLANE,
    CLUSTER_WORKFLOW_PLANE,
    PLANE_ID_MAX_LENGTH,
    PLANE_ID_PATTERN,
    WORKFLOW_PLANE,
)

PlaneID = Annotated[str, msgspec.Meta(max_length=PLANE_ID_MAX_LENGTH, pattern=PLANE_ID_PATTERN)]
DNSLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=PLANE_ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
OptionalNamespace = Annotated[str, msgspec.Meta(max_length=63)]
ObservabilityKind = Literal["ObservabilityPlane", "ClusterObservabilityPlane"]


class _Spec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Spec parts reject unknown fields, as ``kubectl apply`` (strict validation) does."""


class SecretKeyReference(_Spec):
    name: Name
    key: Key
    # empty: the CR's namespace, as when absent (OpenChoreo's Go field is omitempty)
    namespace: OptionalNamespace | None = None


class ValueFrom(_Spec, rename={"secret_key_ref": "secretKeyRef"}):
    secret_key_ref: SecretKeyReference | None = None
    value: str | None = None  # empty counts as unset, as in OpenChoreo (omitempty)

    def __post_init__(self) -> None:
        if bool(self.value) == (self.secret_key_ref is not None):
            raise ValueError(
                "clientCA must set exactly one of value or secretKeyRef "
                "(an empty value counts as unset)"
            )


class ClusterAgentConfig(_Spec, rename={"client_ca": "clientCA"}):
    client_ca: ValueFrom


class ClusterScopedValueFrom(ValueFrom, rename={"secret_key_ref": "secretKeyRef"}):
    """A cluster-scoped CR has no namespace to default a Secret's namespace from."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.secret_key_ref is not None and not self.secret_key_ref.namespace:
            raise ValueError(
                "clientCA.secretKeyRef.namespace is required (not empty) on a ClusterWorkflowPlane"
            )


class ClusterScopedAgentConfig(_Spec, rename={"client_ca": "clientCA"}):
    client_ca: ClusterScopedValueFrom


class SecretStoreRef(_Spec):
    name: Name


class ObservabilityPlaneRef(_Spec):
    name: DNSLabel
    kind: ObservabilityKind = "ObservabilityPlane"


class ClusterObservabilityPlaneRef(_Spec):
    name: DNSLabel
    kind: ObservabilityKind = "ClusterObservabilityPlane"

    def __post_init__(self) -> None:
        if self.kind != CLUSTER_OBSERVABILITY_PLANE:
            raise ValueError(
                "a ClusterWorkflowPlane may only reference a ClusterObservabilityPlane"
            )


_SPEC_NAMES = {
    "plane_id": "planeID",
    "cluster_agent": "clusterAgent",
    "secret_store_ref": "secretStoreRef",
    "observability_plane_ref": "observabilityPlaneRef",
}


class WorkflowPlaneSpec(_Spec, rename=_SPEC_NAMES):
    cluster_agent: ClusterAgentConfig
    plane_id: PlaneID | None = None
    secret_store_ref: SecretStoreRef | None = None
    observability_plane_ref: ObservabilityPlaneRef | None = None


class ClusterWorkflowPlaneSpec(_Spec, rename=_SPEC_NAMES):
    plane_id: PlaneID
    cluster_agent: ClusterScopedAgentConfig
    secret_store_ref: SecretStoreRef | None = None
    observability_plane_ref: ClusterObservabilityPlaneRef | None = None


class Condition(msgspec.Struct, rename="camel", omit_defaults=True):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: dt.datetime
    observed_generation: int | None = None


class AgentConnectionStatus(msgspec.Struct, rename="camel", omit_defaults=True):
    connected: bool = False
    connected_agents: int = 0
    last_connected_time: dt.datetime | None = None
    last_disconnected_time: dt.datetime | None = None
    last_heartbeat_time: dt.datetime | None = None
    message: str | None = None


class PlaneStatus(msgspec.Struct, rename="camel", omit_defaults=True):
    observed_generation: int | None = None
    conditions: list[Condition] = msgspec.field(default_factory=list)
    agent_connection: AgentConnectionStatus | None = None


class ObjectMeta(msgspec.Struct, rename="camel", omit_defaults=True):
    """The parts of metav1.ObjectMeta the components read; everything else is ignored."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    finalizers: list[str] = msgspec.field(default_factory=list)
    deletion_timestamp: dt.datetime | None = None


class WorkflowPlane(msgspec.Struct, rename="camel", omit_defaults=True):
    metadata: ObjectMeta
    spec: WorkflowPlaneSpec
    api_version: str = API_VERSION
    kind: Literal["WorkflowPlane"] = WORKFLOW_PLANE
    status: PlaneStatus | None = None


class ClusterWorkflowPlane(msgspec.Struct, rename="camel", omit_defaults=True):
    metadata: ObjectMeta
    spec: ClusterWorkflowPlaneSpec
    api_version: str = API_VERSION
    kind: Literal["ClusterWorkflowPlane"] = CLUSTER_WORKFLOW_PLANE
    status: PlaneStatus | None = None


AnyPlane = WorkflowPlane | ClusterWorkflowPlane
T = TypeVar("T")


class InvalidManifest(ValueError):
    """A manifest does not match the API; the message names the field (``$.spec...``)."""


def decode(data: Any, kind: type[T]) -> T:
    """Convert a parsed object (dict from the API or YAML) into a model, or say why not."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidManifest(str(exc)) from exc


def decode_plane(data: dict[str, Any]) -> AnyPlane:
    """A WorkflowPlane or ClusterWorkflowPlane, chosen by its ``kind``."""
    kind = data.get("kind")
    if kind == WORKFLOW_PLANE:
        return decode(data, WorkflowPlane)
    if kind == CLUSTER_WORKFLOW_PLANE:
        return decode(data, ClusterWorkflowPlane)
    raise InvalidManifest(f"Expected kind WorkflowPlane or ClusterWorkflowPlane, got {kind!r}")


def to_builtins(obj: Any) -> Any:
    """A model as plain JSON-ready data (datetimes as RFC 3339 strings)."""
    return msgspec.to_builtins(obj)
