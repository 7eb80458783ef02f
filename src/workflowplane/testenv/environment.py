"""Several independent API servers ("clusters") on one machine, with one shared kubeconfig.

Used by the pytest fixtures (tied to the test process) and by ``wpctl testenv up`` /
``wpctl dev up`` (detached, remembered in a state file so ``down`` can stop them later).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workflowplane.testenv import assets as assets_module
from workflowplane.testenv.apiserver import ApiServer, StartError, stop_process_group

CONTROL_PLANE = "control-plane"
WORKFLOW_PLANE = "workflow-plane"
STATE_FILE = "testenv.json"


@dataclass(frozen=True)
class ServerInfo:
    """What a later process needs to reach, or stop, a detached server."""

    name: str
    context: str
    url: str
    pids: list[int]


class Environment:
    """A set of named API servers sharing one kubeconfig at ``<root>/kubeconfig``."""

    def __init__(self, root: Path, names: Sequence[str], *, detached: bool = False) -> None:
        self.root = root
        self.names = list(names)
        self.detached = detached
        self.servers: dict[str, ApiServer] = {}

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def __getitem__(self, name: str) -> ApiServer:
        return self.servers[name]

    def start(self) -> None:
        binaries = assets_module.ensure()
        self.root.mkdir(parents=True, exist_ok=True)
        self.servers = {
            name: ApiServer(name, self.root / name, binaries, detached=self.detached)
            for name in self.names
        }
        errors: list[StartError] = []
        for server in self.servers.values():
            server.launch()
        for server in self.servers.values():
            try:
                server.wait_ready()
            except StartError as exc:
                errors.append(exc)
        if errors:
            self.stop()
            raise StartError("\n\n".join(str(e) for e in errors))
        ApiServer.write_kubeconfig(self.kubeconfig, list(self.servers.values()))
        self._save_state()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        (self.root / STATE_FILE).unlink(missing_ok=True)

    def _save_state(self) -> None:
        state = {
            name: {"context": s.context, "url": s.url, "pids": s.pids}
            for name, s in self.servers.items()
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))


def read_state(root: Path) -> list[ServerInfo]:
    """Servers a detached environment under ``root`` started; empty when none is recorded."""
    path = root / STATE_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [
        ServerInfo(name, entry["context"], entry["url"], list(entry["pids"]))
        for name, entry in data.items()
    ]


def stop_detached(root: Path, *, remove: bool = False) -> list[ServerInfo]:
    """Stop what ``read_state`` lists; optionally remove the data directory too."""
    servers = read_state(root)
    for server in servers:
        for pid in reversed(server.pids):
            stop_process_group(pid)
    (root / STATE_FILE).unlink(missing_ok=True)
    if remove and root.exists():
        shutil.rmtree(root)
    return servers
