"""Workflow-run benchmark: prints figures, asserts nothing. Run: .venv/bin/python bench/runs.py

Brings the local system up (``wpctl dev up --no-argo`` in a private state directory), then,
for each count N of ``--counts`` (default 100,500,1000):
1. start throughput: N WorkflowRuns of the sample ClusterWorkflow created at once → until
   every one has created its objects on the plane (through gateway + agent) and has
   ``status.startedAt`` (runs/s);
2. status-follow latency: each run's Argo Workflow patched to Running on the plane, paced at
   ``--follow-rate`` per second (we play Argo: the plane runs no Argo controller here, so
   its status writes are ours) → the run's ``WorkflowRunning=True`` as seen by a watch on
   the control plane, p50/p90/p99 over the N runs;
3. cleanup throughput: the N runs deleted at once → until every finalizer has deleted the
   Argo Workflow on the plane (in the foreground) and the run is gone. The plane runs no
   garbage collector here, so after the figure the bench lets those Workflows go as one
   would (their names are the next round's).
Both ends are seen through one watch each (no polling), so the bench adds little load.
Each phase also prints the CPU milliseconds per run of each component process started by
``dev up`` (with its children: the render workers): on a shared machine wall-clock figures
move with the neighbours' load, CPU per run much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from flame import profiled, summary
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import KubeConfig
from machine import interpreter

from workflowplane.testenv.tools import kubectl

CP, WP = "wp-control-plane", "wp-workflow-plane"
WPCTL = str(Path(sys.executable).parent / "wpctl")
JSON, MERGE_PATCH = "application/json", "application/merge-patch+json"
ARGO_RUNNING = {"status": {"phase": "Running"}}
PARAMS = {"repository": {"url": "https://git.example/app"}, "image": {"name": "reg/app"}}


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU seconds used by each of dev up's component processes and their descendants, and
    by this bench (which plays Argo and watches the runs: if it is busy, its figures lag)."""

    def __init__(self, state: Path) -> None:
        recorded = json.loads((state / "dev" / "processes.json").read_text())
        self.pids = {name: [int(entry["pid"])] for name, entry in recorded.items()}
        servers = state / "dev" / "testenv.json"  # each API server and its etcd
        if servers.exists():
            for name, entry in json.loads(servers.read_text()).items():
                self.pids[f"{name} API server+etcd"] = [int(pid) for pid in entry["pids"]]

    def sample(self) -> dict[str, float]:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stats[int(entry.name)] = _stat(int(entry.name))
        used = {}
        for name, roots in self.pids.items():
            family, total = set(roots), 0.0
            for pid in sorted(stats):  # parents start before their children
                parent, seconds = stats[pid]
                if pid in family or parent in family:
                    family.add(pid)
                    total += seconds
            used[name] = total
        mine = os.times()
        used["bench itself"] = mine.user + mine.system
        return used

    @contextlib.contextmanager
    def per_run(self, what: str, runs: int) -> Any:
        before = self.sample()
        yield
        after = self.sample()
        shares = ", ".join(
            f"{name} {(after[name] - before.get(name, 0.0)) / runs * 1000:.1f}" for name in after
        )
        print(f"  CPU ms per run ({what}): {shares}")


REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<count>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


