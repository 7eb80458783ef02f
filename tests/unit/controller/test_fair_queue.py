"""Each tenant's plane CRs wait behind each other's, not behind another tenant's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.unit.runs.test_fair_queues import taken_in_order
from workflowplane.controller.directory import PlaneRef
from workflowplane.controller.plane_handlers import PlanesController


async def test_planes_are_reconciled_a_namespace_at_a_time() -> None:
    reconciler: Any = SimpleNamespace(reconcile=None)
    planes = PlanesController(reconciler, None)  # type: ignore[arg-type]
    busy = [PlaneRef("WorkflowPlane", "busy", f"p{n}") for n in range(30)]
    quiet = PlaneRef("WorkflowPlane", "quiet", "p")
    assert (await taken_in_order(planes.queue, [*busy, quiet])).index(quiet) <= 2
