"""Health that tells the truth: liveness fails when a component is wedged, not only when its
process is gone; readiness fails when it cannot do its job right now.

Three kinds of evidence, each cheap enough to check on every probe:
- the event loop answers (a ticker records how late its wake-ups are; a probe served on a
  blocked loop does not answer at all, and one served after a long stall sees the lag);
- work makes progress (a :class:`ProgressWatch` is stuck when it has work pending and has not
  completed any for longer than its limit);
- named checks a component registers (for example "holds an admitted connection").

``health_app`` serves ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` on one
aiohttp application; each probe answers JSON naming every failing check and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from workflowplane.kits.dialing import Connector
from workflowplane.kits.process import listening


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str = ""


OK = Verdict(True)
Check = Callable[[], Awaitable[Verdict] | Verdict]


class LoopLag:
    """How late the loop wakes a 0.5 s ticker; a wedged loop shows up as a growing lag."""

    def __init__(self, interval: float = 0.5, limit: float = 5.0) -> None:
        self.interval = interval
        self.limit = limit
        self.last_tick = time.monotonic()
        self.lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._tick(), name="health:loop-lag")

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            self.last_tick = time.monotonic()
            self.lag = max(0.0, self.last_tick - before - self.interval)

    def verdict(self) -> Verdict:
        since = time.monotonic() - self.last_tick
        worst = max(self.lag, since - self.interval)
        if worst > self.limit:
            return Verdict(False, f"event loop stalled for {worst:.1f}s (limit {self.limit:g}s)")
        return OK

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass
class ProgressWatch:
    """Stuck when ``pending()`` says there is work and nothing completed for ``limit`` s."""

    name: str
    pending: Callable[[], int]
    limit: float = 300.0
    last_progress: float = field(default_factory=time.monotonic)

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def verdict(self) -> Verdict:
        waiting = self.pending()
        if waiting == 0:
            self.progressed()  # idle is healthy; the clock starts when work arrives
            return OK
        idle_for = time.monotonic() - self.last_progress
        if idle_for > self.limit:
            return Verdict(
                False, f"{self.name}: {waiting} pending, no progress for {idle_for:.0f}s"
            )
        return OK


@dataclass
class Health:
    """The checks behind liveness and readiness of one process."""

    loop: LoopLag = field(default_factory=LoopLag)
    live_checks: dict[str, Check] = field(default_factory=dict)
    ready_checks: dict[str, Check] = field(default_factory=dict)

    def watch(self, progress: ProgressWatch) -> ProgressWatch:
        self.live_checks[progress.name] = progress.verdict
        return progress

    async def live(self) -> dict[str, Verdict]:
        return {"event-loop": self.loop.verdict(), **await _run(self.live_checks)}

    async def ready(self) -> dict[str, Verdict]:
        return {**await self.live(), **await _run(self.ready_checks)}


async def _run(checks: dict[str, Check]) -> dict[str, Verdict]:
    results: dict[str, Verdict] = {}
    for name, check in checks.items():
        outcome = check()
        results[name] = await outcome if isinstance(outcome, Awaitable) else outcome
    return results


def http_probe(url: str, timeout: float = 2.0) -> Check:
    """A check that another listener's probe answers 200 (its JSON's failures become ours),
    e.g. a process that hosts two components asking the other one's /healthz."""

    async def check() -> Verdict:
        try:
            async with (
                aiohttp.ClientSession(
                    connector=Connector(), timeout=aiohttp.ClientTimeout(total=timeout)
                ) as session,
                session.get(url) as response,
            ):
                if response.status == 200:
                    return OK
                text = (await response.text()).strip()
                return Verdict(False, f"{url} answered {response.status}: {text[:300]}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Verdict(False, f"{url} did not answer: {exc or type(exc).__name__}")

    return check


def _answer(verdicts: dict[str, Verdict]) -> web.Response:
    failing = {name: v.detail for name, v in verdicts.items() if not v.ok}
    body = {"ok": not failing, "failing": failing, "checks": sorted(verdicts)}
    return web.json_response(body, status=503 if failing else 200)


def health_app(health: Health, registry: CollectorRegistry | None = None) -> web.Application:
    """/healthz, /readyz (and /health, /ready, OpenChoreo's names), /metrics."""

    async def live(_request: web.Request) -> web.Response:
        return _answer(await health.live())

    async def ready(_request: web.Request) -> web.Response:
        return _answer(await health.ready())

    async def metrics(_request: web.Request) -> web.Response:
        if registry is None:
            raise web.HTTPNotFound(text="no metrics in this process\n")
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    for path, handler in (
        ("/healthz", live),
        ("/health", live),
        ("/readyz", ready),
        ("/ready", ready),
        ("/metrics", metrics),
    ):
        app.router.add_get(path, handler)
    return app


class HealthListener:
    """``health_app`` served on its own port, with the loop-lag ticker running while it is up
    (the component's probes and /metrics, for Kubernetes and Prometheus)."""

    def __init__(self, health: Health, registry: CollectorRegistry | None) -> None:
        self.health, self._registry = health, registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); the port it got."""
        self.health.loop.start()
        runner = web.AppRunner(
            health_app(self.health, self._registry), access_log=None, shutdown_timeout=1
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await listening(site.start(), "health", host, port)
        self.port = int(runner.addresses[0][1])
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.health.loop.stop()
