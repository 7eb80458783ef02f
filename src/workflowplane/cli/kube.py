"""Kubeconfig handling shared by the operator commands (``--kubeconfig``, ``--context``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from workflowplane.cli.errors import EXIT_USAGE, CliError
from workflowplane.cli.state import state_root


def add_kubeconfig_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else wpctl dev's)",
    )


def kubeconfig_path(explicit: Path | None) -> Path:
    """``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``; on a machine with neither, the
    local environment's (``wpctl dev up``; its current context is the control plane), so the
    README's commands work as typed right after ``./wp dev up``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env:
        return Path(env)
    home = Path.home() / ".kube" / "config"
    dev = state_root() / "dev" / "kubeconfig"
    return dev if not home.exists() and dev.exists() else home


def client_for(kubeconfig: Path | None, context: str | None) -> AsyncClient:
    """A lightkube client for one context, or a CliError naming what is missing."""
    path = kubeconfig_path(kubeconfig)
    if not path.exists():
        raise CliError(
            f"kubeconfig {path} does not exist", "pass --kubeconfig, or set KUBECONFIG", EXIT_USAGE
        )
    config = KubeConfig.from_file(path)
    if context is not None and context not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise CliError(
            f"context {context!r} not found in {path}", f"known contexts: {known}", EXIT_USAGE
        )
    single = config.get(context_name=context)
    if single is None:
        raise CliError(f"{path} has no current context", "pass --context", EXIT_USAGE)
    return AsyncClient(config=single)
