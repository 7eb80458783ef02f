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


def argo(namespace: str, name: str, phase: str, run_uid: str | None = None) -> dict[str, Any]:
    labels = {
        "openchoreo.dev/workflowrun-namespace": namespace,
        "openchoreo.dev/workflowrun": name,
    }
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": f"workflows-{namespace}",
        "labels": labels,
    }
    if run_uid is not None:
        metadata["annotations"] = {"openchoreo.dev/workflowrun-uid": run_uid}
    return {"metadata": metadata, "status": {"phase": phase}}


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
    tracker.track(("team", "first"), PLANE, reference("first"), run_uid="uid-first")
    await asyncio.sleep(1)
    assert observed.events == [(("team", "first"), "ADDED", "Running")]

    tunnel.objects["late"] = argo("team", "late", "Succeeded")  # finished before it joined
    tracker.track(("team", "late"), PLANE, reference("late"), run_uid="uid-late")
    await asyncio.sleep(1)
    assert (("team", "late"), "ADDED", "Succeeded") in observed.events

    tracker.track(
        ("team", "gone"), PLANE, reference("gone"), run_uid="uid-gone"
    )  # nothing there any more
    await asyncio.sleep(1)
    assert (("team", "gone"), "DELETED", "") in observed.events
    await tracker.close()


async def test_a_failed_status_write_is_retried_from_a_fresh_read() -> None:
    tunnel = FakeTunnel({"r": argo("team", "r", "Failed")})
    observed = Observed(failures=1)
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    tracker.track(("team", "r"), PLANE, reference("r"), run_uid="uid-r")
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
    tracker.track(("team", "slow"), PLANE, reference("slow"), run_uid="uid-slow")
    tracker.track(("team", "fast"), PLANE, reference("fast"), run_uid="uid-fast")
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
    tracker.track(("team", "first"), PLANE, reference("first"), run_uid="uid-first")
    await asyncio.sleep(1)  # listed and watching
    reads.clear()

    created_at = asyncio.get_running_loop().time()
    tunnel.events.put_nowait({"type": "ADDED", "object": argo("team", "early", "Pending")})
    await asyncio.sleep(1)  # the watch saw it before its run followed it
    tracker.track(
        ("team", "early"), PLANE, reference("early"), run_uid="uid-early", created_at=created_at
    )
    tracker.track(
        ("team", "late"), PLANE, reference("late"), run_uid="uid-late", created_at=created_at
    )
    tunnel.events.put_nowait({"type": "ADDED", "object": argo("team", "late", "Running")})
    await asyncio.sleep(1)

    assert (("team", "early"), "ADDED", "Pending") in observed.events
    assert (("team", "late"), "ADDED", "Running") in observed.events
    assert reads == []
    await tracker.close()


async def test_a_run_made_anew_under_its_name_is_not_given_its_namesakes_deletion() -> None:
    """A run deleted and made again under its name (a CI job re-applied): the watch can bring
    the old run's Argo Workflow's deletion after the new run follows its own (kept unclaimed,
    or late). It was delivered to the new run, which then failed as deleted from the plane."""
    old = argo("team", "build", "Running", run_uid="old")
    tunnel = StreamingTunnel({"build": old, "other": argo("team", "other", "")})
    observed = Observed()
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    key = ("team", "build")
    tracker.track(("team", "other"), PLANE, reference("other"), run_uid="u0")  # keeps the watch
    tracker.track(key, PLANE, reference("build"), run_uid="old")
    await asyncio.sleep(1)  # listed, watching
    tracker.forget(key)  # the old run's cleanup
    del tunnel.objects["build"]
    tunnel.events.put_nowait({"type": "DELETED", "object": old})
    await asyncio.sleep(1)  # kept unclaimed
    observed.events.clear()

    created_at = asyncio.get_running_loop().time()
    tracker.track(key, PLANE, reference("build"), run_uid="new", created_at=created_at)
    tunnel.events.put_nowait({"type": "DELETED", "object": old})  # late, after it follows
    tunnel.events.put_nowait(
        {"type": "ADDED", "object": argo("team", "build", "Pending", run_uid="new")}
    )
    await asyncio.sleep(1)
    assert [e for e in observed.events if e[0] == key] == [(key, "ADDED", "Pending")]
    await tracker.close()


