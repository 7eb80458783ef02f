"""Workflow-run benchmark: prints figures, asserts nothing. Run: .venv/bin/python bench/runs.py

Brings the local system up (``wpctl dev up`` in a private state directory), then measures:
1. start throughput: N WorkflowRuns of the sample ClusterWorkflow created at once → seconds
   until every one has created its objects on the plane (through gateway + agent) and has
   ``status.startedAt``;
2. status latency: Argo's Workflow patched to Running on the plane (we play Argo: its
   controller cannot run pods here) → the run's ``WorkflowRunning=True``, p50/p90;
3. cleanup throughput: the N runs deleted at once → seconds until every finalizer has removed
   the Argo Workflow from the plane and the run is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from workflowplane.api.workflows import WorkflowRunResource
from workflowplane.testenv.tools import async_client

CP, WP = "wp-control-plane", "wp-workflow-plane"
WPCTL = str(Path(sys.executable).parent / "wpctl")
ArgoWorkflow = create_namespaced_resource("argoproj.io", "v1alpha1", "Workflow", "workflows")
PARAMS = {"repository": {"url": "https://git.example/app"}, "image": {"name": "reg/app"}}


def wpctl(state: Path, *args: str) -> None:
    env = {**os.environ, "WORKFLOWPLANE_STATE": str(state)}
    subprocess.run([WPCTL, *args], env=env, check=True, capture_output=True, text=True)


def run_body(name: str) -> Any:
    resource: Any = WorkflowRunResource
    return resource.from_dict(
        {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": "WorkflowRun",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"workflow": {"name": "docker-build", "parameters": PARAMS}},
        }
    )


async def all_started(cp: Any, names: set[str]) -> None:
    while True:
        started = {
            r.metadata.name
            async for r in cp.list(WorkflowRunResource, namespace="default")
            if (r.to_dict().get("status") or {}).get("startedAt")
        }
        if names <= started:
            return
        await asyncio.sleep(0.05)


async def start_throughput(cp: Any, count: int) -> list[str]:
    names = [f"bench-{count}-{i}" for i in range(count)]
    began = time.monotonic()
    await asyncio.gather(*(cp.create(run_body(n), namespace="default") for n in names))
    await all_started(cp, set(names))
    elapsed = time.monotonic() - began
    print(f"start: {count} runs on the plane in {elapsed:.2f}s ({count / elapsed:.1f} runs/s)")
    return names


async def status_latency(cp: Any, wp: Any, names: list[str]) -> None:
    samples = []
    for name in names:
        began = time.monotonic()
        await wp.patch(
            ArgoWorkflow,
            name,
            {"status": {"phase": "Running"}},
            namespace="workflows-default",
            patch_type=PatchType.MERGE,
        )
        while True:
            run = (await cp.get(WorkflowRunResource, name, namespace="default")).to_dict()
            conditions = (run.get("status") or {}).get("conditions") or []
            if any(c["type"] == "WorkflowRunning" and c["status"] == "True" for c in conditions):
                break
            await asyncio.sleep(0.01)
        samples.append(time.monotonic() - began)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    print(
        f"status: Argo Running → run WorkflowRunning=True over {len(samples)} runs: "
        f"p50 {statistics.median(samples) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms"
    )


async def cleanup_throughput(cp: Any, names: list[str]) -> None:
    began = time.monotonic()
    await asyncio.gather(*(cp.delete(WorkflowRunResource, n, namespace="default") for n in names))
    while [r async for r in cp.list(WorkflowRunResource, namespace="default")]:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - began
    print(f"cleanup: {len(names)} runs deleted, plane cleaned, in {elapsed:.2f}s")


async def measure(kubeconfig: Path, counts: list[int], latency_samples: int) -> None:
    cp, wp = async_client(kubeconfig, CP), async_client(kubeconfig, WP)
    try:
        for count in counts:
            names = await start_throughput(cp, count)
            await status_latency(cp, wp, names[:latency_samples])
            await cleanup_throughput(cp, names)
    finally:
        await cp.close()
        await wp.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="20,100", help="comma-separated run counts")
    parser.add_argument("--latency-samples", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wp-bench-runs-") as tmp:
        state = Path(tmp)
        print("bringing the local system up (wpctl dev up --no-argo) ...", flush=True)
        # No Argo controller: this benchmark plays Argo's status writes itself.
        wpctl(state, "dev", "up", "--no-argo")
        try:
            counts = [int(c) for c in args.runs.split(",")]
            asyncio.run(measure(state / "dev" / "kubeconfig", counts, args.latency_samples))
        finally:
            wpctl(state, "dev", "down")


if __name__ == "__main__":
    main()
