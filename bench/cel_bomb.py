"""CEL-bomb benchmark (issue #10): prints figures, asserts nothing.
Run: .venv/bin/python bench/cel_bomb.py [--bombs 3] [--gets 400]

Brings the local system up (``wpctl dev up`` in a private state directory: the gateway and the
controller share one process, ``wpctl control-plane``), then tenant A starts --bombs runs of a
namespaced Workflow whose run template holds one costly CEL expression (about 10^6 evaluation
steps), while tenant B sends proxied GETs through the gateway to the plane. Prints B's GET
latency (p50/p99/max) before and during the bombs, and how each bomb run ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workflowplane.api.workflows import WorkflowRunResource
from workflowplane.protocol.gateway_client import GatewayClient
from workflowplane.testenv.tools import async_client, kubectl

CP = "wp-control-plane"
WPCTL = str(Path(sys.executable).parent / "wpctl")
HUNDRED = "[" + ",".join(str(n) for n in range(100)) + "]"
BOMB = f"${{{HUNDRED}.map(a, {HUNDRED}.map(b, {HUNDRED}.map(c, a + b + c))).size()}}"


def wpctl(state: Path, *args: str) -> None:
    env = {**os.environ, "WORKFLOWPLANE_STATE": str(state)}
    subprocess.run([WPCTL, *args], env=env, check=True, capture_output=True, text=True)


def apply(kubeconfig: Path, manifest: dict[str, Any]) -> None:
    kubectl(kubeconfig, CP, "apply", "-f", "-", input=json.dumps(manifest))


def bomb_workflow(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "bomb", "namespace": namespace},
        "spec": {
            "workflowPlaneRef": {"kind": "ClusterWorkflowPlane", "name": "default"},
            "runTemplate": {"spec": {"entrypoint": "main", "arguments": BOMB}},
        },
    }


def bomb_run(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"workflow": {"kind": "Workflow", "name": "bomb"}},
    }


async def latencies(client: GatewayClient, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        began = time.monotonic()
        await client.proxy(
            "GET",
            plane_type="workflowplane",
            plane_id="default",
            cr_namespace=None,
            cr_name="default",
            path="/api/v1/namespaces/default",
        )
        samples.append(time.monotonic() - began)
    return samples


def summary(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{label}: {len(samples)} GETs, p50 {statistics.median(samples) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


async def outcome(kubeconfig: Path, namespace: str, name: str) -> str:
    cp = async_client(kubeconfig, CP)
    try:
        while True:
            run = (await cp.get(WorkflowRunResource, name, namespace=namespace)).to_dict()
            for condition in (run.get("status") or {}).get("conditions") or []:
                ended = condition["type"] in ("WorkflowFailed", "WorkflowSucceeded")
                if ended and condition["status"] == "True":
                    return f"{condition['reason']}: {condition['message'][:120]}"
            await asyncio.sleep(0.2)
    finally:
        await cp.close()


async def measure(state: Path, bombs: int, gets: int) -> None:
    kubeconfig = state / "dev" / "kubeconfig"
    processes = json.loads((state / "dev" / "processes.json").read_text())
    url = f"https://127.0.0.1:{processes['control-plane']['internal']}"
    kube = async_client(kubeconfig, CP)
    client = await GatewayClient.from_secret(kube, url)
    await kube.close()
    try:
        summary("tenant B before", await latencies(client, gets))
        kubectl(kubeconfig, CP, "create", "namespace", "tenant-a", check=False)
        apply(kubeconfig, bomb_workflow("tenant-a"))
        names = [f"bomb-{i}" for i in range(bombs)]
        for name in names:
            apply(kubeconfig, bomb_run("tenant-a", name))
        ending = asyncio.gather(*(outcome(kubeconfig, "tenant-a", n) for n in names))
        during: list[float] = []
        while not ending.done():  # B keeps asking for as long as any bomb renders
            during.extend(await latencies(client, 10))
        ends = await ending
        summary("tenant B during the bombs", during)
        for name, end in zip(names, ends, strict=True):
            print(f"{name}: {end}")
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bombs", type=int, default=3)
    parser.add_argument("--gets", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wp-bench-bomb-") as tmp:
        state = Path(tmp)
        print("bringing the local system up (wpctl dev up) ...", flush=True)
        wpctl(state, "dev", "up")
        try:
            asyncio.run(measure(state, args.bombs, args.gets))
        finally:
            wpctl(state, "dev", "down")


if __name__ == "__main__":
    main()