class RequestMeter:
    """Requests each API server served, by verb and resource, from its own ``/metrics``: what
    a run costs the control plane's and the plane's API servers, which share the machine."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def sample(self, context: str) -> dict[str, float]:
        text = kubectl(self.kubeconfig, context, "get", "--raw", "/metrics").stdout
        counts: dict[str, float] = {}
        for line in text.splitlines():
            found = REQUEST_LINE.match(line)
            if found is None:
                continue
            labels = dict(LABEL.findall(found["labels"]))
            if labels.get("resource") in ("", None, "leases", "events"):
                continue  # not the runs' (leases and events are counted by the components)
            what = labels["resource"] + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            key = f"{labels['verb']} {what}"
            counts[key] = counts.get(key, 0.0) + float(found["count"])
        return counts

    @contextlib.contextmanager
    def per_run(self, what: str, runs: int) -> Any:
        before = {context: self.sample(context) for context in (CP, WP)}
        yield
        for context in (CP, WP):
            after = self.sample(context)
            shares = [
                f"{key} {(after[key] - before[context].get(key, 0.0)) / runs:.2f}"
                for key in sorted(after)
                if (after[key] - before[context].get(key, 0.0)) / runs >= 0.05
            ]
            print(f"  {context} API requests per run ({what}): {', '.join(shares) or 'none'}")


def wpctl(state: Path, *args: str) -> None:
    env = {**os.environ, "WORKFLOWPLANE_STATE": str(state)}
    subprocess.run([WPCTL, *args], env=env, check=True, capture_output=True, text=True)


def run_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"workflow": {"name": "docker-build", "parameters": PARAMS}},
    }


RUNS = "/apis/openchoreo.dev/v1alpha1/namespaces/default/workflowruns"
ARGO_WORKFLOWS = "/apis/argoproj.io/v1alpha1/namespaces/workflows-default/workflows"


class RawClient:
    """One API server's writes and watch as raw JSON over one aiohttp session, no models.

    The bench shares the machine with what it measures: lightkube's models cost it about a
    millisecond of CPU per write it makes and per event it reads, which the system under test
    then waits for."""

    def __init__(self, kubeconfig: Path, context: str) -> None:
        config = KubeConfig.from_file(kubeconfig).get(context_name=context)
        assert config.user is not None
        self._ssl = verify_cluster(config.cluster, config.user, config.abs_file)
        self._server = config.cluster.server
        self._headers = (
            {"Authorization": f"Bearer {config.user.token}"} if config.user.token else {}
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        return self._session

    async def write(
        self, method: str, path: str, body: Any, content_type: str, *, gone_ok: bool = False
    ) -> None:
        async with self._open().request(
            method,
            f"{self._server}{path}",
            data=json.dumps(body),
            headers={"Content-Type": content_type},
            ssl=self._ssl,
        ) as response:
            if response.status >= 300 and not (gone_ok and response.status == 404):
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            await response.read()

    async def count(self, path: str) -> int:
        async with self._open().get(
            f"{self._server}{path}", ssl=self._ssl, raise_for_status=True
        ) as response:
            return len((await response.json())["items"])

    def watch(self, path: str) -> Any:
        return self._open().get(
            f"{self._server}{path}", params={"watch": "1"}, ssl=self._ssl, raise_for_status=True
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RunWatch:
    """When each run was first seen started, and first seen running, on one watch.

    The watch is read raw, one ``json.loads`` per event (see ``RawClient``)."""

    def __init__(self, cp: RawClient) -> None:
        self.started: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.changed = asyncio.Event()
        self._cp = cp

    async def follow(self) -> None:
        """Watch until cancelled; a watch that ends or fails is opened again (its first
        events replay what exists, which ``setdefault`` keeps as first seen)."""
        while True:
            try:
                await self._watch_once()
            except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                print(f"  (the bench's watch: {type(exc).__name__}: {exc}; again)", flush=True)
            await asyncio.sleep(0.2)

    async def _watch_once(self) -> None:
        async with self._cp.watch(RUNS) as response:
            async for line in response.content:
                event = json.loads(line)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._saw(event["object"], time.monotonic())

    def _saw(self, run: dict[str, Any], now: float) -> None:
        name, status = run["metadata"]["name"], run.get("status") or {}
        if status.get("startedAt"):
            self.started.setdefault(name, now)
        conditions = status.get("conditions") or []
        if any(c["type"] == "WorkflowRunning" and c["status"] == "True" for c in conditions):
            self.running.setdefault(name, now)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await self.changed.wait()


@contextlib.asynccontextmanager
async def watching(cp: RawClient) -> AsyncIterator[RunWatch]:
    watch = RunWatch(cp)
    task = asyncio.create_task(watch.follow())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start_throughput(cp: RawClient, watch: RunWatch, count: int) -> list[str]:
    names = [f"bench-{count}-{i}" for i in range(count)]
    began = time.monotonic()
    await asyncio.gather(*(cp.write("POST", RUNS, run_body(n), JSON) for n in names))
    await watch.until(lambda: all(n in watch.started for n in names))
    elapsed = time.monotonic() - began
    print(f"start: {count} runs on the plane in {elapsed:.2f}s ({count / elapsed:.1f} runs/s)")
    return names


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def status_latency(wp: RawClient, watch: RunWatch, names: list[str], rate: float) -> None:
    """Argo's Running written on the plane for each run at ``rate`` per second; the time
    from each write to the run's WorkflowRunning=True."""
    sent: dict[str, float] = {}

    async def play_argo(name: str) -> None:
        sent[name] = time.monotonic()
        await wp.write("PATCH", f"{ARGO_WORKFLOWS}/{name}", ARGO_RUNNING, MERGE_PATCH)

    began, patches = time.monotonic(), []
    for index, name in enumerate(names):
        await asyncio.sleep(max(0.0, began + index / rate - time.monotonic()))
        patches.append(asyncio.create_task(play_argo(name)))
    await asyncio.gather(*patches)
    await watch.until(lambda: all(n in watch.running for n in names))
    samples = [(watch.running[n] - sent[n]) * 1000 for n in names]
    print(
        f"status: Argo Running → run WorkflowRunning=True, {len(samples)} runs at "
        f"{rate:g}/s: p50 {percentile(samples, 0.5):.0f} ms, p90 {percentile(samples, 0.9):.0f} "
        f"ms, p99 {percentile(samples, 0.99):.0f} ms"
    )


