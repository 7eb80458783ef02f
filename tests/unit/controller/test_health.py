"""The controller's health listener: a stuck queue and a blocked loop fail liveness and heal;
readiness says which of operator, peering and gateway is missing; the peering role follows
kopf's rule."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from workflowplane.controller.health import ControllerHealth
from workflowplane.controller.leadership import Leadership, peer_role
from workflowplane.kits.errors import TransientError
from workflowplane.kits.workqueue import WorkQueue

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


class StubGateway:
    def __init__(self) -> None:
        self.down: Exception | None = None

    async def plane_status(self, *_: Any, **__: Any) -> Mapping[str, Any]:
        if self.down is not None:
            raise self.down
        return {"connectedAgents": 0}


async def _probe(health: ControllerHealth, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{health.port}{path}") as response,
    ):
        return response.status, await response.json()


async def _until(health: ControllerHealth, path: str, status: int) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            code, body = await _probe(health, path)
            if code == status:
                return body
            await asyncio.sleep(0.05)


@pytest.fixture
async def health() -> AsyncIterator[ControllerHealth]:
    health = ControllerHealth(stuck_after=0.2, loop_limit=0.3)
    await health.start("127.0.0.1", 0)
    yield health
    await health.close()


async def test_a_stuck_queue_fails_liveness_until_its_pass_finishes(
    health: ControllerHealth,
) -> None:
    release = asyncio.Event()

    async def reconcile(key: str) -> float | None:
        await release.wait()
        return 60.0  # a resync timer afterwards: idle, not stuck

    queue: WorkQueue[str] = WorkQueue(reconcile, name="planes", metrics=health.metrics.queues)
    health.watch(queue.progress_watch(health.stuck_after))
    assert (await _probe(health, "/healthz"))[0] == 200
    queue.add("team/wp")
    body = await _until(health, "/healthz", 503)
    assert "planes: 1 pending, no progress" in body["failing"]["planes"]
    release.set()
    await _until(health, "/healthz", 200)
    sample = health.metrics.registry.get_sample_value
    assert sample("workflowplane_reconcile_total", {"queue": "planes", "result": "requeue"}) == 1
    await queue.close()


async def test_a_blocked_loop_fails_liveness_and_heals(health: ControllerHealth) -> None:
    await _until(health, "/healthz", 200)
    time.sleep(1.0)  # noqa: ASYNC251 - the wedge under test: the loop runs nothing
    code, body = await _probe(health, "/healthz")
    assert code == 503 and "event loop stalled" in body["failing"]["event-loop"]
    await _until(health, "/healthz", 200)


async def test_readiness_names_what_is_missing(health: ControllerHealth) -> None:
    gateway = StubGateway()
    gateway.down = TransientError("connection refused")
    health.watch_gateway(gateway)  # type: ignore[arg-type]
    health.add_ready_check("operator", health.operator.verdict)
    body = await _until(health, "/readyz", 503)
    assert set(body["failing"]) == {"gateway", "operator"}
    assert "connection refused" in body["failing"]["gateway"]
    assert (await _probe(health, "/healthz"))[0] == 200, "readiness is not liveness"
    health.operator.started = True
    gateway.down = None
    await _until(health, "/readyz", 200)
    health.operator.stopping = True
    body = await _until(health, "/readyz", 503)
    assert body["failing"] == {"operator": "the kopf operator is stopping"}


def _peer(priority: int, seen: dt.datetime = NOW, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("status", "role"),
    [
        ({}, "unknown"),
        ({"me": _peer(5)}, "leader"),
        ({"me": _peer(5), "other": _peer(3)}, "leader"),
        ({"me": _peer(5), "other": _peer(9)}, "standby"),
        ({"me": _peer(5), "other": _peer(9, NOW - dt.timedelta(minutes=5))}, "leader"),
        ({"me": _peer(5), "other": _peer(5)}, "conflict"),
    ],
)
def test_the_peering_role_follows_kopfs_rule(status: dict[str, Any], role: str) -> None:
    assert peer_role(status, "me", 5, NOW)[0] == role


async def test_leadership_reports_the_role_and_readiness() -> None:
    roles: list[bool] = []
    standalone = Leadership(None, None, "me", on_change=roles.append)
    assert standalone.verdict().ok and roles == [True]

    class Kube:
        status: dict[str, Any] = {}

        async def get(self, *_: Any, **__: Any) -> Any:
            class Found:
                def to_dict(_self) -> dict[str, Any]:
                    return {"status": Kube.status}

            return Found()

    kube: Any = Kube()
    clock: Callable[[], dt.datetime] = lambda: NOW  # noqa: E731
    peered = Leadership(kube, "ctl", "me", 5, clock=clock, on_change=roles.append)
    await peered.refresh()
    assert not peered.verdict().ok and "not announced" in peered.verdict().detail
    Kube.status = {"me": _peer(5), "other": _peer(9)}
    await peered.refresh()
    assert peered.verdict().ok and peered.role == "standby" and roles[-1] is False
    Kube.status = {"me": _peer(5)}
    await peered.refresh()
    assert peered.role == "leader" and roles[-1] is True


async def test_the_controllers_own_queues_pause_while_another_replica_leads(
    health: ControllerHealth,
) -> None:
    """kopf pauses its handlers on standby; the plane queue's resyncs, the gateway event
    follower and the runs' status writes are the process's own, and went on beside the
    leader's."""
    from workflowplane.controller.runner import _follow_leadership  # noqa: PLC0415

    class Queue:
        paused = False

        def pause(self) -> None:
            self.paused = True

        def resume(self) -> None:
            self.paused = False

    class Kube:
        status: dict[str, Any] = {"me": _peer(5)}

        async def get(self, *_: Any, **__: Any) -> Any:
            return SimpleNamespace(to_dict=lambda: {"status": Kube.status})

    queue = Queue()
    clock: Callable[[], dt.datetime] = lambda: NOW  # noqa: E731
    peered = Leadership(Kube(), "ctl", "me", 5, clock=clock)  # type: ignore[arg-type]
    peered.on_change = _follow_leadership(peered, health, [queue])
    await peered.refresh()
    assert peered.role == "leader" and not queue.paused
    Kube.status = {"me": _peer(5), "other": _peer(9)}
    await peered.refresh()
    assert peered.role == "standby" and queue.paused
    Kube.status = {"me": _peer(5), "twin": _peer(5)}
    await peered.refresh()
    assert peered.role == "conflict" and queue.paused  # kopf pauses both
    Kube.status = {"me": _peer(5)}
    await peered.refresh()
    assert not queue.paused