async def test_what_the_tracker_keeps_of_an_argo_workflow_is_whose_it_is_and_its_status() -> None:
    """Claimed from the watch, delivered by it, and read once: only what the run's status is
    made from is kept (the spec and managedFields, most of an Argo Workflow, are not)."""
    kept: list[Mapping[str, Any]] = []

    async def observe(key: tuple[str, str], event: str, obj: Mapping[str, Any]) -> None:
        kept.append(obj)

    def whole(name: str) -> dict[str, Any]:
        found = argo("team", name, "Running", run_uid=f"uid-{name}")
        found["spec"] = {"templates": [{"name": f"step-{i}", "container": {}} for i in range(9)]}
        found["metadata"]["managedFields"] = [{"manager": "argo", "fieldsV1": {"f:spec": {}}}]
        return found

    tunnel = StreamingTunnel({"other": argo("team", "other", ""), "read": whole("read")})
    tracker = ArgoTracker(tunnel, Discovery(), observe)
    tracker.track(("team", "other"), PLANE, reference("other"), run_uid="uid-other")
    await asyncio.sleep(1)  # watching
    created_at = asyncio.get_running_loop().time()
    tunnel.events.put_nowait({"type": "ADDED", "object": whole("big")})
    await asyncio.sleep(1)  # kept unclaimed: its run does not follow it yet
    tracker.track(
        ("team", "big"), PLANE, reference("big"), run_uid="uid-big", created_at=created_at
    )
    tunnel.events.put_nowait({"type": "MODIFIED", "object": whole("big")})
    tracker.track(("team", "read"), PLANE, reference("read"), run_uid="uid-read")  # read once
    await asyncio.sleep(1)

    ours = [obj for obj in kept if obj["metadata"]["name"] != "other"]
    assert {obj["metadata"]["name"] for obj in ours} == {"big", "read"}
    for obj in ours:
        name = obj["metadata"]["name"]
        assert obj == {
            "metadata": {
                "name": name,
                "namespace": "workflows-team",
                "labels": whole(name)["metadata"]["labels"],
                "annotations": {"openchoreo.dev/workflowrun-uid": f"uid-{name}"},
            },
            "status": {"phase": "Running"},
        }
    await tracker.close()


class HeldLookTunnel(StreamingTunnel):
    """Reads its list's or GET's answer at once, answers only once ``release`` is set: a
    look under way while the runs it was made for change."""

    def __init__(self, objects: dict[str, dict[str, Any]], held: str) -> None:
        super().__init__(objects)
        self.held, self.release = held, asyncio.Event()

    async def proxy(self, method: str, *, path: str, **kwargs: Any) -> ProxyResponse:
        answer = await super().proxy(method, path=path, **kwargs)
        if path.endswith(self.held):
            await self.release.wait()
        return answer


@pytest.mark.parametrize("look", ["list", "read"])
async def test_a_deletion_a_look_found_is_not_given_to_a_namesake_made_meanwhile(
    look: str,
) -> None:
    """A list (or a run's catch-up read) that found the old run's Argo Workflow gone answers
    after the run was made again under its name: that answer is the old run's."""
    tunnel = HeldLookTunnel({"other": argo("team", "other", "")}, "/workflows")
    observed = Observed()
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    key = ("team", "build")
    tracker.track(("team", "other"), PLANE, reference("other"), run_uid="u0")
    if look == "read":
        tunnel.release.set()
        await asyncio.sleep(1)  # listed, watching
        tunnel.held, tunnel.release = "/build", asyncio.Event()
    tracker.track(key, PLANE, reference("build"), run_uid="old")
    await asyncio.sleep(1)  # the look, under way, found no Argo Workflow of "build"
    tracker.forget(key)
    observed.events.clear()
    tunnel.objects["build"] = argo("team", "build", "Pending", run_uid="new")
    if look == "read":  # the new run takes what the watch saw of its Argo Workflow
        created_at = asyncio.get_running_loop().time()
        tunnel.events.put_nowait({"type": "ADDED", "object": tunnel.objects["build"]})
        await asyncio.sleep(1)
        tracker.track(key, PLANE, reference("build"), run_uid="new", created_at=created_at)
    else:  # the watch has not started: the new run's Argo Workflow is read once
        tracker.track(key, PLANE, reference("build"), run_uid="new")
    await asyncio.sleep(1)
    tunnel.release.set()
    await asyncio.sleep(1)
    seen = {e for e in observed.events if e[0] == key}
    assert seen == {(key, "ADDED", "Pending")}
    await tracker.close()


@pytest.mark.parametrize(
    "annotations",
    [["openchoreo.dev/workflowrun-uid"], "uid", {"openchoreo.dev/workflowrun-uid": 7}, None],
)
async def test_a_planes_odd_run_uid_annotation_reads_as_none_and_the_watch_goes_on(
    annotations: Any,
) -> None:
    """What the plane (its agent) sends is untrusted: an annotation of another shape is no
    run's UID, delivered as an older version's object would be, and breaks nothing."""
    tunnel = StreamingTunnel({"r": argo("team", "r", "")})
    observed = Observed()
    tracker = ArgoTracker(tunnel, Discovery(), observed)
    tracker.track(("team", "r"), PLANE, reference("r"), run_uid="uid-r")
    await asyncio.sleep(1)
    odd = argo("team", "r", "Running")
    odd["metadata"]["annotations"] = annotations
    tunnel.events.put_nowait({"type": "MODIFIED", "object": odd})
    await asyncio.sleep(1)
    tunnel.events.put_nowait({"type": "MODIFIED", "object": argo("team", "r", "Succeeded")})
    await asyncio.sleep(1)
    phases = [e[2] for e in observed.events if e[0] == ("team", "r")]
    assert phases[-2:] == ["Running", "Succeeded"]
    await tracker.close()
