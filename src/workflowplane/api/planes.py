"""Helpers every component needs about a plane CR: its identity and its client CA."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import (
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.resources.core_v1 import Secret

from workflowplane.api.constants import (
    ANNOTATION_CLIENT_CA_SHARED_WITH,
    CLUSTER_WORKFLOW_PLANE,
    DNS_SUBDOMAIN_MAX_LENGTH,
    DNS_SUBDOMAIN_PATTERN,
    GROUP,
    VERSION,
    WORKFLOW_PLANE,
    Reason,
)
from workflowplane.api.models import AnyPlane, ClusterWorkflowPlane, SecretKeyReference

WorkflowPlaneResource = create_namespaced_resource(
    GROUP, VERSION, WORKFLOW_PLANE, "workflowplanes", verbs=None
)
ClusterWorkflowPlaneResource = create_global_resource(
    GROUP, VERSION, CLUSTER_WORKFLOW_PLANE, "clusterworkflowplanes", verbs=None
)
ObservabilityPlaneResource = create_namespaced_resource(
    GROUP, VERSION, "ObservabilityPlane", "observabilityplanes", verbs=None
)
ClusterObservabilityPlaneResource = create_global_resource(
    GROUP, VERSION, "ClusterObservabilityPlane", "clusterobservabilityplanes", verbs=None
)
# The lightkube resource of each plane kind, for code that is handed a kind.
PLANE_RESOURCES: dict[str, Any] = {
    WORKFLOW_PLANE: WorkflowPlaneResource,
    CLUSTER_WORKFLOW_PLANE: ClusterWorkflowPlaneResource,
}


_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)


def is_object_name(text: str, max_length: int = DNS_SUBDOMAIN_MAX_LENGTH) -> bool:
    """Whether ``text`` is a Kubernetes object name (an RFC 1123 subdomain; a namespace: with
    ``max_length`` 63, dots aside). Names from a spec are checked with it before they go into a
    request path, where ``..`` segments would be resolved and ``?`` would start a query."""
    return len(text) <= max_length and _DNS_SUBDOMAIN.match(text) is not None


def is_namespace_name(text: str) -> bool:
    """Whether ``text`` is a namespace's name: an object name of at most 63, without dots."""
    return "." not in text and is_object_name(text, 63)


def cr_key_of(namespace: str | None, name: str) -> str:
    """``namespace/name``, or ``/name`` for a cluster-scoped CR: the authorization key."""
    return f"{namespace or ''}/{name}"


def cr_key(plane: AnyPlane) -> str:
    namespace = None if isinstance(plane, ClusterWorkflowPlane) else plane.metadata.namespace
    return cr_key_of(namespace, plane.metadata.name)


def _plane_id(plane_id: str | None, name: str) -> str:
    """The rule itself: spec.planeID, or the CR name when there is none (never written back)."""
    return plane_id or name


def effective_plane_id(plane: AnyPlane) -> str:
    """spec.planeID, or the CR name for a WorkflowPlane without one (never written back)."""
    return _plane_id(plane.spec.plane_id, plane.metadata.name)


def plane_id_of(raw: Mapping[str, Any]) -> str:
    """:func:`effective_plane_id` of a plane still in wire form (a watch event, a raw read)."""
    return _plane_id((raw.get("spec") or {}).get("planeID"), raw["metadata"]["name"])


