"""OpenChoreo's agent command line as its Helm chart renders it (read from the peer's chart).

A small renderer for the ``args:`` of ``templates/cluster-agent/deployment.yaml``: each
``{{ .Values.x.y }}`` (with an optional ``| default …``) is replaced from ``values.yaml`` plus
overrides; the ``tls.enabled`` blocks are kept (its default). Tests use it to start both agents,
OpenChoreo's and ours, with the very same arguments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from workflowplane.testenv.peer import source_dir

CHART = Path("install/helm/openchoreo-workflow-plane")
_VALUE = r"\{\{\s*\.Values\.([\w.]+)(?:\s*\|\s*default[^}]*)?\s*\}\}"


def chart_dir() -> Path:
    return source_dir() / CHART


def _lookup(values: dict[str, Any], dotted: str) -> str:
    node: Any = values
    for key in dotted.split("."):
        node = node[key]
    return str(node).lower() if isinstance(node, bool) else str(node)


def agent_args(overrides: dict[str, Any] | None = None) -> list[str]:
    """The agent container's args; ``overrides`` are ``clusterAgent`` values (e.g. planeID)."""
    chart = chart_dir()
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["clusterAgent"].update(overrides or {})
    template = (chart / "templates/cluster-agent/deployment.yaml").read_text()
    block = template.split("args:", 1)[1].split("env:", 1)[0]
    args = []
    for raw in block.splitlines():
        line = raw.strip()
        if line.startswith("- --"):
            args.append(re.sub(_VALUE, lambda m: _lookup(values, m.group(1)), line[2:]))
    if not args or any("{{" in arg for arg in args):
        raise AssertionError(f"cannot render the chart's agent args: {args}")
    return args


def mounted(args: list[str], mounts: dict[str, Path]) -> list[str]:
    """The args with the chart's volume mount points (``/certs``) mapped to local directories."""
    out = []
    for arg in args:
        mapped = arg
        for mount, local in mounts.items():
            mapped = mapped.replace(f"={mount}/", f"={local}/")
        out.append(mapped)
    return out
