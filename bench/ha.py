"""HA benchmark (issue #12): prints figures, asserts nothing.
Run: PYTHONPATH=src .venv/bin/python bench/ha.py [--replicas 3] [--agents 50]
     [--agents-per-process 25] [--loops 6] [--one-connection-only]
The issue's big case: --replicas 20 --agents 1000 --agents-per-process 100 (not run here by
default: it needs far more than this 2-core machine).

Every gateway replica is its own ``cluster-gateway`` process on 127.0.0.1 (its RSS from
/proc); agents are ours, several per process ("agent fleets"), each its own plane and
identity, dialling every replica (``--server-urls``) with the agent's default backoff
(1 s doubling to 30 s). Figures:
1. the cost of connections: gateway RSS per agent connection; one agent process's RSS
   dialling 1 replica and dialling 3;
2. time to full mesh after a replica starts: a rolling restart (SIGTERM drain, start again on
   the same address), per replica: process start to ready, and ready to every agent
   connected to it;
3. requests the callers saw fail (GET loops through a GatewayClient given every replica)
   during a kill -9 of one replica (and its restart), and during a rolling restart;
4. the same during a kill -9 of the replica holding the only connection of OpenChoreo's Go
   agent (dialling a round-robin Service in front of the replicas, its default 5 s
   --reconnect-delay), with the callers' default patience for a plane they reached lately,
   then without it (--gateway-agent-wait 0). ``--one-connection-only``: just this figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the integration tests' replica processes and load loops

from lightkube import AsyncClient  # noqa: E402
from tests.integration.ha.fleet import Fleet, GatewayProcess, fleet_of, plane_connected  # noqa: E402
from tests.integration.ha.load import Load, running_load  # noqa: E402
from tests.integration.ha.service import RoundRobinService, service_of  # noqa: E402
from tests.integration.harness import write_agent_identity  # noqa: E402
from tests.interop.peers import AgentProcess  # noqa: E402

from workflowplane.agent.config import AgentConfig  # noqa: E402
from workflowplane.agent.runner import Agent  # noqa: E402
from workflowplane.protocol.agent_patience import AgentPatience  # noqa: E402
from workflowplane.protocol.gateway_client import GatewayClient  # noqa: E402
from workflowplane.testenv import CONTROL_PLANE, WORKFLOW_PLANE, ApiServer, Environment  # noqa: E402
from workflowplane.testenv import peer as peer_build  # noqa: E402
from workflowplane.testenv.tools import async_client, gateway_server_ca, kubectl  # noqa: E402

WP = "workflowplane"
NAMESPACE = "default"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pid_of(replica: GatewayProcess) -> int:
    assert replica.process is not None
    return replica.process.pid


# ---- agents: fleets of in-process agents, one child process per fleet ----------------------


async def fleet_child(spec_file: str) -> None:
    """A child process running the agents of one fleet until it is killed."""
    spec = json.loads(await asyncio.to_thread(Path(spec_file).read_text))
    agents = [
        Agent(
            AgentConfig(
                server_url="" if "," in spec["urls"] else spec["urls"],
                server_urls=(spec["urls"],) if "," in spec["urls"] else (),
                plane_id=plane_id,
                server_ca_file=Path(spec["ca"]),
                secret_name=secret,
                kubeconfig=Path(spec["kubeconfig"]),
                context=spec["context"],
            )
        )
        for plane_id, secret in spec["agents"]
    ]
    await asyncio.gather(*(agent.run() for agent in agents))


class Agents:
    """The planes (one WorkflowPlane and one agent identity each) and their agent fleets."""

    def __init__(self, tmp: Path, control: ApiServer, plane: ApiServer, ca_file: Path) -> None:
        self.tmp, self.control, self.plane, self.ca_file = tmp, control, plane, ca_file
        self.planes: list[tuple[str, str]] = []  # (planeID, Secret name)
        self.children: list[asyncio.subprocess.Process] = []

    async def register(self, count: int) -> None:
        manifests = []
        for i in range(len(self.planes), len(self.planes) + count):
            plane_id, secret = f"bench-{i}", f"bench-agent-{i}"
            ca = await write_agent_identity(self.plane, secret)
            manifests.append(_plane_cr(f"wp-{i}", plane_id, ca))
            self.planes.append((plane_id, secret))
        kubectl(
            self.control.kubeconfig,
            self.control.context,
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        )

    async def start(self, urls: str, per_process: int, planes: list[tuple[str, str]]) -> None:
        for start in range(0, len(planes), per_process):
            self.children.append(await self.spawn(urls, planes[start : start + per_process]))

    async def spawn(self, urls: str, planes: list[tuple[str, str]]) -> asyncio.subprocess.Process:
        spec = {
            "urls": urls,
            "ca": str(self.ca_file),
            "kubeconfig": str(self.plane.kubeconfig),
            "context": self.plane.context,
            "agents": planes,
        }
        spec_file = _written(self.tmp, json.dumps(spec))
        with (self.tmp / f"{spec_file.stem}.log").open("wb") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--fleet-child", str(spec_file), stdout=log, stderr=log
            )

    async def stop(self, children: list[asyncio.subprocess.Process] | None = None) -> None:
        for child in children if children is not None else self.children:
            if child.returncode is None:
                child.kill()
                await child.wait()


def _written(directory: Path, text: str) -> Path:
    path = Path(tempfile.mkstemp(dir=directory, suffix=".json")[1])
    path.write_text(text)
    return path


def _plane_cr(name: str, plane_id: str, ca: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"planeID": plane_id, "clusterAgent": {"clientCA": {"value": ca.decode()}}},
    }


# ---- what the replicas see ------------------------------------------------------------------


async def connected_on(client: GatewayClient, plane_ids: set[str]) -> int:
    """How many of these planes have an agent on the replica ``client`` talks to."""
    try:
        answer = await client.all_status()
    except Exception:  # noqa: BLE001 (not up yet: none)
        return 0
    planes = answer.get("planes") or {}
    items = planes.values() if isinstance(planes, dict) else planes
    return sum(
        1
        for plane in items
        if plane.get("planeID") in plane_ids and int(plane.get("connectedAgents") or 0) > 0
    )


async def wait_until(check: Any, timeout: float = 600.0) -> float:  # noqa: ASYNC109
    """Seconds until ``check()`` is true (polled every 0.1 s)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise RuntimeError("not reached in time")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def one_replica_clients(fleet: Fleet) -> AsyncIterator[list[GatewayClient]]:
    clients = [await GatewayClient.from_secret(fleet.kube, r.internal_url) for r in fleet.replicas]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


