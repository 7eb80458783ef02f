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
    ServerInfo,
    StartError,
    StateError,
    check_root,
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
        default=None,  # a string: Path("") would be the current directory
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
    """The state directory: the CLI's own, or one named with ``--dir``, which must be empty,
    missing, or an environment's (``down`` deletes it: nobody's files may be in it)."""
    if args.dir is None:
        return default_dir()
    if not args.dir.strip():
        raise CliError("--dir is empty: name a directory", exit_code=EXIT_USAGE)
    try:
        return check_root(Path(args.dir))
    except (StateError, OSError) as exc:
        raise CliError(f"--dir {exc}", exit_code=EXIT_USAGE) from exc


def _owned(args: argparse.Namespace) -> bool:
    return args.dir is None


def recorded(root: Path) -> list[ServerInfo]:
    """The servers recorded under ``root``; a damaged record is a CliError naming the file."""
    try:
        return read_state(root)
    except StateError as exc:
        raise damaged_record(exc) from exc


def damaged_record(exc: StateError) -> CliError:
    """A state file that cannot be read, said as a command's error (it names the file)."""
    return CliError(str(exc), exit_code=EXIT_UNAVAILABLE)


def running(root: Path) -> bool:
    servers = recorded(root)
    return bool(servers) and all(process_alive(pid) for s in servers for pid in s.pids)


def _up(args: argparse.Namespace) -> int:
    root = _dir(args)
    if running(root):
        print(f"already up; kubeconfig: {root / 'kubeconfig'}")
        return 0
    stop_detached(root, remove=True, owned=_owned(args))
    try:
        env = Environment(root, args.servers or [CONTROL_PLANE, WORKFLOW_PLANE], detached=True)
    except StateError as exc:
        raise CliError(f"--server: {exc}", exit_code=EXIT_USAGE) from exc
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
    root = _dir(args)
    try:
        stopped = stop_detached(root, remove=True, owned=_owned(args))
    except StateError as exc:  # read before anything is stopped: the file is kept
        raise damaged_record(exc) from exc
    print(f"stopped {len(stopped)} API server(s)" if stopped else "nothing was running")
    return 0


def _env(args: argparse.Namespace) -> int:
    root = _dir(args)
    if not running(root):
        raise CliError("no test environment is running", "run: wpctl testenv up")
    print(f"export KUBECONFIG={root / 'kubeconfig'}")
    return 0
