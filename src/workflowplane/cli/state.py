"""Where local environments keep their files between commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    processes = state_root() / "dev" / "processes.json"
    if not processes.exists():
        return []
    recorded = json.loads(processes.read_text())
    replicas = [recorded.get("control-plane", {})]
    replicas += [entry for name, entry in recorded.items() if name.startswith(GATEWAY_REPLICA)]
    return [f"https://127.0.0.1:{r['internal']}" for r in replicas if r.get("internal")]


def gateway_urls_or_dev(flag: str | None) -> list[str]:
    """``--gateway-url`` (one URL, or several comma-separated), else the local replicas."""
    if flag:
        return [url.strip() for url in flag.split(",") if url.strip()]
    return dev_gateway_urls()


def dev_health_urls() -> dict[str, str]:
    """The local environment's health listeners by component (those ``dev up`` recorded)."""
    processes = state_root() / "dev" / "processes.json"
    if not processes.exists():
        return {}
    recorded = json.loads(processes.read_text())
    entry = recorded.get("control-plane", {})
    ports = {"gateway": entry.get("health"), "controller": entry.get("controller_health")}
    ports |= {
        name: entry.get("health")
        for name, entry in recorded.items()
        if name.startswith(("agent-", GATEWAY_REPLICA))
    }
    return {name: f"http://127.0.0.1:{port}" for name, port in ports.items() if port}
