"""Where local environments keep their files between commands."""

from __future__ import annotations

import json
import os
from pathlib import Path


def state_root() -> Path:
    """``$WORKFLOWPLANE_STATE``, else ``$XDG_STATE_HOME/workflowplane`` (~/.local/state)."""
    explicit = os.environ.get("WORKFLOWPLANE_STATE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "workflowplane"


def dev_gateway_url() -> str | None:
    """The local environment's gateway internal API, when ``wpctl dev up`` is running."""
    processes = state_root() / "dev" / "processes.json"
    if not processes.exists():
        return None
    internal = json.loads(processes.read_text()).get("control-plane", {}).get("internal")
    return f"https://127.0.0.1:{internal}" if internal else None


def dev_health_urls() -> dict[str, str]:
    """The local environment's health listeners by component (those ``dev up`` recorded)."""
    processes = state_root() / "dev" / "processes.json"
    if not processes.exists():
        return {}
    recorded = json.loads(processes.read_text())
    entry = recorded.get("control-plane", {})
    ports = {"gateway": entry.get("health"), "controller": entry.get("controller_health")}
    ports |= {
        name: agent.get("health") for name, agent in recorded.items() if name.startswith("agent-")
    }
    return {name: f"http://127.0.0.1:{port}" for name, port in ports.items() if port}
