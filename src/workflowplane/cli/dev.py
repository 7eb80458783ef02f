"""``wpctl dev up|status|down``: the whole system on one machine, as the README's first command.

State lives under ``$WORKFLOWPLANE_STATE/dev``: the API servers' data, one kubeconfig with a
context per cluster, and the pids of every process started, so ``down`` leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from workflowplane.cli.errors import EXIT_UNAVAILABLE, CliError
from workflowplane.cli.state import state_root
from workflowplane.cli.testenv import running
from workflowplane.testenv import (
    CONTROL_PLANE,
    WORKFLOW_PLANE,
    AssetsError,
    Environment,
    StartError,
    stop_detached,
)
from workflowplane.testenv.tools import kubectl

CRD_DIR = Path(__file__).resolve().parent.parent / "api" / "crds"
SAMPLES = Path(__file__).resolve().parents[3] / "samples" / "reference"
EXAMPLE_NAMESPACES = ("my-org", "org1", "org2")


def dev_dir() -> Path:
    return state_root() / "dev"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run the whole system locally (API servers, control plane, agent)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start everything (harmless when already up)")
    up.set_defaults(handler=_up)
    status = actions.add_parser("status", help="show what is running")
    status.set_defaults(handler=_status)
    down = actions.add_parser("down", help="stop everything and delete its data")
    down.set_defaults(handler=_down)


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _start_clusters(root: Path) -> Path:
    kubeconfig = root / "kubeconfig"
    if running(root):
        _say("API servers already running")
        return kubeconfig
    stop_detached(root, remove=True)
    _say("starting a control plane and a workflow plane API server")
    env = Environment(root, [CONTROL_PLANE, WORKFLOW_PLANE], detached=True)
    try:
        env.start()
    except (AssetsError, StartError) as exc:
        raise CliError(str(exc), "see the log lines above", EXIT_UNAVAILABLE) from exc
    return kubeconfig


def _install_crds(kubeconfig: Path) -> None:
    _say("installing the CRDs in the control plane")
    context = f"wp-{CONTROL_PLANE}"
    kubectl(kubeconfig, context, "apply", "--server-side", "-f", f"{CRD_DIR}/")
    kubectl(
        kubeconfig, context, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"
    )


def _apply_examples(kubeconfig: Path) -> None:
    _say("applying the reference page's example WorkflowPlanes")
    context = f"wp-{CONTROL_PLANE}"
    for namespace in EXAMPLE_NAMESPACES:
        kubectl(kubeconfig, context, "create", "namespace", namespace, check=False)
    for example in sorted(SAMPLES.glob("*.yaml")):
        kubectl(kubeconfig, context, "apply", "-f", str(example))


def _print_planes(kubeconfig: Path) -> None:
    table = kubectl(kubeconfig, f"wp-{CONTROL_PLANE}", "get", "wp,cwp", "-A")
    print(table.stdout)
    print(f"kubeconfig: {kubeconfig}")
    print("try:")
    print(f"  export KUBECONFIG={kubeconfig}")
    print(f"  kubectl --context wp-{CONTROL_PLANE} get planes -A")
    print(f"  kubectl --context wp-{WORKFLOW_PLANE} get namespaces")


def _up(args: argparse.Namespace) -> int:
    root = dev_dir()
    kubeconfig = _start_clusters(root)
    _install_crds(kubeconfig)
    _apply_examples(kubeconfig)
    _print_planes(kubeconfig)
    return 0


def _status(args: argparse.Namespace) -> int:
    root = dev_dir()
    if not running(root):
        raise CliError("the local environment is not running", "run: ./wp dev up")
    _print_planes(root / "kubeconfig")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = stop_detached(dev_dir(), remove=True)
    print(f"stopped {len(stopped)} API server(s)" if stopped else "nothing was running")
    return 0