async def full_mesh(clients: list[GatewayClient], plane_ids: set[str]) -> None:
    async def meshed() -> bool:
        counts = await asyncio.gather(*(connected_on(c, plane_ids) for c in clients))
        return all(count == len(plane_ids) for count in counts)

    await wait_until(meshed)


# ---- the figures ----------------------------------------------------------------------------


async def agent_rss(agents: Agents, fleet: Fleet, clients: list[GatewayClient]) -> None:
    """One agent process (idle, connected) dialling 1 replica, and 3."""
    await agents.register(2)
    one, three = agents.planes[-2], agents.planes[-1]
    mesh = ",".join(r.public_url for r in fleet.replicas[:3])
    dials = (("1 replica", fleet.replicas[0].public_url, one, 1), ("3", mesh, three, 3))
    for label, urls, plane, count in dials:
        child = await agents.spawn(urls, [plane])
        await wait_until(lambda p=plane[0], n=count: _on_all(clients[:n], p))
        await asyncio.sleep(2)  # settle after the handshakes (a figure, not a test)
        print(f"  agent process RSS dialling {label}: {rss_mib(child.pid):.1f} MiB")
        await agents.stop([child])


async def _on_all(clients: list[GatewayClient], plane_id: str) -> bool:
    counts = await asyncio.gather(*(connected_on(c, {plane_id}) for c in clients))
    return all(counts)


