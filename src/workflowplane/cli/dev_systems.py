"""The plane systems of ``wpctl dev``: Argo's controller, kube-scheduler, the garbage
collector (kube-controller-manager), kwok and External Secrets' controller on every plane.

``dev up`` starts one background process (``wpctl dev plane-systems``) once the planes are
Ready: it builds the binaries the first time (minutes; progress in its log), then starts the
systems on every plane and restarts any that exits, on the ports recorded for that plane. It
says where it is in ``plane-systems.json`` beside the dev state, which ``dev status`` and
``dev up`` read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from workflowplane.cli.state import read_state_file, write_state_file
from workflowplane.testenv import plane_systems
from workflowplane.testenv.plane_runtime import PlaneRuntime, fake_secret_store
from workflowplane.testenv.tools import kubectl

COMPONENT = "plane-systems"
# The local planes' secret store (ClusterWorkflowPlane default names it): External Secrets'
# fake provider, with Git credentials under `git/app` for `-p repository.secretRef=git/app`.
SECRET_STORE = fake_secret_store(
    "default", {"git/app": json.dumps({"username": "git", "password": "local-dev-token"})}
)
STATE_FILE = "plane-systems.json"
RUNNING, BUILDING, STARTING, FAILED = "running", "building", "starting", "failed"
WATCH_SECONDS = 2.0


def write_state(root: Path, state: str, detail: str = "") -> None:
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # Whole: ``dev up`` and ``dev status`` read it while this process writes it.
    write_state_file(root / STATE_FILE, {"state": state, "detail": detail, "since": since})


def read_state(root: Path) -> dict[str, Any]:
    return read_state_file(root / STATE_FILE)


def _last_progress(log: Path) -> str:
    """The build's latest step, as its progress line says (``==> build kwok``)."""
    if not log.exists():
        return ""
    steps = [
        line for line in log.read_text(errors="replace").splitlines() if line.startswith("==>")
    ]
    return steps[-1].removeprefix("==> ").split(" (in ")[0] if steps else ""


def describe(root: Path, log: Path) -> str:
    """One line for ``dev status``: what the background process is doing."""
    state = read_state(root)
    if not state:
        return "not started (wpctl dev up starts them; --no-argo skips them)"
    what = state["state"]
    if what == BUILDING:
        step = _last_progress(log)
        return f"building (first time only; {step or 'starting'}; since {state['since']})"
    if what == FAILED:
        return f"FAILED: {state['detail']} (log: {log})"
    return f"{what} {state['detail']}".strip()


def cached() -> bool:
    return not plane_systems.missing()


def supervise(args: argparse.Namespace) -> int:
    """``wpctl dev plane-systems``: build, start on every plane, keep running (background)."""
    root, planes = Path(args.root), [name for name in args.planes.split(",") if name]
    missing = plane_systems.missing()
    if missing:
        write_state(root, BUILDING, ", ".join(missing))
    try:
        binaries = plane_systems.ensure()
        write_state(root, STARTING, f"on {', '.join(planes)}")
        runtimes = [PlaneRuntime.resumed(root / name, f"wp-{name}", binaries) for name in planes]
        for runtime in runtimes:
            runtime.start()
            store = json.dumps(SECRET_STORE)
            kubectl(runtime.kubeconfig, runtime.context, "apply", "-f", "-", input=store)
    except RuntimeError as exc:  # BuildError, StartError, or kubectl refusing the store
        write_state(root, FAILED, str(exc).splitlines()[0])
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    write_state(root, RUNNING, f"on {', '.join(planes)} ({', '.join(plane_systems.ALL)})")
    print(f"==> running on {', '.join(planes)}", file=sys.stderr, flush=True)
    while True:
        time.sleep(WATCH_SECONDS)
        for runtime in runtimes:
            for name in runtime.restart_exited():
                print(f"==> {name} of {runtime.context} exited; restarted", file=sys.stderr)


def wait_running(root: Path, timeout: float = 90.0) -> dict[str, Any]:
    """The background process's state once it is running or failed (or at the timeout)."""
    deadline = time.monotonic() + timeout
    state = read_state(root)
    while state.get("state") not in (RUNNING, FAILED) and time.monotonic() < deadline:
        time.sleep(0.3)
        state = read_state(root)
    return state
