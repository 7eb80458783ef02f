"""Which plane CRs exist, their planeIDs and the Secrets they read their CA from.

Kept from the plane watch events so that triggers arriving from elsewhere (a gateway
connection event names a planeID; a Secret event names a Secret) can find the CRs they
concern without listing anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workflowplane.api import (
    WORKFLOW_PLANE,
    ClientCAError,
    client_ca_location_of,
    cr_key_of,
    plane_id_of,
)


@dataclass(frozen=True)
class PlaneRef:
    """One plane CR: the work queue's key."""

    kind: str
    namespace: str | None
    name: str

    @classmethod
    def of(cls, kind: str, namespace: str | None, name: str) -> PlaneRef:
        """A ref whose namespace is None for the cluster-scoped kind, whatever the event said."""
        return cls(kind, namespace if kind == WORKFLOW_PLANE else None, name)

    @property
    def key(self) -> str:
        return cr_key_of(self.namespace, self.name)


@dataclass
class PlaneDirectory:
    plane_ids: dict[PlaneRef, str] = field(default_factory=dict)
    secrets: dict[PlaneRef, tuple[str, str]] = field(default_factory=dict)

    def remember(self, ref: PlaneRef, body: Mapping[str, Any]) -> None:
        """Note the planeID and CA Secret of a CR from its current body."""
        self.plane_ids[ref] = plane_id_of(body)
        try:
            location = client_ca_location_of(body)
        except ClientCAError:  # a cluster-scoped CR without the Secret's namespace
            location = None
        if location is None:
            self.secrets.pop(ref, None)
        else:
            self.secrets[ref] = (location.namespace, location.name)

    def forget(self, ref: PlaneRef) -> None:
        self.plane_ids.pop(ref, None)
        self.secrets.pop(ref, None)

    def by_plane_id(self, plane_id: str) -> list[PlaneRef]:
        return [ref for ref, known in self.plane_ids.items() if known == plane_id]

    def by_secret(self, namespace: str, name: str) -> list[PlaneRef]:
        return [ref for ref, known in self.secrets.items() if known == (namespace, name)]