async def rolling_restart(fleet: Fleet, clients: list[GatewayClient], plane_ids: set[str]) -> None:
    for replica, client in zip(fleet.replicas, clients, strict=True):
        await replica.terminate()
        started = time.monotonic()
        await replica.start(fleet.kube)
        ready = time.monotonic() - started
        meshed = await wait_until(lambda c=client: _all_on(c, plane_ids))
        print(
            f"  {replica.name}: start to ready {ready:.1f} s, ready to all "
            f"{len(plane_ids)} agents connected {meshed:.1f} s"
        )


async def _all_on(client: GatewayClient, plane_ids: set[str]) -> bool:
    return await connected_on(client, plane_ids) == len(plane_ids)


def failed(load: Load, since: int) -> tuple[int, int]:
    outcomes = load.outcomes[since:]
    return len(outcomes), sum(1 for o in outcomes if o[1] != "200")


def api_servers(tmp: Path) -> Environment:
    env = Environment(tmp / "env", [CONTROL_PLANE, WORKFLOW_PLANE])
    env.start()
    control = env[CONTROL_PLANE]
    crds = str(REPO / "deploy/crds")
    kubectl(control.kubeconfig, control.context, "apply", "--server-side", "-f", crds)
    established = ("wait", "--for=condition=Established", "crd", "--all")
    kubectl(control.kubeconfig, control.context, *established)
    return env


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


async def mesh_and_cost(
    args: argparse.Namespace, fleet: Fleet, clients: list[GatewayClient], agents: Agents
) -> set[str]:
    """The agents started and meshed; what their connections cost. Their planeIDs."""
    before = [rss_mib(pid_of(r)) for r in fleet.replicas]
    await agents.register(args.agents)
    plane_ids = {p for p, _ in agents.planes}
    started = time.monotonic()
    await agents.start(fleet.public_urls, args.agents_per_process, agents.planes)
    await full_mesh(clients, plane_ids)
    print(
        "first full mesh (agent processes started to every agent on every replica): "
        f"{time.monotonic() - started:.1f} s"
    )
    after = [rss_mib(pid_of(r)) for r in fleet.replicas]
    print("cost of connections:")
    print(
        f"  gateway RSS per agent connection: "
        f"{(mean(after) - mean(before)) * 1024 / args.agents:.0f} KiB "
        f"(replica RSS {mean(before):.0f} -> {mean(after):.0f} MiB with {args.agents} agents)"
    )
    if len(fleet.replicas) >= 3:
        await agent_rss(agents, fleet, clients)
    return plane_ids


