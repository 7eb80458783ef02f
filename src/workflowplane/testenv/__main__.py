"""Build or locate the test environment's binaries: ``python -m workflowplane.testenv``.

Without options: the API servers (kube-apiserver, etcd). ``--plane-systems``: also what a
local workflow plane runs (kube-scheduler, kube-controller-manager, kwok, Argo's
workflow-controller, External Secrets), each with
progress and its build time; ``--plane-systems argo,kwok`` builds only those. ``--peer``:
also OpenChoreo's Go gateway and agent, which the interop tests pair ours with.
"""

from __future__ import annotations

import argparse
import sys
import time

from workflowplane.testenv import assets, peer, plane_systems
from workflowplane.testenv.gobuild import BuildError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workflowplane.testenv")
    parser.add_argument(
        "--plane-systems",
        nargs="?",
        const=",".join(plane_systems.ALL),
        default="",
        metavar="NAMES",
        help=f"also build the plane's systems (default all: {', '.join(plane_systems.ALL)})",
    )
    parser.add_argument(
        "--peer", action="store_true", help="also build OpenChoreo's gateway and agent"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    names = [name for name in args.plane_systems.split(",") if name]
    try:
        found = assets.ensure()
        print(f"API server binaries: {found.kube_apiserver.parent}", file=sys.stderr)
        for name in names:
            started = time.monotonic()
            plane_systems.ensure([name])
            took = time.monotonic() - started
            where = plane_systems.RECIPES[name].target
            print(f"{name}: {where} (ready in {took:.0f}s)", file=sys.stderr)
        if args.peer:
            peer.build_if_present()
    except (BuildError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
