"""A plane CR deleted and made again under its name: the old one's deletion, which kopf can
hand over after the new one's creation (each UID has its own worker), must not make the
controller forget the new one (its planeID and CA Secret: a CA rotation would then notify
nobody, and the old CA's agents stay admitted)."""

from __future__ import annotations

from typing import Any

import pytest

from workflowplane.controller.directory import PlaneRef
from workflowplane.controller.plane_handlers import PlanesController

pytestmark = pytest.mark.looptime
REF = PlaneRef("WorkflowPlane", "team", "wp")


class Reconciler:
    def __init__(self) -> None:
        self.notify_owed: set[PlaneRef] = set()

    async def reconcile(self, ref: PlaneRef) -> None:
        return None


def plane(uid: str, secret: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": "wp", "uid": uid, "generation": 1},
        "spec": {
            "planeID": "p1",
            "clusterAgent": {"clientCA": {"secretKeyRef": {"name": secret, "key": "ca.crt"}}},
        },
    }


async def test_the_old_crs_late_deletion_leaves_the_new_one_known() -> None:
    planes = PlanesController(Reconciler(), gateway=None)  # type: ignore[arg-type]
    planes.plane_event(REF, plane("old", "ca-old"), "ADDED")
    planes.plane_event(REF, plane("new", "ca-new"), "ADDED")
    planes.plane_event(REF, plane("old", "ca-old"), "DELETED")  # late
    assert planes.directory.by_secret("team", "ca-new") == [REF]
    assert planes.directory.by_plane_id("p1") == [REF]

    planes.plane_event(REF, plane("new", "ca-new"), "DELETED")
    assert planes.directory.by_secret("team", "ca-new") == []
    await planes.queue.close()
