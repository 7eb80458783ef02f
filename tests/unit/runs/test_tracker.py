"""The tracker in isolation, with a stand-in for the gateway's proxy (unit tier: no servers).

A run that joins a plane's watch after its list has been read must still get its Argo
Workflow's current state; so must a run whose status write failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from workflowplane.protocol.gateway_client import ProxyResponse
from workflowplane.runs.plan import PlaneTarget
from workflowplane.runs.plane_api import Discovery
from workflowplane.runs.tracker import ArgoTracker

pytestmark = pytest.mark.looptime
PLANE = PlaneTarget("ClusterWorkflowPlane", None, "default", "p1")
BASE = "/apis/argoproj.io/v1alpha1"


def argo(namespace: str, name: str, phase: str) -> dict[str, Any]:
    labels = {
        "openchoreo.dev/workflowrun-namespace": namespace,
        "openchoreo.dev/workflowrun": name,
    }
    return {
        "metadata": {"name": name, "namespace": f"workflows-{namespace}", "labels": labels},
        "status": {"phase": phase},
    }


class FakeTunnel:
    """Serves discovery, the list, single GETs from ``objects``; watches stay silent."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects

    async def proxy(self, method: str, *, path: str, **_: Any) -> ProxyResponse:
        if path == BASE:
            body: Any = {
                "resources": [{"name": "workflows", "kind": "Workflow", "namespaced": True}]
            }
        elif path == f"{BASE}/workflows":
            body = {"metadata": {"resourceVersion": "1"}, "items": list(self.objects.values())}
        else:
            found = self.objects.get(path.rsplit("/", 1)[1])
            if found is None:
                return ProxyResponse(404, {}, b'{"message": "not found"}')
            body = found
        return ProxyResponse(200, {}, json.dumps(body).encode())

    async def proxy_stream(self, method: str, **_: Any) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""


class Observed:
    def __init__(self, failures: int = 0) -> None:
        self.events: list[tuple[tuple[str, str], str, str]] = []
        self.failures = failures

    async def __call__(self, key: tuple[str, str], event: str, obj: Mapping[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("API server unavailable")
        self.events.append((key, event, ((obj.get("status") or {}).get("phase", ""))))


def reference(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "name": name,
        "namespace": "workflows-team",
    }


async def test_a_run_joining_after_the_list_gets_its_current_state() -> None:
    tunnel = FakeTunnel({"first": argo("team", "first", "Running")})
    observed = Observed()
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    tracker.track(("team", "first"), PLANE, reference("first"))
    await asyncio.sleep(1)
    assert observed.events == [(("team", "first"), "ADDED", "Running")]

    tunnel.objects["late"] = argo("team", "late", "Succeeded")  # finished before it joined
    tracker.track(("team", "late"), PLANE, reference("late"))
    await asyncio.sleep(1)
    assert (("team", "late"), "ADDED", "Succeeded") in observed.events

    tracker.track(("team", "gone"), PLANE, reference("gone"))  # nothing there any more
    await asyncio.sleep(1)
    assert (("team", "gone"), "DELETED", "") in observed.events
    await tracker.close()


async def test_a_failed_status_write_is_retried_from_a_fresh_read() -> None:
    tunnel = FakeTunnel({"r": argo("team", "r", "Failed")})
    observed = Observed(failures=1)
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    tracker.track(("team", "r"), PLANE, reference("r"))
    await asyncio.sleep(1)
    assert observed.events == []
    await asyncio.sleep(10)
    assert observed.events == [(("team", "r"), "ADDED", "Failed")]
    await tracker.close()


class StreamingTunnel(FakeTunnel):
    """Also streams the watch events put in ``events``."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        super().__init__(objects)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def proxy_stream(self, method: str, **_: Any) -> AsyncIterator[bytes]:
        while True:
            yield json.dumps(await self.events.get()).encode() + b"\n"


class HeldObserver(Observed):
    """Holds the status write of one run until released, like a slow API server."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held, self.release = held, asyncio.Event()

    async def __call__(self, key: tuple[str, str], event: str, obj: Mapping[str, Any]) -> None:
        if key[1] == self.held:
            await self.release.wait()
        await super().__call__(key, event, obj)


async def test_one_slow_status_write_does_not_hold_up_the_other_runs() -> None:
    tunnel = StreamingTunnel({"slow": argo("team", "slow", ""), "fast": argo("team", "fast", "")})
    observed = HeldObserver("slow")
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    tracker.track(("team", "slow"), PLANE, reference("slow"))
    tracker.track(("team", "fast"), PLANE, reference("fast"))
    await asyncio.sleep(1)  # listed: "slow"'s write hangs
    tunnel.events.put_nowait({"type": "MODIFIED", "object": argo("team", "fast", "Running")})
    await asyncio.sleep(1)
    assert (("team", "fast"), "MODIFIED", "Running") in observed.events

    tunnel.events.put_nowait({"type": "MODIFIED", "object": argo("team", "slow", "Running")})
    tunnel.events.put_nowait({"type": "MODIFIED", "object": argo("team", "slow", "Succeeded")})
    observed.release.set()
    await asyncio.sleep(1)
    # the held write, then only the newest of what arrived meanwhile
    assert [e for e in observed.events if e[0] == ("team", "slow")] == [
        (("team", "slow"), "ADDED", ""),
        (("team", "slow"), "MODIFIED", "Succeeded"),
    ]
    await tracker.close()


async def test_a_run_that_created_its_workflow_under_the_watch_is_not_read_again() -> None:
    tunnel = StreamingTunnel({"first": argo("team", "first", "")})
    reads: list[str] = []
    serve = tunnel.proxy

    async def counted(method: str, *, path: str, **kwargs: Any) -> ProxyResponse:
        reads.append(path)
        return await serve(method, path=path, **kwargs)

    tunnel.proxy = counted  # type: ignore[method-assign]
    observed = Observed()
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    tracker.track(("team", "first"), PLANE, reference("first"))
    await asyncio.sleep(1)  # listed and watching
    reads.clear()

    created_at = asyncio.get_running_loop().time()
    tunnel.events.put_nowait({"type": "ADDED", "object": argo("team", "early", "Pending")})
    await asyncio.sleep(1)  # the watch saw it before its run followed it
    tracker.track(("team", "early"), PLANE, reference("early"), created_at)
    tracker.track(("team", "late"), PLANE, reference("late"), created_at)
    tunnel.events.put_nowait({"type": "ADDED", "object": argo("team", "late", "Running")})
    await asyncio.sleep(1)

    assert (("team", "early"), "ADDED", "Pending") in observed.events
    assert (("team", "late"), "ADDED", "Running") in observed.events
    assert reads == []
    await tracker.close()
