"""Scheduling of plane passes: forced notifications through a coalescing queue, and the
gateway's push channel followed through interruptions.

On looptime's fake clock, so the follower's reconnect delays cost no real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from workflowplane.api import WORKFLOW_PLANE
from workflowplane.controller.directory import PlaneRef
from workflowplane.controller.metrics import ControllerMetrics
from workflowplane.controller.plane_handlers import PlanesController
from workflowplane.kits.errors import TransientError

pytestmark = pytest.mark.looptime
REF = PlaneRef(WORKFLOW_PLANE, "team", "wp")
BODY = {"metadata": {"name": "wp", "namespace": "team"}, "spec": {"planeID": "p1"}}


class StubReconciler:
    """Records each pass and whether it was forced; a pass may be held open."""

    def __init__(self) -> None:
        self.notify_owed: set[PlaneRef] = set()
        self.passes: list[tuple[PlaneRef, bool]] = []
        self.agents_changed: dict[PlaneRef, float] = {}
        self.hold = asyncio.Event()
        self.hold.set()

    def agents_changed_at(self, ref: PlaneRef, since: float) -> None:
        self.agents_changed[ref] = since

    async def reconcile(self, ref: PlaneRef) -> float | None:
        self.passes.append((ref, ref in self.notify_owed))
        self.notify_owed.discard(ref)
        await self.hold.wait()
        return None


class StubGateway:
    """events(): each call plays the next script: an exception, or events then silence."""

    def __init__(self, *scripts: Exception | list[Mapping[str, Any]]) -> None:
        self.scripts = list(scripts)
        self.opened = 0

    async def events(self) -> AsyncIterator[Mapping[str, Any]]:
        self.opened += 1
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, Exception):
            raise script
        for event in script:
            yield event
        await asyncio.Event().wait()


def controller(
    reconciler: StubReconciler, gateway: StubGateway, metrics: ControllerMetrics | None = None
) -> PlanesController:
    stubs: tuple[Any, Any] = (reconciler, gateway)
    return PlanesController(*stubs, metrics=metrics)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_forced_pass_requested_while_one_runs_is_not_lost() -> None:
    reconciler = StubReconciler()
    planes = controller(reconciler, StubGateway())
    reconciler.hold.clear()
    planes.add(REF)
    await settle()
    planes.add(REF, force_notify=True)  # a CA Secret event while the first pass runs
    planes.add(REF)  # ... and a plain one: all coalesce into one more pass
    reconciler.hold.set()
    await settle()
    assert reconciler.passes == [(REF, False), (REF, True)]
    await planes.close()


async def test_gateway_events_reach_the_crs_of_their_plane_id_across_interruptions() -> None:
    reconciler = StubReconciler()
    gateway = StubGateway(
        TransientError("gateway unreachable"),
        OSError("connection reset"),
        [{"type": "connected", "planeID": "other"}, {"type": "connected", "planeID": "p1"}],
    )
    metrics = ControllerMetrics()
    planes = controller(reconciler, gateway, metrics)
    planes.directory.remember(REF, BODY)
    planes.start()
    await asyncio.sleep(10)
    assert gateway.opened == 3
    assert reconciler.passes == [(REF, False)]
    assert list(reconciler.agents_changed) == [REF], "the pass knows an agent changed"
    sample = metrics.registry.get_sample_value
    assert sample("workflowplane_controller_gateway_events_total", {"type": "connected"}) == 2
    assert sample("workflowplane_controller_gateway_event_stream_interruptions_total") == 2
    assert sample("workflowplane_reconcile_total", {"queue": "planes", "result": "success"}) == 1
    await planes.close()
    assert len(planes.tasks) == 0


async def test_a_bug_in_the_push_channel_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    planes = controller(StubReconciler(), StubGateway(ValueError("not JSON")))
    planes.start()
    with caplog.at_level(logging.ERROR, logger="workflowplane.kits.tasks"):
        await settle()
    assert any("gateway-events" in r.getMessage() and r.exc_info for r in caplog.records)
    await planes.close()
