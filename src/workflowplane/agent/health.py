"""The agent's health listener (``--health-port``, default 8082): /healthz, /readyz (and
OpenChoreo's /health, /ready) and /metrics, built on ``kits.health``.

OpenChoreo's agent has no health endpoint; this one says whether the agent can do its job:

- liveness (``event-loop``): the loop answers and has not stalled for longer than
  ``loop_limit``. A gateway that is down is not the agent's fault: restarting the agent would
  not help, so it does not fail liveness;
- readiness adds ``gateway``: the agent holds a connection a gateway replica admitted (one
  is enough: a request reaches the agent through any replica; the detail names each replica's
  state, and ``workflowplane_agent_gateway_replicas`` counts them), and
  ``api-server``: its own API server answers ``GET /readyz`` with the agent's credentials
  (checked at most every ``api_cache`` seconds, so probes do not load it).

An agent pod is thus ready only once it serves its plane: a rolling update (maxUnavailable 0)
keeps the old agent until the new one is connected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import aiohttp

from workflowplane.agent.metrics import AgentMetrics
from workflowplane.agent.upstream import Upstream
from workflowplane.kits.health import OK, Health, HealthListener, LoopLag, Verdict

log = logging.getLogger(__name__)


class ApiServerCheck:
    """Whether the plane's API server answers ``/readyz``, remembered for ``cache`` seconds."""

    def __init__(self, upstream: Upstream, *, timeout: float = 2.0, cache: float = 5.0) -> None:
        self._upstream = upstream
        self.timeout = timeout
        self.cache = cache
        self._last: tuple[float, Verdict] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> Verdict:
        async with self._lock:  # concurrent probes share one request
            if self._last is not None and time.monotonic() - self._last[0] < self.cache:
                return self._last[1]
            verdict = await self._ask()
            self._last = (time.monotonic(), verdict)
            return verdict

    async def _ask(self) -> Verdict:
        try:
            result = await self._upstream.request(
                "GET", "/readyz", "", None, b"", self.timeout, 64 * 1024
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Verdict(False, f"the plane's API server did not answer: {exc!r}")
        if result.status != 200:
            text = result.body.decode(errors="replace").strip()[:300]
            return Verdict(False, f"the plane's API server answered {result.status}: {text}")
        return OK


class Tunnels(Protocol):
    """What readiness reads of the agent's connections (``agent.replicas.TunnelFleet``)."""

    connected: asyncio.Event
    metrics: AgentMetrics

    def describe(self) -> str: ...


class AgentHealth:
    """The checks and the listener of one agent; its metrics are the tunnels'."""

    def __init__(
        self,
        tunnel: Tunnels,
        upstream: Upstream,
        *,
        loop_limit: float = 5.0,
        api_timeout: float = 2.0,
        api_cache: float = 5.0,
    ) -> None:
        self.metrics: AgentMetrics = tunnel.metrics
        self.health = Health(loop=LoopLag(limit=loop_limit))
        self.api_server = ApiServerCheck(upstream, timeout=api_timeout, cache=api_cache)
        self.port: int | None = None
        self._listener = HealthListener(self.health, self.metrics.registry)

        def gateway() -> Verdict:
            if tunnel.connected.is_set():
                return OK
            return Verdict(False, f"no connection admitted by the gateway ({tunnel.describe()})")

        self.health.ready_checks["gateway"] = gateway
        self.health.ready_checks["api-server"] = self.api_server

    async def start(self, host: str, port: int) -> None:
        """Serve /healthz, /readyz, /metrics on ``host:port`` (0: any free port)."""
        self.port = await self._listener.start(host, port)
        log.info("agent health listener on %s:%d", host, self.port)

    async def close(self) -> None:
        await self._listener.close()