@dataclass(frozen=True)
class SecretLocation:
    """Where a CR's client CA lives when it is not inline (namespace already defaulted).

    ``reader`` is the namespace of the WorkflowPlane that reads it (None for a
    ClusterWorkflowPlane, whose author is a cluster administrator).
    """

    namespace: str
    name: str
    key: str
    reader: str | None = field(default=None, compare=False)  # same Secret, whoever reads it

    @property
    def foreign(self) -> bool:
        """A namespaced CR reading another namespace's Secret: that needs the Secret's consent."""
        return self.reader is not None and self.reader != self.namespace

    def shared_with_reader(self, annotations: Mapping[str, str] | None) -> bool:
        """Whether the Secret consents to this reader: ``openchoreo.dev/client-ca-shared-with``
        lists the reader's namespace (comma-separated) or ``*``."""
        if not self.foreign:
            return True
        listed = (annotations or {}).get(ANNOTATION_CLIENT_CA_SHARED_WITH, "")
        names = {name.strip() for name in listed.split(",")}
        return "*" in names or self.reader in names

    def check_names(self) -> None:
        """ClientCAError unless the name and namespace are object names: they become segments
        of the read's path, and ``name: ../../victim/secrets/x`` read another namespace's
        Secret, past the consent check (which saw the CR's own namespace)."""
        if not (is_object_name(self.name) and is_namespace_name(self.namespace)):
            raise ClientCAError(
                Reason.CLIENT_CA_NOT_FOUND,
                "clientCA.secretKeyRef: name must be a Kubernetes object name and namespace "
                f"a namespace name (got {self.namespace[:63]!r}/{self.name[:253]!r})",
            )

    def unavailable(self) -> ClientCAError:
        """The one answer for a missing Secret, a missing key and a Secret that does not
        consent, so a tenant learns nothing about another namespace's Secrets."""
        if self.foreign:
            return ClientCAError(
                Reason.CLIENT_CA_NOT_FOUND,
                f"Secret {self.namespace}/{self.name} key {self.key!r} not found or not shared "
                f"with namespace {self.reader} (annotation {ANNOTATION_CLIENT_CA_SHARED_WITH})",
            )
        return ClientCAError(
            Reason.CLIENT_CA_NOT_FOUND, f"Secret {self.namespace}/{self.name} not found"
        )


def client_ca_location(plane: AnyPlane) -> SecretLocation | None:
    """The Secret key holding the client CA, or None when the CA is inline."""
    ref: SecretKeyReference | None = plane.spec.cluster_agent.client_ca.secret_key_ref
    if ref is None:
        return None
    return _location(ref.name, ref.key, ref.namespace, plane.metadata.namespace)


def client_ca_location_of(raw: Mapping[str, Any]) -> SecretLocation | None:
    """:func:`client_ca_location` of a plane still in wire form (a watch event, a raw read)."""
    client_ca = ((raw.get("spec") or {}).get("clusterAgent") or {}).get("clientCA") or {}
    ref = client_ca.get("secretKeyRef")
    if not ref:
        return None
    meta = raw.get("metadata") or {}
    return _location(
        ref.get("name", ""), ref.get("key", ""), ref.get("namespace"), meta.get("namespace")
    )


def _location(
    name: str, key: str, namespace: str | None, cr_namespace: str | None
) -> SecretLocation:
    """The rule itself: the reference's namespace, else the CR's; a cluster-scoped CR (no
    namespace of its own) must name one. The CR's namespace is the reader whose consent a
    foreign Secret must give."""
    if not (namespace or cr_namespace):
        raise ClientCAError(
            Reason.CLIENT_CA_NOT_FOUND,
            "clientCA.secretKeyRef.namespace is required on a cluster-scoped plane",
        )
    return SecretLocation(namespace or cr_namespace or "", name, key, cr_namespace or None)


class ClientCAError(Exception):
    """The client CA cannot be had; ``reason`` is the condition reason to report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def ca_from_secret_data(data: dict[str, str] | None, location: SecretLocation) -> bytes:
    """Decode a Secret's ``data`` entry for the CA key, or say precisely what is missing."""
    if location.foreign and (not data or location.key not in data):
        raise location.unavailable()
    if not data or location.key not in data:
        raise ClientCAError(
            Reason.CLIENT_CA_NOT_FOUND,
            f"key {location.key!r} not found in Secret {location.namespace}/{location.name}",
        )
    try:
        return base64.b64decode(data[location.key], validate=True)
    except ValueError as exc:
        raise ClientCAError(
            Reason.CLIENT_CA_INVALID,
            f"Secret {location.namespace}/{location.name} key {location.key!r} is not base64",
        ) from exc


async def read_client_ca(client: AsyncClient, plane: AnyPlane) -> bytes:
    """The CR's client CA as PEM bytes: the inline value, or the referenced Secret key."""
    inline = plane.spec.cluster_agent.client_ca.value
    if inline:  # an empty value counts as unset
        return inline.encode()
    location = client_ca_location(plane)
    assert location is not None
    location.check_names()
    try:
        secret = await client.get(Secret, location.name, namespace=location.namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            raise location.unavailable() from exc
        raise
    if not location.shared_with_reader(secret.metadata.annotations if secret.metadata else None):
        raise location.unavailable()
    return ca_from_secret_data(secret.data, location)
