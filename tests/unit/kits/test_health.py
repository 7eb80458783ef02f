"""Health probes: a blocked loop, a stuck queue and a failing check each turn a probe
unhealthy, naming why; each recovers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from workflowplane.kits.health import (
    Health,
    HealthListener,
    LoopLag,
    ProgressWatch,
    Verdict,
    health_app,
    http_probe,
)
from workflowplane.kits.process import FatalError


async def _probe(client: TestClient, path: str) -> tuple[int, dict[str, object]]:
    response = await client.get(path)
    return response.status, await response.json()


async def _wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polls a plain predicate
            await asyncio.sleep(0.02)


async def test_a_blocked_loop_fails_liveness_until_it_recovers() -> None:
    health = Health(loop=LoopLag(interval=0.05, limit=0.3))
    health.loop.start()
    async with TestClient(TestServer(health_app(health))) as client:
        assert (await _probe(client, "/healthz"))[0] == 200
        time.sleep(0.6)  # noqa: ASYNC251 - the wedge under test: the loop runs nothing
        status, body = await _probe(client, "/healthz")
        assert status == 503 and "event loop stalled" in str(body["failing"])
        await _wait_for(lambda: health.loop.verdict().ok)
        assert (await _probe(client, "/health"))[0] == 200
    await health.loop.stop()


async def test_a_stuck_queue_fails_liveness_and_progress_heals_it() -> None:
    pending = [3]
    health = Health()
    watch = health.watch(ProgressWatch("work-queue", lambda: pending[0], limit=0.1))
    async with TestClient(TestServer(health_app(health))) as client:
        await _wait_for(lambda: not watch.verdict().ok)
        status, body = await _probe(client, "/healthz")
        assert status == 503
        assert "work-queue: 3 pending, no progress" in str(body["failing"])
        watch.progressed()
        assert (await _probe(client, "/healthz"))[0] == 200
        pending[0] = 0
        await asyncio.sleep(0.2)  # idle for longer than the limit is still healthy
        assert watch.verdict().ok


async def test_readiness_adds_named_checks_and_says_which_fails() -> None:
    connected = [False]

    async def has_connection() -> Verdict:
        return Verdict(True) if connected[0] else Verdict(False, "no admitted connection")

    health = Health(ready_checks={"gateway-connection": has_connection})
    async with TestClient(TestServer(health_app(health))) as client:
        assert (await _probe(client, "/healthz"))[0] == 200, "liveness ignores readiness checks"
        status, body = await _probe(client, "/readyz")
        assert status == 503
        assert body["failing"] == {"gateway-connection": "no admitted connection"}
        connected[0] = True
        assert (await _probe(client, "/ready"))[0] == 200


async def test_metrics_are_served_from_the_given_registry() -> None:
    registry = CollectorRegistry()
    Counter("workflowplane_test_total", "a test counter", registry=registry).inc()
    async with TestClient(TestServer(health_app(Health(), registry))) as client:
        text = await (await client.get("/metrics")).text()
    assert "workflowplane_test_total 1.0" in text


async def test_an_http_probe_carries_another_listeners_failure() -> None:
    ready = [False]
    other = Health(ready_checks={"synced": lambda: Verdict(ready[0], "cache not synced")})
    async with TestClient(TestServer(health_app(other))) as server:
        probe = http_probe(str(server.make_url("/readyz")))
        verdict = await probe()
        assert not verdict.ok and "503" in verdict.detail and "cache not synced" in verdict.detail
        ready[0] = True
        assert (await probe()).ok
        url = str(server.make_url("/readyz"))
    gone = await http_probe(url, timeout=1)()
    assert not gone.ok and "did not answer" in gone.detail


async def test_a_health_port_that_is_taken_is_one_line_naming_it() -> None:
    """A port in use (or a host that is no address here) had ended the component in a
    traceback; it is a setting to fix."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = HealthListener(Health(), None)
        try:
            with pytest.raises(FatalError, match=f"cannot listen for health on 127.0.0.1:{port}"):
                await listener.start("127.0.0.1", port)
        finally:
            await listener.close()
