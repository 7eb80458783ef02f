"""Which plane CRs exist, their planeIDs and the Secrets they read their CA from.

Kept from the plane watch events so that triggers arriving from elsewhere (a gateway
connection event names a planeID; a Secret event names a Secret) can find the CRs they
concern without listing anything.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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


Value = TypeVar("Value", bound=Hashable)


class _Index(Generic[Value]):
    """Each CR's value, and the CRs of each value: a lookup by value costs the CRs that have
    it, not every CR (a Secret event anywhere in the cluster, or an agent's connection,
    looked at every tenant's CR)."""

    def __init__(self) -> None:
        self.of: dict[PlaneRef, Value] = {}
        self._refs: dict[Value, dict[PlaneRef, None]] = {}

    def set(self, ref: PlaneRef, value: Value | None) -> None:
        old = self.of.pop(ref, None)
        if old is not None:
            refs = self._refs[old]
            del refs[ref]
            if not refs:
                del self._refs[old]
        if value is not None:
            self.of[ref] = value
            self._refs.setdefault(value, {})[ref] = None

    def refs(self, value: Value) -> list[PlaneRef]:
        return list(self._refs.get(value, ()))


class PlaneDirectory:
    """The planeID and CA Secret of every plane CR, to find the CRs an event concerns."""

    def __init__(self) -> None:
        self._plane_ids: _Index[str] = _Index()
        self._secrets: _Index[tuple[str, str]] = _Index()

    def remember(self, ref: PlaneRef, body: Mapping[str, Any]) -> None:
        """Note the planeID and CA Secret of a CR from its current body."""
        self._plane_ids.set(ref, plane_id_of(body))
        try:
            location = client_ca_location_of(body)
        except ClientCAError:  # a cluster-scoped CR without the Secret's namespace
            location = None
        self._secrets.set(ref, None if location is None else (location.namespace, location.name))

    def forget(self, ref: PlaneRef) -> None:
        self._plane_ids.set(ref, None)
        self._secrets.set(ref, None)

    def by_plane_id(self, plane_id: str) -> list[PlaneRef]:
        return self._plane_ids.refs(plane_id)

    def by_secret(self, namespace: str, name: str) -> list[PlaneRef]:
        return self._secrets.refs((namespace, name))
