"""Steady proxied load through the callers' client: GET loops, every outcome kept."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.integration.harness import eventually
from workflowplane.api import PLANE_TYPE
from workflowplane.protocol.gateway_client import GatewayClient


@dataclass
class Load:
    """``loops`` concurrent GET loops per plane CR (``(planeID, namespace, name)``)."""

    client: GatewayClient
    planes: list[tuple[str, str, str]]
    loops: int = 3
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (planeID, status | error)
    failed: list[str] = field(default_factory=list)  # what each failure said, and when
    missed: list[str] = field(default_factory=list)  # replicas the client moved past

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [o for o in self.outcomes if o[1] != "200"]

    def watch_misses(self) -> None:
        """Keep the replicas the client marks failed (each is a miss it moved past)."""
        rotation = self.client._rotation
        mark = rotation.failed

        def failed(url: str) -> None:
            self.missed.append(url)
            mark(url)

        rotation.failed = failed  # type: ignore[method-assign]

    async def _loop(self, plane_id: str, namespace: str, name: str) -> None:
        while True:
            try:
                answer = await self.client.proxy(
                    "GET",
                    plane_type=PLANE_TYPE,
                    plane_id=plane_id,
                    cr_namespace=namespace,
                    cr_name=name,
                    path="/api/v1/namespaces/default",
                )
                outcome = str(answer.status)
                if answer.status != 200:
                    self._failed(f"{answer.status} {answer.headers} {answer.body[:300]!r}")
            except Exception as exc:  # noqa: BLE001 (any failure the caller saw is counted)
                outcome = repr(exc)
                self._failed(outcome)
            self.outcomes.append((plane_id, outcome))

    def _failed(self, what: str) -> None:
        self.failed.append(f"{time.monotonic():.3f} {what}")

    async def more(self, count: int) -> None:
        """Wait until every plane got ``count`` more answers."""
        base = {p[0]: self._count(p[0]) for p in self.planes}
        await eventually(lambda: all(self._count(p) >= base[p] + count for p in base), timeout=120)

    def _count(self, plane_id: str) -> int:
        return sum(1 for o in self.outcomes if o[0] == plane_id)


@contextlib.asynccontextmanager
async def running_load(load: Load) -> AsyncIterator[Load]:
    load.watch_misses()
    tasks = [
        asyncio.create_task(load._loop(*plane)) for plane in load.planes for _ in range(load.loops)
    ]
    try:
        await load.more(1)
        yield load
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
