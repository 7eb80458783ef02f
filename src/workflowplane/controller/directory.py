"""Which plane CRs exist, their planeIDs and the Secrets they read their CA from.

Kept from the plane watch events so that triggers arriving from elsewhere (a gateway
connection event names a planeID; a Secret event names a Secret) can find the CRs they
concern without listing anything.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from workflowplane.api import (
    WORKFLOW_PLANE,
    ClientCAError,
    client_ca_location_of,
    cr_key_of,
    plane_id_of,
)
from workflowplane.kits.grouped import Grouped

Group = TypeVar("Group", bound=Hashable)


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


class PlaneDirectory:
    """The planeID and CA Secret of every plane CR, to find the CRs an event concerns."""

    def __init__(self) -> None:
        # Each CR's planeID and CA Secret, and the CRs of each: an event (an agent's connection,
        # a Secret's change anywhere in the cluster) looks at the CRs it concerns, not all.
        self._plane_ids: Grouped[PlaneRef, str, str] = Grouped(_itself)
        self._secrets: Grouped[PlaneRef, tuple[str, str], tuple[str, str]] = Grouped(_itself)

    def remember(self, ref: PlaneRef, body: Mapping[str, Any]) -> None:
        """Note the planeID and CA Secret of a CR from its current body."""
        self._plane_ids.put(ref, plane_id_of(body))
        try:
            location = client_ca_location_of(body)
        except ClientCAError:  # a cluster-scoped CR without the Secret's namespace
            location = None
        if location is None:
            self._secrets.pop(ref)
        else:
            self._secrets.put(ref, (location.namespace, location.name))

    def forget(self, ref: PlaneRef) -> None:
        self._plane_ids.pop(ref)
        self._secrets.pop(ref)

    def by_plane_id(self, plane_id: str) -> list[PlaneRef]:
        return list(self._plane_ids.group(plane_id))

    def by_secret(self, namespace: str, name: str) -> list[PlaneRef]:
        return list(self._secrets.group((namespace, name)))


def _itself(value: Group) -> Group:
    return value
