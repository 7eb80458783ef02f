"""The controller process's health listener (``--health-port``, default 8081): /healthz,
/readyz and /metrics, built on ``kits.health``.

Liveness fails when the controller is wedged, not only when it is gone:
- ``event-loop``: the loop answers and has not stalled for longer than ``loop_limit``;
- ``planes``, ``runs``: keys are due in that work queue and no pass finished for
  ``stuck_after`` seconds (keys only waiting for a timer do not count: idle is healthy).

Readiness adds what the controller needs to do its job now:
- ``operator``: kopf ran its startup activity and is not stopping;
- ``peering``: this replica's role is known (leader or standby; see ``leadership.py``);
- ``gateway``: the gateway's internal API answers within ``gateway_timeout``;
- whatever the process adds (``wpctl control-plane`` adds the in-process gateway's own
  probes, so one port answers for the whole process).

kopf's own liveness endpoint (``liveness_endpoint``) is not started: it proves only that
kopf's loop serves HTTP and runs ``@kopf.on.probe`` handlers, which this listener, on the
same loop, proves as well, next to the checks above.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from workflowplane.api import PLANE_TYPE
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.leadership import Leadership
from workflowplane.controller.metrics import ControllerMetrics
from workflowplane.kits.errors import EXPECTED_ERRORS
from workflowplane.kits.health import (
    OK,
    Check,
    Health,
    HealthListener,
    LoopLag,
    ProgressWatch,
    Verdict,
)
from workflowplane.kits.tasks import TaskSet

log = logging.getLogger(__name__)
# A planeID no agent uses: asking the gateway about it is a cheap round trip.
PROBE_PLANE_ID = "-health-probe-"


@dataclass
class OperatorState:
    started: bool = False
    stopping: bool = False

    def verdict(self) -> Verdict:
        if self.stopping:
            return Verdict(False, "the kopf operator is stopping")
        if not self.started:
            return Verdict(False, "the kopf operator has not started yet")
        return OK


class ControllerHealth:
    """The checks, the metrics and the listener of one controller process."""

    def __init__(
        self,
        *,
        stuck_after: float = 300.0,
        loop_limit: float = 5.0,
        gateway_timeout: float = 2.0,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.metrics = metrics or ControllerMetrics()
        self.stuck_after = stuck_after
        self.gateway_timeout = gateway_timeout
        self.health = Health(loop=LoopLag(limit=loop_limit))
        self.operator = OperatorState()
        self.port: int | None = None
        self._listener = HealthListener(self.health, self.metrics.registry)
        self._tasks = TaskSet("controller-health")

    # -- checks -------------------------------------------------------------------------------

    def watch(self, progress: ProgressWatch) -> None:
        """A work queue's progress, part of liveness."""
        self.health.watch(progress)

    def add_live_check(self, name: str, check: Check) -> None:
        self.health.live_checks[name] = check

    def add_ready_check(self, name: str, check: Check) -> None:
        self.health.ready_checks[name] = check

    def watch_gateway(self, gateway: GatewayAPI) -> None:
        async def answers() -> Verdict:
            try:
                async with asyncio.timeout(self.gateway_timeout):
                    await gateway.plane_status(PLANE_TYPE, PROBE_PLANE_ID)
            except TimeoutError:
                return Verdict(
                    False, f"the gateway's internal API did not answer in {self.gateway_timeout}s"
                )
            except EXPECTED_ERRORS as exc:
                return Verdict(False, f"the gateway's internal API failed: {exc}")
            return OK

        self.add_ready_check("gateway", answers)

    def watch_leadership(self, leadership: Leadership) -> None:
        self.add_ready_check("peering", leadership.verdict)
        self._tasks.spawn(leadership.run(), "leadership")

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """kopf tells when its operator has started and when it stops."""
        state = self.operator

        @kopf.on.startup(registry=registry, id="health-started")
        async def started(**_: Any) -> None:
            state.started = True

        @kopf.on.cleanup(registry=registry, id="health-stopping")
        async def stopping(**_: Any) -> None:
            state.stopping = True

        self.add_ready_check("operator", state.verdict)

    # -- listener -----------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Serve /healthz, /readyz, /metrics on ``host:port`` (0: any free port)."""
        self.port = await self._listener.start(host, port)
        log.info("controller health listener on %s:%d", host, self.port)

    async def close(self) -> None:
        await self._tasks.close()
        await self._listener.close()
