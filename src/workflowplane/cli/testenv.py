"""``wpctl testenv up|down|env``: bare API servers for experiments, outside of tests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from workflowplane.cli.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from workflowplane.cli.state import state_root
from workflowplane.testenv import (
    CONTROL_PLANE,
    WORKFLOW_PLANE,
    AssetsError,
    Environment,
    StartError,
    read_state,
    stop_detached,
)
from workflowplane.testenv.apiserver import process_alive


def default_dir() -> Path:
    return state_root() / "testenv"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "testenv",
        help="start/stop local API servers (control plane + workflow plane)",
        description="Real kube-apiserver + etcd pairs on loopback, one kubeconfig context each.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="state directory "
        "(default: $WORKFLOWPLANE_STATE/testenv or ~/.local/state/workflowplane)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the API servers (harmless when already up)")
    up.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="NAME",
        help=f"server name; repeatable (default: {CONTROL_PLANE}, {WORKFLOW_PLANE})",
    )
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="stop the API servers and delete their data")
    down.set_defaults(handler=_down)
    env = actions.add_parser("env", help="print the shell line that points kubectl at them")
    env.set_defaults(handler=_env)


def _dir(args: argparse.Namespace) -> Path:
    root = Path(args.dir) if args.dir else default_dir()
    if root.exists() and not root.is_dir():  # ``down`` would end in a NotADirectoryError
        raise CliError(f"--dir {root} is not a directory", exit_code=EXIT_USAGE)
    return root


def running(root: Path) -> bool:
    servers = read_state(root)
    return bool(servers) and all(process_alive(pid) for s in servers for pid in s.pids)


def _up(args: argparse.Namespace) -> int:
    root = _dir(args)
    if running(root):
        print(f"already up; kubeconfig: {root / 'kubeconfig'}")
        return 0
    stop_detached(root, remove=True)
    env = Environment(root, args.servers or [CONTROL_PLANE, WORKFLOW_PLANE], detached=True)
    try:
        env.start()
    except (AssetsError, StartError) as exc:
        raise CliError(str(exc), "see the log lines above", EXIT_UNAVAILABLE) from exc
    for server in env.servers.values():
        print(f"{server.context:24} {server.url}")
    print(f"kubeconfig: {env.kubeconfig}")
    print(f"try: export KUBECONFIG={env.kubeconfig}; kubectl --context wp-{CONTROL_PLANE} get ns")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = stop_detached(_dir(args), remove=True)
    print(f"stopped {len(stopped)} API server(s)" if stopped else "nothing was running")
    return 0


def _env(args: argparse.Namespace) -> int:
    root = _dir(args)
    if not running(root):
        raise CliError("no test environment is running", "run: wpctl testenv up")
    print(f"export KUBECONFIG={root / 'kubeconfig'}")
    return 0
