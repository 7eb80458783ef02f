"""Where local environments keep their files between commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workflowplane.cli.errors import CliError
from workflowplane.controller.command import gateway_urls

# ``wpctl dev up --gateways N``: replicas 2..N run as processes named gateway-2 ... gateway-N.
GATEWAY_REPLICA = "gateway-"


def state_root() -> Path:
    """``$WORKFLOWPLANE_STATE``, else ``$XDG_STATE_HOME/workflowplane`` (~/.local/state)."""
    explicit = os.environ.get("WORKFLOWPLANE_STATE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "workflowplane"


def dev_gateway_urls() -> list[str]:
    """The local environment's gateway replicas' internal APIs, when ``wpctl dev up`` is
    running: the control plane's gateway, then each ``gateway-N`` replica."""
    recorded = read_processes(state_root() / "dev" / "processes.json")
    replicas = [recorded.get("control-plane", {})]
    replicas += [entry for name, entry in recorded.items() if name.startswith(GATEWAY_REPLICA)]
    return [f"https://127.0.0.1:{r['internal']}" for r in replicas if r.get("internal")]


def gateway_urls_or_dev(flag: str | None) -> list[str]:
    """``--gateway-url`` (one URL, or several comma-separated), else the local replicas."""
    if flag:
        return list(gateway_urls(flag))  # distinct https://host:port, or a usage error
    return dev_gateway_urls()


def dev_health_urls() -> dict[str, str]:
    """The local environment's health listeners by component (those ``dev up`` recorded)."""
    recorded = read_processes(state_root() / "dev" / "processes.json")
    entry = recorded.get("control-plane", {})
    ports = {"gateway": entry.get("health"), "controller": entry.get("controller_health")}
    ports |= {
        name: entry.get("health")
        for name, entry in recorded.items()
        if name.startswith(("agent-", GATEWAY_REPLICA))
    }
    return {name: f"http://127.0.0.1:{port}" for name, port in ports.items() if port}


def read_state_file(path: Path) -> dict[str, Any]:
    """A JSON object this CLI keeps between commands ({} when there is none yet), or a
    CliError naming the file when it is damaged (a traceback would say nothing of which)."""
    if not path.exists():
        return {}
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise CliError(f"state file {path} is damaged: {exc}", _DAMAGED_HINT) from exc
    if not isinstance(data, dict):
        raise CliError(f"state file {path} is damaged: not a JSON object", _DAMAGED_HINT)
    return data


def read_processes(path: Path) -> dict[str, Any]:
    """``processes.json``: each background process's pid and ports, by name."""
    recorded = read_state_file(path)
    for name, entry in recorded.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
            raise CliError(f"state file {path} is damaged: entry {name!r}", _DAMAGED_HINT)
    return recorded


def write_state_file(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a process killed mid-write leaves the previous file, not a
    truncated one that would lose the pids ``dev down`` needs."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # one per writer
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(path)


_DAMAGED_HINT = "look at it and fix or delete it (wpctl dev down stops what it still can)"