async def cleanup_throughput(cp: RawClient, names: list[str]) -> None:
    began = time.monotonic()
    await asyncio.gather(*(cp.write("DELETE", f"{RUNS}/{n}", {}, JSON) for n in names))
    while await cp.count(RUNS):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - began
    print(f"cleanup: {len(names)} runs deleted, plane cleaned, in {elapsed:.2f}s")


async def collect_garbage(wp: RawClient, names: list[str]) -> None:
    """What the plane's garbage collector would do: the Workflows cleanup deleted in the
    foreground (they own nothing here) go; else a round that reuses their names would wait
    for them for ever."""
    release = {"metadata": {"finalizers": None}}
    await asyncio.gather(
        *(
            wp.write("PATCH", f"{ARGO_WORKFLOWS}/{n}", release, MERGE_PATCH, gone_ok=True)
            for n in names
        )
    )


async def measure(state: Path, counts: list[int], rate: float, profile: Path | None) -> None:
    kubeconfig, cpu = state / "dev" / "kubeconfig", CpuMeter(state)
    requests = RequestMeter(kubeconfig)
    cp, wp = RawClient(kubeconfig, CP), RawClient(kubeconfig, WP)

    def phase(what: str, count: int) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(cpu.per_run(what, count))
        stack.enter_context(requests.per_run(what, count))
        if profile is not None and count == counts[-1]:
            pid = cpu.pids["control-plane"][0]
            stack.enter_context(profiled({f"{what}-control-plane": pid}, profile))
        return stack

    try:
        for count in counts:
            async with watching(cp) as watch:
                with phase("start", count):
                    names = await start_throughput(cp, watch, count)
                with phase("status", count):
                    await status_latency(wp, watch, names, rate)
            with phase("cleanup", count):
                await cleanup_throughput(cp, names)
            await collect_garbage(wp, names)
    finally:
        await cp.close()
        await wp.close()
    for what in ("start", "status", "cleanup") if profile is not None else ():
        print(summary(profile / f"{what}-control-plane.txt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts", "--runs", default="100,500,1000", help="comma-separated run counts"
    )
    parser.add_argument(
        "--follow-rate", type=float, default=100.0, help="Argo status writes per second"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the control plane process (gateway + controller) in each phase of the "
        "largest count: DIR/<phase>-control-plane.txt, and print the hottest functions",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wp-bench-runs-") as tmp:
        state = Path(tmp)
        print("bringing the local system up (wpctl dev up --no-argo) ...", flush=True)
        # No Argo controller: this benchmark plays Argo's status writes itself.
        wpctl(state, "dev", "up", "--no-argo")
        try:
            counts = [int(c) for c in args.counts.split(",")]
            print(
                f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
                f"{interpreter()}"
            )
            asyncio.run(measure(state, counts, args.follow_rate, args.profile))
        finally:
            wpctl(state, "dev", "down")


if __name__ == "__main__":
    main()
