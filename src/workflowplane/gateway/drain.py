"""Graceful drain on SIGTERM (docs/ha.md): leave the rotation, then finish.

The order matters and is :func:`drain`'s alone: readiness turns false (Services stop sending
new callers), the Lease goes (peers stop forwarding here), new agents and new proxied
requests are refused with 503 and ``X-Workflowplane-Unsent`` (their callers retry elsewhere,
any method), plain requests in flight get up to ``--drain-seconds`` to finish, and only then
are the agents closed with 1001 (going away), so they reconnect to other replicas at once.
Streams (watch, log follow, exec) are not waited for: they end when the agents close, and
their callers resume them on another replica (a watch from its last resourceVersion).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from workflowplane.gateway.kube_proxy import k8s_status, unsent
from workflowplane.protocol.http import is_streaming_query

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InFlight:
    """Plain proxied requests in flight, and the switch that refuses new ones."""

    def __init__(self) -> None:
        self.draining = False
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def guard(self, handler: Handler) -> Handler:
        """``handler`` counted while it runs (streams and upgrades are not), refusing new
        requests once draining."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.draining:
                return self.refusal()
            if is_streaming_query(request.query_string, request.path) or request.headers.get(
                "Upgrade"
            ):
                return await handler(request)
            self.enter()
            try:
                return await handler(request)
            finally:
                self.leave()

        return guarded

    @staticmethod
    def refusal() -> web.Response:
        """The answer to a request that comes while draining: its caller may retry it on
        another replica, whatever its method (nothing reached an agent)."""
        return unsent(
            k8s_status(503, "this gateway replica is shutting down", "ServiceUnavailable")
        )

    def enter(self) -> None:
        """A plain request starts (the caller checked ``draining`` first)."""
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    def guard_routes(self, routes: list[web.RouteDef]) -> list[web.RouteDef]:
        return [web.route(r.method, r.path, self.guard(r.handler), **r.kwargs) for r in routes]

    async def settled(self, seconds: float) -> bool:
        """Wait until no plain request is in flight, at most ``seconds``; whether none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True


class Drainable(Protocol):
    """The steps of a drain, in the gateway that owns each part."""

    def unready(self) -> None: ...

    async def release_lease(self) -> None: ...

    def stop_admitting(self) -> None: ...

    async def close_agents(self) -> None: ...


async def drain(replica: Drainable, in_flight: InFlight, seconds: float) -> None:
    started = time.monotonic()
    replica.unready()
    await replica.release_lease()
    replica.stop_admitting()
    in_flight.draining = True
    left = max(0.0, seconds - (time.monotonic() - started))
    if not await in_flight.settled(left):
        log.warning("drain: %d requests still in flight after %.0fs", in_flight.count, seconds)
    await replica.close_agents()
    log.info("drained in %.1fs", time.monotonic() - started)
