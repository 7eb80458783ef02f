"""Tunnel benchmark: prints figures, asserts nothing. Run: .venv/bin/python bench/tunnel.py

Measures, on this machine over loopback:
1. proxied small GET (/version) p50/p99 vs the same GET sent directly to the plane's API server;
2. proxied requests/s through one agent at concurrency 1, 16, 64, against the API server and
   against a trivial HTTP upstream (isolates the tunnel's own cost);
3. idle agents held by one gateway process and its memory per agent (--idle 1000,5000);
4. time for N agents to be back after a gateway restart (--reconnect 100,1000).
The gateway runs as its own process (``wpctl gateway``) so its memory can be read.

``--peer`` instead runs one load side by side: direct to the plane's API server, through
OpenChoreo's pair (its Go gateway and agent, built from ``../shared/peers/openchoreo``) and
through ours (``cluster-gateway`` and ``cluster-agent``), each pair started with OpenChoreo's
chart command lines as separate processes: sequential GET /version p50/p99, requests/s at
concurrency 16 and 64, CPU ms per request of each process (utime+stime from /proc), each
process's idle and peak RSS, and the median time of a 10 MB list (11 ConfigMaps of 950 kB,
uncompressed) and its ratio to the direct time, and the CPU ms per list of each process and
of the whole machine (lists fetched alone; on two cores the list's time follows that CPU).
Each pair's sequential GETs and its 10 MB lists
alternate with direct ones, and its overhead and ratio are taken against those: a shared
machine's speed drifts over the minutes between pairs, and a baseline measured at another time
would move the figures by more than the pairs differ. OpenChoreo's gateway binds :8080, so this takes
the interop tests' lock. ``--peer --profile DIR`` also samples our gateway and agent with py-spy
during the load (``bench/flame.py``; docs/performance.md) and prints their hottest functions.
``--peer --interleave`` instead keeps both pairs up at once and makes every call in turn with
the other two paths' (direct, Go's pair, ours), in rounds: each pair's p50 overhead and 10 MB
ratio over direct, and the spread of the rounds, with no drift between the pairs.
``--floor`` adds chains of two bare TLS relays that only decrypt and re-encrypt (Python's
with uvloop and with threads, ``bench/go_relay`` in Go's standard library, built once into the
cache): the floor any tunnel of two processes stands on, on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from flame import profiled, summary
from machine import interpreter

from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import Agent
from workflowplane.gateway.connections import MAX_CONNECTIONS_PER_LEAF
from workflowplane.protocol.gateway_client import GatewayClient
from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.testenv import CONTROL_PLANE, WORKFLOW_PLANE, Environment, free_port
from workflowplane.testenv.tools import async_client, gateway_server_ca, kubectl

WP = "workflowplane"
REPO = Path(__file__).resolve().parent.parent


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have been busy so far (/proc/stat: user to steal, less idle and
    iowait; guest time is already in user). In 10 ms ticks: 10 lists of 50 ms of it and more
    each make that 2% at most."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_seconds(pid: int) -> float:
    """Time a process's live threads have run so far, in nanoseconds' precision
    (/proc/<pid>/task/*/schedstat): utime and stime count 10 ms ticks, too coarse for a few
    lists of 20 ms of CPU each. Threads that ended are not counted."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = Environment(tmp / "env", [CONTROL_PLANE, WORKFLOW_PLANE])
        self.ports = {"public": free_port(), "internal": free_port(), "health": free_port()}
        self.gateway: subprocess.Popen[bytes] | None = None

    def start_gateway(self) -> None:
        cp = self.env[CONTROL_PLANE]
        wpctl = Path(sys.executable).parent / "wpctl"
        self.gateway = subprocess.Popen(  # noqa: S603
            [
                str(wpctl),
                "gateway",
                "--kubeconfig",
                str(cp.kubeconfig),
                "--context",
                cp.context,
                "--host",
                "127.0.0.1",
                "--public-port",
                str(self.ports["public"]),
                "--internal-port",
                str(self.ports["internal"]),
                "--health-port",
                str(self.ports["health"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                import urllib.request  # noqa: PLC0415

                urllib.request.urlopen(f"http://127.0.0.1:{self.ports['health']}/readyz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("gateway did not start")

    def stop_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.terminate()
        self.gateway.wait(10)


async def timed(fn: Any, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return samples


async def timed_alongside(fn: Any, baseline: Any, count: int) -> tuple[list[float], list[float]]:
    """``fn`` and ``baseline`` in turn, ``count`` times each: both see the machine alike."""
    samples: list[float] = []
    baseline_samples: list[float] = []
    for _ in range(count):
        for call, into in ((baseline, baseline_samples), (fn, samples)):
            started = time.perf_counter()
            await call()
            into.append(time.perf_counter() - started)
    return samples, baseline_samples


async def throughput(fn: Any, concurrency: int, seconds: float = 3.0) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await fn()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def trivial_upstream() -> tuple[web.AppRunner, int]:
    app = web.Application()

    async def version(_r: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "36"})

    app.router.add_get("/{tail:.*}", version)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def kubeconfig_for(url: str, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "t", "cluster": {"server": url}}],
                "users": [{"name": "t", "user": {"token": "x"}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    return path


async def register_plane(bench: Bench, plane_id: str, ca_pem: str) -> None:
    cp = bench.env[CONTROL_PLANE]
    manifest = {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": plane_id, "namespace": "default"},
        "spec": {"planeID": plane_id, "clusterAgent": {"clientCA": {"value": ca_pem}}},
    }
    kubectl(cp.kubeconfig, cp.context, "apply", "-f", "-", input=json.dumps(manifest))
    await asyncio.sleep(1.5)  # the gateway's watch picks it up


async def gateway_client(bench: Bench) -> GatewayClient:
    cp = bench.env[CONTROL_PLANE]
    kube = async_client(cp.kubeconfig, cp.context)
    client = await GatewayClient.from_secret(kube, f"https://127.0.0.1:{bench.ports['internal']}")
    await kube.close()
    return client


async def gateway_ca(bench: Bench) -> Path:
    cp = bench.env[CONTROL_PLANE]
    return gateway_server_ca(cp.kubeconfig, cp.context, bench.tmp / "gw-ca.crt")


async def latency_and_throughput(bench: Bench, client: GatewayClient, ca: Path) -> None:
    wp = bench.env[WORKFLOW_PLANE]
    for label, kubeconfig, context in (
        ("plane API server", wp.kubeconfig, wp.context),
        ("trivial upstream", None, None),
    ):
        runner = None
        if kubeconfig is None:
            runner, port = await trivial_upstream()
            kubeconfig, context = (
                kubeconfig_for(f"http://127.0.0.1:{port}", bench.tmp / "trivial.kubeconfig"),
                "t",
            )
        plane_id = f"bench-{label.split()[0]}"
        config = AgentConfig(
            server_url=f"wss://127.0.0.1:{bench.ports['public']}",
            plane_id=plane_id,
            server_ca_file=ca,
            kubeconfig=kubeconfig,
            context=context,
            secret_name=f"tls-{plane_id}",
            max_concurrent_requests=256,
        )
        # the identity Secret lives in the workflow plane whatever the upstream is
        identity_agent = Agent(
            AgentConfig(**{**config.__dict__, "kubeconfig": wp.kubeconfig, "context": wp.context})
        )
        identity = await identity_agent.ensure_identity()
        await identity_agent.upstream.close()
        assert identity is not None
        await register_plane(bench, plane_id, identity.ca.cert_pem.decode())
        agent = Agent(config)
        agent.identity = identity
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.tunnel.connected.wait(), 20)

        async def proxied() -> None:
            r = await client.proxy(
                "GET",
                plane_type=WP,
                plane_id=plane_id,
                cr_namespace="default",
                cr_name=plane_id,
                path="/version",
            )
            assert r.status == 200, r.body

        await timed(proxied, 50)  # warm up
        samples = await timed(proxied, 500)
        print(
            f"[{label}] proxied GET /version: p50 {pct(samples, 0.5):.2f} ms, "
            f"p99 {pct(samples, 0.99):.2f} ms"
        )
        if label == "plane API server":
            direct_ssl = ssl.create_default_context(cadata=wp.ca.cert_pem.decode())  # type: ignore[union-attr]
            direct_ssl.load_cert_chain(*_admin_files(wp))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=direct_ssl)) as s:

                async def direct() -> None:
                    async with s.get(f"{wp.url}/version") as r:
                        await r.read()

                await timed(direct, 50)
                d = await timed(direct, 500)
            print(
                f"[{label}] direct GET /version:  p50 {pct(d, 0.5):.2f} ms, "
                f"p99 {pct(d, 0.99):.2f} ms  -> tunnel overhead p50 "
                f"{pct(samples, 0.5) - pct(d, 0.5):.2f} ms"
            )
        for concurrency in (1, 16, 64):
            rate = await throughput(proxied, concurrency)
            print(f"[{label}] concurrency {concurrency:>2}: {rate:,.0f} requests/s")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()


def _admin_files(server: Any) -> tuple[str, str]:
    pki = server.workdir / "pki"
    return str(pki / "admin.crt"), str(pki / "admin.key")


async def idle_agents(bench: Bench, ca: Path, counts: list[int], reconnects: list[int]) -> None:
    """Light agents (the real TLS + WebSocket handshake, no forwarding work) in this process."""
    wp = bench.env[WORKFLOW_PLANE]
    from workflowplane.agent.bootstrap import load_or_create  # noqa: PLC0415
    from workflowplane.agent.kube import AgentKube  # noqa: PLC0415
    from workflowplane.agent.upstream import Upstream  # noqa: PLC0415

    upstream = Upstream.from_kubeconfig(wp.kubeconfig, wp.context, 1 << 20)
    identity = await load_or_create(
        AgentKube(upstream), "openchoreo-workflow-plane", "tls-idle", "idle", 3650, 90
    )
    await upstream.close()
    await register_plane(bench, "idle", identity.ca.cert_pem.decode())
    agent_ca = KeyPair(identity.ca.cert_pem, identity.ca.key_pem)
    most = max([*counts, *reconnects, 1])
    sessions = [  # a leaf per MAX_CONNECTIONS_PER_LEAF agents: the gateway's cap per leaf
        _leaf_session(agent_ca, ca, n) for n in range(-(-most // MAX_CONNECTIONS_PER_LEAF))
    ]
    url = f"wss://127.0.0.1:{bench.ports['public']}/ws?planeType={WP}&planeID=idle"
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    assert bench.gateway is not None
    base = rss_mib(bench.gateway.pid)
    for target in counts:
        while len(sockets) < target:
            batch = [
                _session_of(sessions, n).ws_connect(url, autoping=True)
                for n in range(len(sockets), min(len(sockets) + 200, target))
            ]
            sockets += await asyncio.gather(*batch)
        await asyncio.sleep(2)
        used = rss_mib(bench.gateway.pid)
        print(
            f"idle agents {target:>5}: gateway RSS {used:,.0f} MiB "
            f"({(used - base) * 1024 / target:.1f} KiB per agent over {base:.0f} MiB idle)"
        )
    for ws in sockets:
        await ws.close()
    for n in reconnects:
        await reconnect_storm(bench, sessions, url, n)
    for session in sessions:
        await session.close()


def _leaf_session(agent_ca: KeyPair, server_ca: Path, n: int) -> aiohttp.ClientSession:
    """A client session presenting a leaf of its own (``n`` names it)."""
    leaf: KeyPair = issue_certificate(agent_ca, f"idle-agent-{n}")
    files = Path(tempfile.mkdtemp())
    (files / "c.crt").write_bytes(leaf.cert_pem)
    (files / "c.key").write_bytes(leaf.key_pem)
    context = ssl.create_default_context(cafile=str(server_ca))
    context.load_cert_chain(files / "c.crt", files / "c.key")
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=0))


def _session_of(sessions: list[aiohttp.ClientSession], agent: int) -> aiohttp.ClientSession:
    return sessions[agent // MAX_CONNECTIONS_PER_LEAF]


async def reconnect_storm(
    bench: Bench, sessions: list[aiohttp.ClientSession], url: str, n: int
) -> None:
    """N agents connected; restart the gateway; time until all N are back (full jitter)."""
    back = 0
    all_back = asyncio.Event()

    async def agent_loop(session: aiohttp.ClientSession) -> None:
        nonlocal back
        attempt, counted = 0, False
        while True:
            try:
                ws = await session.ws_connect(url, autoping=True)
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(random.uniform(0, min(5.0, 0.5 * 2**attempt)))  # noqa: S311
                attempt += 1
                continue
            if restarted.is_set() and not counted:
                counted = True
                back += 1
                if back == n:
                    all_back.set()
            attempt = 0
            async for _ in ws:
                pass

    restarted = asyncio.Event()
    tasks = [asyncio.create_task(agent_loop(_session_of(sessions, i))) for i in range(n)]
    await asyncio.sleep(3 + n / 200)
    bench.stop_gateway()
    restarted.set()
    started = time.monotonic()
    bench.start_gateway()
    await asyncio.wait_for(all_back.wait(), 300)
    print(
        f"gateway restart: {n} agents back in {time.monotonic() - started:.1f} s "
        f"(including the gateway's own start)"
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


SEQUENTIAL, WARMUP, CONCURRENCY = 500, 50, (16, 64)


async def measure(
    fn: Any, pids: dict[str, int], profile_dir: Path | None = None, alongside: Any = None
) -> dict[str, float]:
    """One row: latency, throughput, CPU per request of each process, peak RSS; with
    ``profile_dir``, py-spy samples each process meanwhile (its CPU figures are then off);
    with ``alongside``, the sequential calls alternate with it (its p50: ``p50_alongside``)."""
    await timed(fn, WARMUP)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    with profiled(pids, profile_dir):
        if alongside is None:
            samples = await timed(fn, SEQUENTIAL)
            row = {}
        else:
            samples, baseline = await timed_alongside(fn, alongside, SEQUENTIAL)
            row = {"p50_alongside": pct(baseline, 0.5)}
        row.update(p50=pct(samples, 0.5), p99=pct(samples, 0.99))
        requests = float(SEQUENTIAL)
        for concurrency in CONCURRENCY:
            rate = await throughput(fn, concurrency)
            row[f"c{concurrency}"] = rate
            requests += rate * 3.0
    row["seconds"] = time.perf_counter() - started
    for name, pid in pids.items():
        row[f"cpu_{name}"] = (cpu_seconds(pid) - before[name]) * 1000 / requests
        row[f"rss_{name}"] = rss_mib(pid, "VmHWM")
    return row


BIG_LIST_NAMESPACE, BIG_LIST_ITEMS, BIG_ITEM_BYTES, BIG_ROUNDS = "bench-big", 11, 950_000, 5
BIG_LIST_PATH = f"/api/v1/namespaces/{BIG_LIST_NAMESPACE}/configmaps"
PLAIN = {"Accept-Encoding": "identity"}  # the API server would gzip it otherwise


async def make_big_list(session: aiohttp.ClientSession, url: str) -> None:
    """About 10 MB of ConfigMaps in one namespace: one list answer of that size."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BIG_LIST_NAMESPACE}}
    async with session.post(f"{url}/api/v1/namespaces", json=namespace) as r:
        assert r.status in (201, 409), await r.text()
    for i in range(BIG_LIST_ITEMS):
        item = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"big-{i}"},
                "data": {"blob": "x" * BIG_ITEM_BYTES}}
        async with session.post(f"{url}{BIG_LIST_PATH}", json=item) as r:
            assert r.status in (201, 409), await r.text()


async def big_list_ms(fetch: Any, alongside: Any = None) -> tuple[float, float | None]:
    """Median milliseconds for the whole 10 MB list (after one warm-up), and with
    ``alongside`` (fetched in turn with it) that one's median."""
    for warm_up in (fetch, alongside):
        if warm_up is not None:
            size = await warm_up()
            assert size > BIG_LIST_ITEMS * BIG_ITEM_BYTES, size
    if alongside is None:
        return statistics.median(await timed(fetch, BIG_ROUNDS)) * 1000, None
    samples, baseline = await timed_alongside(fetch, alongside, BIG_ROUNDS)
    return statistics.median(samples) * 1000, statistics.median(baseline) * 1000


async def big_list_cpu(
    fetch: Any, pids: dict[str, int], clock: Any = None
) -> dict[str, float]:
    """CPU ms per 10 MB list of each process in ``pids`` and of the whole machine (every
    process on it: API server, etcd, client), over lists fetched one after another alone.
    ``clock``: a process's CPU seconds (default ``run_seconds``, which counts only the
    threads alive when read: a process whose threads come and go needs ``cpu_seconds``)."""
    clock = clock or run_seconds
    rounds = 2 * BIG_ROUNDS
    before = {name: clock(pid) for name, pid in pids.items()}
    machine = machine_busy_seconds()
    await timed(fetch, rounds)
    row = {"big_cpu_machine": (machine_busy_seconds() - machine) * 1000 / rounds}
    for name, pid in pids.items():
        row[f"big_cpu_{name}"] = (clock(pid) - before[name]) * 1000 / rounds
    return row


def print_peer_table(rows: dict[str, dict[str, float]]) -> None:
    columns = [
        ("seq p50 ms", "p50", "{:.2f}"),
        ("seq p99 ms", "p99", "{:.2f}"),
        ("direct p50 ms", "p50_alongside", "{:.2f}"),
        ("req/s c16", "c16", "{:,.0f}"),
        ("req/s c64", "c64", "{:,.0f}"),
        ("CPU ms/req gw", "cpu_gateway", "{:.3f}"),
        ("CPU ms/req agent", "cpu_agent", "{:.3f}"),
        ("idle RSS gw MiB", "idle_gateway", "{:.0f}"),
        ("idle RSS agent MiB", "idle_agent", "{:.0f}"),
        ("peak RSS gw MiB", "rss_gateway", "{:.0f}"),
        ("peak RSS agent MiB", "rss_agent", "{:.0f}"),
        ("10 MB list ms", "big", "{:.0f}"),
        ("10 MB direct ms", "big_alongside", "{:.0f}"),
        ("10 MB x direct", "big_ratio", "{:.2f}"),
        ("10 MB CPU ms gw", "big_cpu_gateway", "{:.1f}"),
        ("10 MB CPU ms agent", "big_cpu_agent", "{:.1f}"),
        ("10 MB CPU ms all", "big_cpu_machine", "{:.0f}"),
    ]
    width = 19
    print(f"{'GET /version':<22}" + "".join(f"{title:>{width}}" for title, _, _ in columns))
    for label, row in rows.items():
        cells = [fmt.format(row[key]) if key in row else "-" for _, key, fmt in columns]
        print(f"{label:<22}" + "".join(f"{cell:>{width}}" for cell in cells))
    direct = rows.get("direct (no tunnel)", {})
    for label, row in rows.items():
        if label in ("direct (no tunnel)",) or "p50" not in direct:
            continue
        beside = row.get("p50_alongside", direct["p50"])
        print(f"{label}: overhead over direct at p50 {row['p50'] - direct['p50']:.2f} ms "
              f"({row['p50'] - beside:.2f} ms over the direct GETs made in turn with its own), "
              f"c64 {row['c64'] / direct['c64']:.0%} of direct")


async def peer_comparison(
    env: Environment, tmp: Path, profile_dir: Path | None, floor: bool = False,
    interleave: bool = False,
) -> None:
    """--peer: the same load direct, through OpenChoreo's pair, and through ours (and with
    ``floor``, through chains of two bare TLS relays: RELAYS)."""
    sys.path.insert(0, str(REPO))  # the interop tests' process wrappers, reused
    from tests.interop import peers  # noqa: PLC0415
    from workflowplane.testenv import peer  # noqa: PLC0415

    binaries = peer.ensure()
    if floor:
        go_relay()  # built (once) before anything runs beside it
    cp, wp = env[CONTROL_PLANE], env[WORKFLOW_PLANE]
    pki = peers.GatewayPKI(tmp / "pki")
    rows: dict[str, dict[str, float]] = {}
    direct_ssl = ssl.create_default_context(cadata=wp.ca.cert_pem.decode())  # type: ignore[union-attr]
    direct_ssl.load_cert_chain(*_admin_files(wp))
    s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=direct_ssl))

    async def direct() -> None:
        async with s.get(f"{wp.url}/version") as r:
            await r.read()

    async def direct_big() -> int:
        async with s.get(f"{wp.url}{BIG_LIST_PATH}", headers=PLAIN) as r:
            return len(await r.read())

    try:
        await make_big_list(s, wp.url)
        if interleave:
            await interleaved(cp, wp, pki, binaries, tmp, direct, direct_big, floor)
            return
        rows["direct (no tunnel)"] = await measure(direct, {})
        rows["direct (no tunnel)"]["big"], _ = await big_list_ms(direct_big)
        rows["direct (no tunnel)"].update(await big_list_cpu(direct_big, {}))
        await _pairs(cp, wp, pki, binaries, tmp, rows, profile_dir, direct, direct_big)
        if floor:
            for kind in RELAYS:
                await _relay_pair(wp, tmp, rows, direct, direct_big, kind)
    finally:
        await s.close()
    print(f"machine: {os.cpu_count()} cores, loopback, {interpreter()}; {SEQUENTIAL} sequential "
          f"GETs, then 3 s at each concurrency; CPU per request over all of them; 10 MB list: median of "
          f"{BIG_ROUNDS}, its CPU over {2 * BIG_ROUNDS} more (all: every process on the machine)")
    print_peer_table(rows)
    if profile_dir is not None:
        for name in ("gateway", "agent"):
            print(summary(profile_dir / f"{name}.txt"))


PAIRS = (("go", "OpenChoreo (Go) pair"), ("ours", "workflowplane pair"))
FLOOR_RELAYS = ("uvloop", "go")  # the bare relays --interleave --floor runs among the pairs


@dataclass
class RunningPair:
    """A pair up and its agent connected: its calls and its processes."""

    proxied: Any
    proxied_big: Any
    pids: dict[str, int]


@contextlib.asynccontextmanager
async def running_pair(
    kind: str, cp: Any, wp: Any, pki: Any, binaries: Any, tmp: Path
) -> AsyncIterator[RunningPair]:
    """OpenChoreo's pair (``go``) or ours, started with the chart's command lines, until the
    block ends."""
    from tests.interop import peers  # noqa: PLC0415

    gateway_kind = peers.GoGateway if kind == "go" else peers.OurGateway
    extra = {"binaries": binaries} if kind == "go" else {}
    gateway = gateway_kind(cp, pki, tmp / f"{kind}-gateway.log", log_level="info", **extra)
    gateway.start()
    plane_id = f"bench-{kind}"
    agent = peers.AgentProcess(kind, binaries, gateway.public_url, pki.file("server-ca.crt"),
                               plane_id, wp.kubeconfig, tmp / f"{kind}-agent",
                               extra=["--log-level=info"])
    manifest = {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "WorkflowPlane",
                "metadata": {"name": plane_id, "namespace": "default"},
                "spec": {"planeID": plane_id,
                         "clusterAgent": {"clientCA": {"value": agent.ca_pem}}}}
    kubectl(cp.kubeconfig, cp.context, "apply", "-f", "-", input=json.dumps(manifest))
    api = peers.InternalAPI(gateway.internal_url, pki.caller_ssl())
    try:
        agent.start()
        cr = ("default", plane_id)
        deadline = time.monotonic() + 60
        while not await api.connected(plane_id, cr):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} agent not connected:\n{peers.tail(agent.log)}")
            await asyncio.sleep(0.2)

        async def proxied() -> None:
            reply = await api.proxy(plane_id, cr, "GET", "/version")
            assert reply.status == 200, reply.body

        async def proxied_big() -> int:
            reply = await api.proxy(plane_id, cr, "GET", BIG_LIST_PATH, headers=PLAIN)
            assert reply.status == 200, reply.body[:300]
            return len(reply.body)

        yield RunningPair(proxied, proxied_big,
                          {"gateway": gateway.process.pid, "agent": agent.process.pid})
    finally:
        await api.close()
        agent.stop()
        gateway.stop()


async def _pairs(
    cp: Any, wp: Any, pki: Any, binaries: Any, tmp: Path, rows: dict[str, dict[str, float]],
    profile_dir: Path | None, direct: Any, direct_big: Any,
) -> None:
    """Each pair in turn: started, measured (direct calls in turn with its own), stopped."""
    from tests.interop import peers  # noqa: PLC0415

    with peers.health_port_lock():
        for kind, label in PAIRS:
            async with running_pair(kind, cp, wp, pki, binaries, tmp) as pair:
                pids = pair.pids
                idle = {f"idle_{name}": rss_mib(pid) for name, pid in pids.items()}
                spied = profile_dir if kind == "ours" else None
                row = {**idle, **await measure(pair.proxied, pids, spied, alongside=direct)}
                big, big_direct = await big_list_ms(pair.proxied_big, alongside=direct_big)
                assert big_direct is not None
                row.update(big=big, big_alongside=big_direct, big_ratio=big / big_direct)
                row.update(await big_list_cpu(pair.proxied_big, pids))
                rows[label] = row


ROUNDS, PER_ROUND, BIG_PER_ROUND = 6, 250, 3


async def interleaved(cp: Any, wp: Any, pki: Any, binaries: Any, tmp: Path, direct: Any,
                      direct_big: Any, floor: bool) -> None:
    """--interleave: both pairs up at once, and every call made in turn with the other
    paths' (direct, Go's pair, ours, in an order that rotates), so the machine's drift over
    minutes falls on all three alike. Prints each path's p50 and each pair's overhead over
    direct, over all calls and per round (the spread of the rounds is the noise). With
    ``floor``, two chains of bare relays (uvloop's, Go's) are among the paths too."""
    from tests.interop import peers  # noqa: PLC0415

    with peers.health_port_lock():
        async with contextlib.AsyncExitStack() as stack:
            calls = {"direct": (direct, direct_big)}
            for kind, _ in PAIRS:
                pair = await stack.enter_async_context(
                    running_pair(kind, cp, wp, pki, binaries, tmp))
                calls[kind] = (pair.proxied, pair.proxied_big)
            for kind in FLOOR_RELAYS if floor else ():
                relays = await stack.enter_async_context(running_relays(kind, wp, tmp))
                calls[f"relay-{kind}"] = (relays.proxied, relays.proxied_big)
            for small, _ in calls.values():
                await timed(small, WARMUP)
            rounds: list[dict[str, list[float]]] = []
            for _ in range(ROUNDS):
                rounds.append(await _round(calls, PER_ROUND, big=False))
            big_rounds = [await _round(calls, BIG_PER_ROUND, big=True) for _ in range(ROUNDS)]
    print(f"interleaved ({interpreter()}): {ROUNDS} rounds of {PER_ROUND} GET /version per "
          f"path and {BIG_PER_ROUND} 10 MB lists per path, each call in turn with the other "
          "paths'")
    _print_interleaved("GET /version p50 ms", rounds, statistics.median, "{:.3f}", "over")
    _print_interleaved("10 MB list median ms", big_rounds, statistics.median, "{:.2f}", "x")


async def _round(calls: dict[str, tuple[Any, Any]], count: int, big: bool) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for i in range(count):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name][1 if big else 0]
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def _print_interleaved(title: str, rounds: list[dict[str, list[float]]], stat: Any, fmt: str,
                       compare: str) -> None:
    every = {name: [x for r in rounds for x in r[name]] for name in rounds[0]}
    whole = {name: stat(values) for name, values in every.items()}
    per_round = [{name: stat(values) for name, values in r.items()} for r in rounds]

    def against(row: dict[str, float], name: str) -> float:
        if compare == "x":
            return row[name] / row["direct"]
        return row[name] - row["direct"]

    cells = ", ".join(f"{name} {fmt.format(value)}" for name, value in whole.items())
    print(f"{title}: {cells}")
    for kind, label in PATHS.items():
        if kind not in whole:
            continue
        spread = sorted(against(r, kind) for r in per_round)
        what = "x direct" if compare == "x" else "ms over direct"
        print(f"  {label}: {fmt.format(against(whole, kind))} {what} "
              f"(rounds {fmt.format(spread[0])}–{fmt.format(spread[-1])})")
    for other in ("go", "relay-go"):
        if other not in whole:
            continue
        gaps = sorted(against(r, "ours") - against(r, other) for r in per_round)
        behind = sum(gap > 0 for gap in gaps)
        unit = "x" if compare == "x" else " ms"
        print(f"  ours minus {PATHS[other]}: "
              f"{fmt.format(against(whole, 'ours') - against(whole, other))}{unit} "
              f"(rounds {fmt.format(gaps[0])}–{fmt.format(gaps[-1])}; ours behind in "
              f"{behind} of {len(gaps)})")


RELAYS = {"uvloop": "TLS relay pair, uvloop", "threads": "TLS relay pair, threads",
          "go": "TLS relay pair, Go"}
PATHS = {**dict(PAIRS), **{f"relay-{kind}": label for kind, label in RELAYS.items()}}


def go_relay() -> Path:
    """bench/go_relay built (once per source version) into the cache, beside the tools."""
    from workflowplane.testenv.gobuild import GoBuild, Step  # noqa: PLC0415

    source = REPO / "bench" / "go_relay"
    files = ("go.mod", "main.go")
    version = hashlib.sha256(b"".join((source / f).read_bytes() for f in files)).hexdigest()[:16]

    def prepare(work: Path) -> None:
        (work / "src").mkdir(exist_ok=True)
        for name in files:
            shutil.copyfile(source / name, work / "src" / name)

    build = GoBuild(
        name="go_relay", version=version, outputs=("go_relay",), group="bench",
        prepare=prepare,
        steps=lambda go: [Step("build go_relay", [go, "build", "-trimpath", "-o",
                                                  "{out}/go_relay", "."], "src",
                               {"GOFLAGS": "-buildvcs=false"})])
    return build.ensure() / "go_relay"


@contextlib.asynccontextmanager
async def running_relays(kind: str, wp: Any, tmp: Path) -> AsyncIterator[RunningPair]:
    """Two relays of ``kind`` (RELAYS) chained client -> relay B -> relay A -> API server,
    TLS on every hop, until the block ends: what two processes cost that only decrypt and
    re-encrypt, as our gateway and agent must."""
    ca = generate_ca("bench relay CA")
    leaf = issue_certificate(ca, "relay", client=False, server=True, ip_addresses=["127.0.0.1"])
    files = {}
    for name, pem in (("relay.crt", leaf.cert_pem), ("relay.key", leaf.key_pem)):
        files[name] = tmp / name
        files[name].write_bytes(pem)
    api_port = int(wp.url.rsplit(":", 1)[1])
    a_port, b_port = free_port(), free_port()
    python_relay = [sys.executable, str(REPO / "bench" / "tls_relay.py")]
    relay = [str(go_relay())] if kind == "go" else python_relay
    mode = ["--threads"] if kind == "threads" else []
    tls = [str(files["relay.crt"]), str(files["relay.key"])]
    client_ssl = ssl.create_default_context(cadata=ca.cert_pem.decode())
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))
    relays: list[asyncio.subprocess.Process] = []
    try:
        for listen, upstream, client in ((a_port, api_port, _admin_files(wp)), (b_port, a_port, ())):
            relays.append(await asyncio.create_subprocess_exec(
                *relay, str(listen), str(upstream), *tls, *client, *mode, stdout=subprocess.PIPE))
            stdout = relays[-1].stdout
            assert stdout is not None and await stdout.readline() == b"ready\n", f"{kind} relay"

        async def relayed() -> None:
            async with session.get(f"https://127.0.0.1:{b_port}/version") as r:
                assert r.status == 200
                await r.read()

        async def relayed_big() -> int:
            async with session.get(f"https://127.0.0.1:{b_port}{BIG_LIST_PATH}",
                                   headers=PLAIN) as r:
                return len(await r.read())

        # their places in the chain
        yield RunningPair(relayed, relayed_big, {"agent": relays[0].pid, "gateway": relays[1].pid})
    finally:
        await session.close()
        for process in relays:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()


async def _relay_pair(
    wp: Any, tmp: Path, rows: dict[str, dict[str, float]], direct: Any, direct_big: Any,
    kind: str,
) -> None:
    """--floor: the same load through two relays of ``kind``."""
    async with running_relays(kind, wp, tmp) as relays:
        pids = relays.pids
        label = RELAYS[kind]
        idle = {f"idle_{name}": rss_mib(pid) for name, pid in pids.items()}
        rows[label] = {**idle, **await measure(relays.proxied, pids, alongside=direct)}
        big, big_direct = await big_list_ms(relays.proxied_big, alongside=direct_big)
        assert big_direct is not None
        rows[label].update(big=big, big_alongside=big_direct, big_ratio=big / big_direct)
        # a thread per connection: one that ended would take its CPU out of run_seconds
        clock = cpu_seconds if kind == "threads" else None
        rows[label].update(await big_list_cpu(relays.proxied_big, pids, clock))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", default="1000,5000")
    parser.add_argument("--reconnect", default="100,1000")
    parser.add_argument("--profile", type=Path, default=None,
                        help="with --peer: py-spy our gateway and agent into this directory")
    parser.add_argument("--peer", action="store_true",
                        help="only: direct vs OpenChoreo's Go pair vs ours, side by side")
    parser.add_argument("--floor", action="store_true",
                        help="with --peer: also chains of two bare TLS relays (bench/tls_relay.py "
                             "with uvloop and with threads, bench/go_relay in Go)")
    parser.add_argument("--interleave", action="store_true",
                        help="with --peer: instead, both pairs up at once and every call in "
                             "turn with the other paths' (the fairest p50 and 10 MB comparison)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wp-bench-"))
    if args.peer:
        env = Environment(tmp / "env", [CONTROL_PLANE, WORKFLOW_PLANE])
        env.start()
        try:
            cp = env[CONTROL_PLANE]
            kubectl(cp.kubeconfig, cp.context, "apply", "--server-side", "-f",
                    str(REPO / "deploy" / "crds") + "/")
            kubectl(cp.kubeconfig, cp.context, "wait", "--for=condition=Established", "crd",
                    "--all")
            await peer_comparison(env, tmp, args.profile, args.floor, args.interleave)
        finally:
            env.stop()
        return
    bench = Bench(tmp)
    bench.env.start()
    try:
        cp = bench.env[CONTROL_PLANE]
        kubectl(
            cp.kubeconfig,
            cp.context,
            "apply",
            "--server-side",
            "-f",
            str(REPO / "deploy" / "crds") + "/",
        )
        kubectl(cp.kubeconfig, cp.context, "wait", "--for=condition=Established", "crd", "--all")
        bench.start_gateway()
        ca = await gateway_ca(bench)
        client = await gateway_client(bench)
        print(
            f"machine: {os.cpu_count()} cores; gateway pid {bench.gateway.pid if bench.gateway else '?'}"
        )
        await latency_and_throughput(bench, client, ca)
        await client.close()
        await idle_agents(
            bench,
            ca,
            [int(x) for x in args.idle.split(",") if x],
            [int(x) for x in args.reconnect.split(",") if x],
        )
    finally:
        if bench.gateway is not None and bench.gateway.poll() is None:
            bench.stop_gateway()
        bench.env.stop()


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
