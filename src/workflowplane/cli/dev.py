"""``wpctl dev up|status|down``: the whole system on one machine (the README's first command).

``up`` starts a control plane API server and one API server per workflow plane, installs the
CRDs, starts the control plane (gateway + controller) and one agent per workflow plane as
background processes, registers each plane exactly as the reference page describes (the CA
read from ``cluster-agent-tls`` with kubectl, a WorkflowPlane created with it inline), waits
until every plane is Ready and prints a status table. State lives under
``$WORKFLOWPLANE_STATE/dev``: data, logs, one kubeconfig, and the pid of everything started, so
``down`` leaves no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from workflowplane.cli import dev_systems
from workflowplane.cli.doctor import Report, check_components
from workflowplane.cli.errors import EXIT_FAILURE, EXIT_UNAVAILABLE, CliError
from workflowplane.cli.get import render_table, row
from workflowplane.cli.state import (
    GATEWAY_REPLICA,
    dev_gateway_urls,
    dev_health_urls,
    read_processes,
    state_root,
    write_state_file,
)
from workflowplane.cli.testenv import damaged_record, recorded, running
from workflowplane.testenv import (
    CONTROL_PLANE,
    WORKFLOW_PLANE,
    AssetsError,
    Environment,
    StartError,
    StateError,
    free_port,
    stop_detached,
)
from workflowplane.testenv.apiserver import process_alive, stop_process_group
from workflowplane.testenv.tools import gateway_server_ca, kubectl

CRD_DIR = Path(__file__).resolve().parent.parent / "api" / "crds"
PLANE_CRD_DIR = Path(__file__).resolve().parent.parent / "api" / "workflow_plane_crds"
# Present in a source checkout (the README's way in); an installed wheel has no samples.
SAMPLE_WORKFLOWS = Path(__file__).resolve().parents[3] / "samples" / "workflows"
CP = f"wp-{CONTROL_PLANE}"
PLANE_NAMESPACE = "default"
PROCESSES = "processes.json"
READY_TIMEOUT = 120.0
GATEWAY_PORTS = ("public", "internal", "health")


def dev_dir() -> Path:
    return state_root() / "dev"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev", help="run the whole system locally (API servers, control plane, agents)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start everything (harmless when already up)")
    up.add_argument("--planes", type=_count, default=1, help="number of workflow planes")
    up.add_argument(
        "--gateways",
        type=_count,
        default=1,
        help="gateway replicas (the control plane's, then gateway-2 ...; each on its own "
        "ports of 127.0.0.1)",
    )
    up.add_argument(
        "--no-argo",
        action="store_true",
        help="the quick variant: no Argo controller, kube-scheduler or kwok (runs stay Pending)",
    )
    up.set_defaults(handler=_up)
    systems = actions.add_parser(
        dev_systems.COMPONENT,
        help="(started by up, in the background) build and run Argo and what it runs on",
    )
    systems.add_argument("--root", required=True, help="the dev state directory")
    systems.add_argument("--planes", required=True, help="comma-separated plane server names")
    systems.set_defaults(handler=dev_systems.supervise)
    status = actions.add_parser("status", help="show what is running")
    status.set_defaults(handler=_status)
    down = actions.add_parser("down", help="stop everything and delete its data")
    down.set_defaults(handler=_down)


def _count(text: str) -> int:
    """``--planes`` and ``--gateways``: checked before anything starts (0 planes failed only
    after the API servers were up, 0 gateways after the CRDs were installed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def plane_names(count: int) -> list[str]:
    return [WORKFLOW_PLANE if i == 0 else f"{WORKFLOW_PLANE}-{i + 1}" for i in range(count)]


def plane_id_of(server_name: str) -> str:
    """``default`` for the first workflow plane, ``plane-N`` for the N-th."""
    if server_name == WORKFLOW_PLANE:
        return "default"
    return "plane-" + server_name.removeprefix(f"{WORKFLOW_PLANE}-")


# ---- background processes ----------------------------------------------------------------


def _processes(root: Path) -> dict[str, Any]:
    return read_processes(root / PROCESSES)


def _remember(root: Path, name: str, pid: int, **extra: Any) -> None:
    data = _processes(root)
    data[name] = {"pid": pid, **extra}
    write_state_file(root / PROCESSES, data)


def _spawn(root: Path, name: str, args: list[str]) -> int:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wpctl = Path(sys.executable).parent / "wpctl"
    with (logs / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [str(wpctl), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _remember(root, name, process.pid)
    return process.pid


def _component_running(root: Path, name: str) -> bool:
    entry = _processes(root).get(name)
    return entry is not None and process_alive(int(entry["pid"]))


def _stop_components(root: Path) -> int:
    stopped = 0
    for entry in _processes(root).values():
        if process_alive(int(entry["pid"])):
            stop_process_group(int(entry["pid"]))
            stopped += 1
    (root / PROCESSES).unlink(missing_ok=True)
    return stopped


def _log_tail(root: Path, name: str) -> str:
    path = root / "logs" / f"{name}.log"
    lines = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
    return "\n".join(lines)


# ---- steps ---------------------------------------------------------------------------------


def _start_clusters(root: Path, planes: list[str]) -> Path:
    kubeconfig = root / "kubeconfig"
    if running(root):
        _say("API servers already running")
        return kubeconfig
    stop_detached(root, remove=True, owned=True)  # the CLI's own state directory
    _say(f"starting API servers: {CONTROL_PLANE} + {', '.join(planes)}")
    env = Environment(root, [CONTROL_PLANE, *planes], detached=True)
    try:
        env.start()
    except (AssetsError, StartError) as exc:
        raise CliError(str(exc), "see the log lines above", EXIT_UNAVAILABLE) from exc
    return kubeconfig


def _install_crds(kubeconfig: Path) -> None:
    _say("installing the CRDs in the control plane")
    kubectl(kubeconfig, CP, "apply", "--server-side", "-f", f"{CRD_DIR}/")
    kubectl(kubeconfig, CP, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


def _install_plane_crds(kubeconfig: Path, planes: list[str]) -> None:
    """Argo's Workflow and External Secrets' ExternalSecret CRDs: what runs create in a plane
    (a real plane gets them from those projects' installs), so runs are accepted at once. Only
    where missing: once Argo's controller runs, its own CRDs (all eight) replace these."""
    for server in planes:
        _say(f"installing the Argo Workflow and ExternalSecret CRDs in {server}")
        context = f"wp-{server}"
        for path in sorted(PLANE_CRD_DIR.glob("*.yaml")):
            created = kubectl(kubeconfig, context, "create", "-f", str(path), check=False)
            if created.returncode != 0 and "AlreadyExists" not in created.stderr:
                raise CliError(f"cannot install {path.name} in {server}: {created.stderr}")
        kubectl(
            kubeconfig,
            context,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        )


def _install_sample_workflows(kubeconfig: Path) -> None:
    if SAMPLE_WORKFLOWS.is_dir():
        _say(f"applying the sample workflows from {SAMPLE_WORKFLOWS}")
        kubectl(kubeconfig, CP, "apply", "-f", f"{SAMPLE_WORKFLOWS}/")


def _wait_http(url: str, what: str, root: Path, component: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if not _component_running(root, component):
                break
            time.sleep(0.3)
    raise CliError(
        f"{what} did not become ready:\n{_log_tail(root, component)}",
        f"full log: {root / 'logs' / (component + '.log')}",
        EXIT_UNAVAILABLE,
    )


def _ports(root: Path, name: str, names: tuple[str, ...]) -> dict[str, int]:
    """A component's ports: where it ran before (the agents and the controller expect it
    there), else free ones."""
    recorded = _processes(root).get(name) or {}
    return {key: int(recorded.get(key) or free_port()) for key in names}


def _replica_ports(root: Path, count: int) -> dict[str, dict[str, int]]:
    """The ports of replicas 2..count (``gateway-2`` ...), chosen before any starts, so the
    controller and the agents can be given every replica at once."""
    return {
        f"{GATEWAY_REPLICA}{i}": _ports(root, f"{GATEWAY_REPLICA}{i}", GATEWAY_PORTS)
        for i in range(2, count + 1)
    }


def _gateway_args(kubeconfig: Path, ports: dict[str, int]) -> list[str]:
    """A gateway's flags: the control plane, loopback, its ports."""
    listeners = [arg for key in GATEWAY_PORTS for arg in (f"--{key}-port", str(ports[key]))]
    return ["--kubeconfig", str(kubeconfig), "--context", CP, "--host", "127.0.0.1", *listeners]


def _start_control_plane(
    root: Path, kubeconfig: Path, peers: dict[str, dict[str, int]]
) -> dict[str, int]:
    if _component_running(root, "control-plane"):
        _say("control plane already running")
        entry = _processes(root)["control-plane"]
        return {"public": entry["public"], "health": entry["health"]}
    if "control-plane" in _processes(root):
        _say("the control plane had exited: restarting it on its recorded ports")
    ports = _ports(root, "control-plane", (*GATEWAY_PORTS, "controller_health"))
    _say(f"starting the control plane (gateway + controller), agents on :{ports['public']}")
    pid = _spawn(
        root,
        "control-plane",
        [
            "control-plane",
            *_gateway_args(kubeconfig, ports),
            "--controller-health-port",
            str(ports["controller_health"]),
            "--resync-seconds",
            "30",
            *(
                arg
                for peer in peers.values()
                for arg in ("--gateway-peer-url", f"https://127.0.0.1:{peer['internal']}")
            ),
        ],
    )
    _remember(root, "control-plane", pid, **ports)
    _wait_http(f"http://127.0.0.1:{ports['health']}/readyz", "the gateway", root, "control-plane")
    return ports


def _start_replica(root: Path, kubeconfig: Path, name: str, ports: dict[str, int]) -> None:
    """One more gateway replica (``wpctl gateway``), its PKI from the control plane's."""
    if _component_running(root, name):
        return
    _say(f"starting gateway replica {name}, agents on :{ports['public']}")
    pid = _spawn(
        root,
        name,
        ["gateway", *_gateway_args(kubeconfig, ports)],
    )
    _remember(root, name, pid, **ports)
    _wait_http(f"http://127.0.0.1:{ports['health']}/readyz", f"gateway {name}", root, name)


def _start_agent(
    root: Path, kubeconfig: Path, server: str, public_ports: list[int], ca_file: Path
) -> None:
    name = f"agent-{server}"
    if _component_running(root, name):
        return
    _say(f"starting the cluster agent in {server} (planeID {plane_id_of(server)})")
    health = free_port()  # one per agent: several run on this machine
    pid = _spawn(
        root,
        name,
        [
            "agent",
            "--health-host",
            "127.0.0.1",
            "--health-port",
            str(health),
            # One connection to every replica (docs/ha.md).
            "--server-urls",
            ",".join(f"wss://127.0.0.1:{port}" for port in public_ports),
            "--plane-id",
            plane_id_of(server),
            "--server-ca",
            str(ca_file),
            "--kubeconfig",
            str(kubeconfig),
            "--context",
            f"wp-{server}",
            *_allowed_args(root, server),
        ],
    )
    _remember(root, name, pid, health=health)


def _allowed_args(root: Path, server: str) -> list[str]:
    """With several planes each agent serves only the CRs registered for it below (issue #10);
    one plane stays open to any CR trusting its CA, as the reference page's flows expect."""
    planes = _planes_of(root)
    own = f"{PLANE_NAMESPACE}/{server}" + (",/default" if server == planes[0] else "")
    return ["--allowed-namespaces", own] if len(planes) > 1 else []


def _agent_ca(kubeconfig: Path, server: str, root: Path) -> str:
    """The reference page's command: jsonpath ca.crt from cluster-agent-tls, base64 -d."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = kubectl(
            kubeconfig,
            f"wp-{server}",
            "get",
            "secret",
            "cluster-agent-tls",
            "-n",
            "openchoreo-workflow-plane",
            "-o",
            r"jsonpath={.data.ca\.crt}",
            check=False,
        )
        if result.returncode == 0 and result.stdout:
            return base64.b64decode(result.stdout).decode()
        if not _component_running(root, f"agent-{server}"):
            break
        time.sleep(0.3)
    raise CliError(
        f"the agent in {server} did not create cluster-agent-tls:\n"
        f"{_log_tail(root, 'agent-' + server)}",
        exit_code=EXIT_UNAVAILABLE,
    )


def _register_plane(kubeconfig: Path, server: str, ca_pem: str) -> str:
    """Option 1 of the reference page: the CA inline in a WorkflowPlane."""
    name = server
    manifest = {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "WorkflowPlane",
        "metadata": {
            "name": name,
            "namespace": PLANE_NAMESPACE,
            "annotations": {
                "openchoreo.dev/display-name": f"Local {server}",
                "openchoreo.dev/description": "started by wpctl dev up",
            },
        },
        "spec": {"planeID": plane_id_of(server), "clusterAgent": {"clientCA": {"value": ca_pem}}},
    }
    kubectl(kubeconfig, CP, "apply", "-f", "-", input=json.dumps(manifest))
    return name


def _register_default_cluster_plane(kubeconfig: Path, server: str, ca_pem: str) -> None:
    """ClusterWorkflowPlane ``default`` for the first plane: where runs go when nothing else
    is named (the same agent, now also authorized for this CR), with a secret store name."""
    manifest = {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "ClusterWorkflowPlane",
        "metadata": {
            "name": "default",
            "annotations": {"openchoreo.dev/display-name": f"Local {server} (cluster default)"},
        },
        "spec": {
            "planeID": plane_id_of(server),
            "clusterAgent": {"clientCA": {"value": ca_pem}},
            "secretStoreRef": {"name": "default"},
        },
    }
    kubectl(kubeconfig, CP, "apply", "-f", "-", input=json.dumps(manifest))


def _wait_ready(kubeconfig: Path, names: list[str], root: Path) -> None:
    _say("waiting for the WorkflowPlanes to be Ready")
    deadline = time.monotonic() + READY_TIMEOUT
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            result = kubectl(
                kubeconfig,
                CP,
                "get",
                "wp",
                name,
                "-n",
                PLANE_NAMESPACE,
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                check=False,
            )
            if result.stdout == "True":
                pending.discard(name)
        time.sleep(0.3)
    if pending:
        raise CliError(
            f"not Ready after {READY_TIMEOUT:.0f}s: {', '.join(sorted(pending))}",
            f"see {root / 'logs'}; wpctl get wp -n {PLANE_NAMESPACE}",
            EXIT_UNAVAILABLE,
        )


def _print_status(kubeconfig: Path, planes: list[str]) -> None:
    data = json.loads(kubectl(kubeconfig, CP, "get", "wp,cwp", "-A", "-o", "json").stdout)
    print(render_table([row(item) for item in data["items"]]))
    print(f"\nkubeconfig: {kubeconfig}\ntry:")
    print(f"  export KUBECONFIG={kubeconfig}")
    print(f"  kubectl --context {CP} get planes -A")
    for server in planes:
        print(
            f"  kubectl --context wp-{server} get secret cluster-agent-tls "
            "-n openchoreo-workflow-plane -o jsonpath='{.data.ca\\.crt}' | base64 -d"
        )
    print("  wpctl get wp")
    print("  wpctl run docker-build -p repository.url=https://github.com/org/app -p image.name=app")
    print("  wpctl runs")


def _planes_of(root: Path) -> list[str]:
    return [s.name for s in recorded(root) if s.name != CONTROL_PLANE]


def _up(args: argparse.Namespace) -> int:
    root = dev_dir()
    wanted = plane_names(args.planes)
    kubeconfig = _start_clusters(root, wanted)
    planes = _planes_of(root)
    if len(planes) != len(wanted):  # a running environment keeps the planes it was made with
        _say(
            f"the environment already runs {len(planes)} workflow plane(s), not {len(wanted)}: "
            "wpctl dev down, then up --planes N, to change that"
        )
    _install_crds(kubeconfig)
    peers = _replica_ports(root, args.gateways)
    ports = _start_control_plane(root, kubeconfig, peers)
    for name, replica in peers.items():
        _start_replica(root, kubeconfig, name, replica)
    ca_file = gateway_server_ca(kubeconfig, CP, root / "gateway-ca.crt")
    public = [ports["public"], *(replica["public"] for replica in peers.values())]
    for server in planes:
        _start_agent(root, kubeconfig, server, public, ca_file)
    cas = {server: _agent_ca(kubeconfig, server, root) for server in planes}
    names = [_register_plane(kubeconfig, server, ca) for server, ca in cas.items()]
    _register_default_cluster_plane(kubeconfig, planes[0], cas[planes[0]])
    _install_plane_crds(kubeconfig, planes)
    _install_sample_workflows(kubeconfig)
    _wait_ready(kubeconfig, names, root)
    if not args.no_argo:
        _start_plane_systems(root, planes)
    _print_status(kubeconfig, planes)
    _say_plane_systems(root)
    return 0


def _start_plane_systems(root: Path, planes: list[str]) -> None:
    """The background process that builds (first time) and runs Argo, kube-scheduler, the
    garbage collector, kwok and External Secrets on every plane; waited for when the binaries
    are cached, so a run started next succeeds."""
    name = dev_systems.COMPONENT
    if not _component_running(root, name):
        building = not dev_systems.cached()
        _say(
            "building Argo, External Secrets, kube-scheduler, kube-controller-manager and kwok "
            "in the background"
            if building
            else "starting Argo, External Secrets, kube-scheduler, kube-controller-manager and "
            "kwok on every plane"
        )
        dev_systems.write_state(root, dev_systems.BUILDING if building else dev_systems.STARTING)
        _spawn(root, name, ["dev", name, "--root", str(root), "--planes", ",".join(planes)])
        if building:
            return
    state = dev_systems.wait_running(root)
    if state.get("state") == dev_systems.FAILED:
        raise CliError(
            f"the plane systems did not start: {state['detail']}",
            f"see {root / 'logs' / (name + '.log')}; or run without them: wpctl dev up --no-argo",
            EXIT_UNAVAILABLE,
        )


def _say_plane_systems(root: Path) -> None:
    name = dev_systems.COMPONENT
    log = root / "logs" / f"{name}.log"
    if name not in _processes(root):
        print("\nplane systems: skipped (--no-argo): runs are accepted and stay Pending")
    elif not _component_running(root, name):
        print(f"\nplane systems: STOPPED (wpctl dev up restarts them; log: {log})")
    else:
        print(f"\nplane systems: {dev_systems.describe(root, log)}")
    if dev_systems.read_state(root).get("state") == dev_systems.BUILDING:
        print(
            "  first start only: Argo, External Secrets, kwok, kube-scheduler and\n"
            "  kube-controller-manager are built from their Go modules (about 15 minutes\n"
            "  on 2 cores); runs wait Pending until then.\n"
            "  Progress: wpctl dev status"
        )


def _status(args: argparse.Namespace) -> int:
    """Exit 1 when a component is stopped or fails its health check (scripts can wait on it)."""
    root = dev_dir()
    if not running(root):
        raise CliError("the local environment is not running", "run: ./wp dev up")
    stopped = False
    for name in _processes(root):
        up = _component_running(root, name)
        stopped |= not up
        print(f"{name:32} {'running' if up else 'STOPPED'}")
    print("\ngateway replicas (internal API):", ", ".join(dev_gateway_urls()))
    print("\nhealth (each component's /healthz and /readyz):")
    report = Report()
    asyncio.run(check_components(dev_health_urls(), report))
    print()
    _print_status(root / "kubeconfig", _planes_of(root))
    _say_plane_systems(root)
    return EXIT_FAILURE if stopped or report.failed else 0


def _down(args: argparse.Namespace) -> int:
    root = dev_dir()
    damaged: CliError | None = None
    try:
        components = _stop_components(root) if root.exists() else 0
    except CliError as exc:  # still stop the API servers; the file is kept for its pids
        damaged, components = exc, 0
    try:
        stopped = stop_detached(root, remove=damaged is None, owned=True)
    except StateError as exc:  # the servers' pids are unreadable: nothing stopped or deleted
        raise damaged or damaged_record(exc) from None
    print(
        f"stopped {components} component(s) and {len(stopped)} API server(s)"
        if stopped or components
        else "nothing was running"
    )
    if damaged is not None:
        raise damaged
    return 0
