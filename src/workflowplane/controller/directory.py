"""Which CRs exist, their planeIDs and the Secrets they read their CA from.

Kept from the plane watch events so that triggers arriving from outside kopf's handlers (a
gateway connection event names a planeID; a Secret event names a Secret) can find the CRs
they concern without listing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workflowplane.controller.reconciler import PlaneRef


@dataclass
class PlaneDirectory:
    plane_ids: dict[PlaneRef, str] = field(default_factory=dict)
    secrets: dict[PlaneRef, tuple[str, str]] = field(default_factory=dict)

    def remember(self, ref: PlaneRef, plane_id: str, secret: tuple[str, str] | None) -> None:
        self.plane_ids[ref] = plane_id
        if secret is None:
            self.secrets.pop(ref, None)
        else:
            self.secrets[ref] = secret

    def forget(self, ref: PlaneRef) -> None:
        self.plane_ids.pop(ref, None)
        self.secrets.pop(ref, None)

    def by_plane_id(self, plane_id: str) -> list[PlaneRef]:
        return [ref for ref, known in self.plane_ids.items() if known == plane_id]

    def by_secret(self, namespace: str, name: str) -> list[PlaneRef]:
        return [ref for ref, known in self.secrets.items() if known == (namespace, name)]