async def failures_under_load(
    args: argparse.Namespace, fleet: Fleet, clients: list[GatewayClient], planes: list[str]
) -> None:
    """GET loops over three planes: a kill -9 (and restart), then a rolling restart."""
    client = await fleet.client()
    load_planes = [(p, NAMESPACE, f"wp-{i}") for i, p in enumerate(planes[:3])]
    load = Load(client, load_planes, loops=max(1, args.loops // len(load_planes)))
    plane_ids = set(planes)
    try:
        async with running_load(load):
            await load.more(10)
            mark = len(load.outcomes)
            victim = fleet.replicas[0]
            await victim.kill()
            await load.more(20)
            await victim.start(fleet.kube)
            await wait_until(lambda: _all_on(clients[0], plane_ids))
            await load.more(10)
            total, bad = failed(load, mark)
            print(
                f"kill -9 of one replica (and its restart) under load: {bad} of {total} GETs "
                "failed for the caller"
            )
            mark = len(load.outcomes)
            print("rolling restart (SIGTERM drain, start again, next), time to full mesh:")
            await rolling_restart(fleet, clients, plane_ids)
            await load.more(10)
            total, bad = failed(load, mark)
            print(f"rolling restart under load: {bad} of {total} GETs failed for the caller")
    finally:
        await client.close()


async def one_connection_kill(fleet: Fleet, plane: ApiServer, tmp: Path) -> None:
    """OpenChoreo's Go agent dialling a Service; the replica holding it killed, twice: the
    callers with the default patience, then with none (a second replica is killed)."""
    control = fleet.control_plane
    binaries = await asyncio.to_thread(peer_build.ensure, log=False)
    async with service_of([r.public_port for r in fleet.replicas]) as service:
        agent = AgentProcess(
            kind="go",
            binaries=binaries,
            gateway_url=f"wss://127.0.0.1:{service.port}/ws",
            server_ca=gateway_server_ca(control.kubeconfig, control.context, tmp / "go-ca.crt"),
            plane_id="bench-go",
            kubeconfig=plane.kubeconfig,
            directory=tmp / "go-agent",
            extra=["--reconnect-delay=5s"],  # OpenChoreo's default
        )
        manifest = _plane_cr("wp-go", "bench-go", agent.ca_pem.encode())
        kubectl(control.kubeconfig, control.context, "apply", "-f", "-", input=json.dumps(manifest))
        agent.start()
        print("kill -9 of the replica holding a Go agent's only connection (via a Service):")
        try:
            for label, patience in (
                ("callers' default patience", AgentPatience()),
                ("callers without patience (--gateway-agent-wait 0)", AgentPatience(60.0, 0.0)),
            ):
                await _kill_holder(fleet, service, patience, label)
        finally:
            agent.stop()


async def _kill_holder(
    fleet: Fleet, service: RoundRobinService, patience: AgentPatience, label: str
) -> None:
    client = await fleet.client(patience)
    load = Load(client, [("bench-go", NAMESPACE, "wp-go")])
    try:
        await wait_until(lambda: plane_connected(client, "bench-go", NAMESPACE, "wp-go"))
        async with running_load(load):
            await load.more(10)
            mark, before = len(load.outcomes), len(service.routed)
            held = fleet.serving(service.routed[-1])
            await held.kill()
            back = await wait_until(lambda: _back(client, service, before, held.public_port))
            await load.more(10)
            total, bad = failed(load, mark)
        print(
            f"  {label}: {bad} of {total} GETs failed for the caller "
            f"(the agent back on a live replica {back:.1f} s after the kill)"
        )
    finally:
        await client.close()


async def _back(client: GatewayClient, service: RoundRobinService, since: int, dead: int) -> bool:
    redialled = service.redialled(since, dead)
    return redialled and await plane_connected(client, "bench-go", NAMESPACE, "wp-go")


async def run(args: argparse.Namespace, tmp: Path) -> None:
    env = api_servers(tmp)
    control, plane = env[CONTROL_PLANE], env[WORKFLOW_PLANE]
    kube: AsyncClient = async_client(control.kubeconfig, control.context)
    agents: Agents | None = None
    agents_line = (
        "no agent fleets"
        if args.one_connection_only
        else f"{args.agents} agents in fleets of {args.agents_per_process} per process"
    )
    print(f"machine: {os.cpu_count()} cores; {args.replicas} replicas, {agents_line}")
    try:
        async with (
            fleet_of(control, kube, tmp, "bench-gw", args.replicas) as fleet,
            one_replica_clients(fleet) as clients,
        ):
            if not args.one_connection_only:
                ca_file = gateway_server_ca(control.kubeconfig, control.context, tmp / "ca.crt")
                agents = Agents(tmp, control, plane, ca_file)
                await mesh_and_cost(args, fleet, clients, agents)
                planes = [p for p, _ in agents.planes[: args.agents]]
                await failures_under_load(args, fleet, clients, planes)
            if len(fleet.replicas) >= 3:  # two are killed
                await one_connection_kill(fleet, plane, tmp)
    finally:
        if agents is not None:
            await agents.stop()
        await kube.close()
        env.stop()


async def main() -> None:
    if sys.argv[1:2] == ["--fleet-child"]:
        await fleet_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--agents-per-process", type=int, default=25)
    parser.add_argument("--loops", type=int, default=6, help="concurrent GET loops in all")
    parser.add_argument(
        "--one-connection-only",
        action="store_true",
        help="only figure 4 (a Go agent's replica killed): no agent fleets",
    )
    args = parser.parse_args()
    await run(args, Path(tempfile.mkdtemp(prefix="wp-bench-ha-")))


if __name__ == "__main__":
    asyncio.run(main())
