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

from workflowplane.api.planes import is_namespace_name
from workflowplane.testenv import assets as assets_module
from workflowplane.testenv.apiserver import ApiServer, StartError, stop_process_group

CONTROL_PLANE = "control-plane"
WORKFLOW_PLANE = "workflow-plane"
STATE_FILE = "testenv.json"
MARKER = ".workflowplane-testenv"  # this directory is an environment's: `down` may delete it


class StateError(ValueError):
    """A state directory that is not an environment's, or whose state file is damaged."""


def check_server_name(name: str) -> str:
    """A server name becomes a directory under the root and a kubeconfig context."""
    if not is_namespace_name(name):  # a DNS label, as a namespace's name is
        raise StateError(
            f"server name {name[:80]!r} is not a DNS label (lowercase letters, digits and '-', "
            "at most 63): it names a directory and a kubeconfig context"
        )
    return name


def is_environment(root: Path) -> bool:
    """Made by an environment: its marker, or (made before there was one) its state file."""
    return (root / MARKER).exists() or (root / STATE_FILE).exists()


def check_root(root: Path) -> Path:
    """A directory an environment may be made in (later deleted whole by ``down``): missing,
    empty, or one an environment made. Any other would lose its files."""
    if root.exists() and not root.is_dir():
        raise StateError(f"{root} is not a directory")
    if root.is_dir() and not is_environment(root) and any(root.iterdir()):
        raise StateError(
            f"{root} holds files and is not a test environment's directory (no {MARKER}): "
            "refusing to use it, since stopping the environment deletes its directory"
        )
    return root


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
        self.names = [check_server_name(name) for name in names]
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
        (self.root / MARKER).touch()
        self.servers = {
            name: ApiServer(name, self.root / name, binaries, detached=self.detached)
            for name in self.names
        }
        errors: list[StartError] = []
        for server in self.servers.values():
            server.launch()
        for server in self.servers.values():
            try:
                server.wait_until_ready()
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
    try:
        data = json.loads(path.read_text())
        return [
            ServerInfo(str(name), str(entry["context"]), str(entry["url"]), _pids(entry))
            for name, entry in data.items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(
            f"state file {path} is damaged ({type(exc).__name__}: {exc}); stop its API servers "
            "by hand (their pids are in the file, if readable) and remove it"
        ) from exc


def _pids(entry: dict[str, object]) -> list[int]:
    pids = entry["pids"]
    if not isinstance(pids, list) or not all(isinstance(p, int) and p > 1 for p in pids):
        raise ValueError(f"pids must be a list of process ids, not {pids!r}")
    return pids


def stop_detached(root: Path, *, remove: bool = False, owned: bool = False) -> list[ServerInfo]:
    """Stop what ``read_state`` lists; optionally remove the data directory too, if it is an
    environment's or ``owned`` (the CLI's own state directory): a directory someone named
    that holds anything else is never deleted."""
    servers = read_state(root)
    ours = owned or is_environment(root)
    for server in servers:
        for pid in reversed(server.pids):
            stop_process_group(pid)
    (root / STATE_FILE).unlink(missing_ok=True)
    if remove and root.exists() and ours:
        shutil.rmtree(root)
    return servers
