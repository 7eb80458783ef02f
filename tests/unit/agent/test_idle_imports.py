"""The agent process loads only what it serves with (issue #14: agent idle RSS under 50 MiB):
no ``cryptography`` (certificate work runs in a worker process), no lightkube and its httpx
(the agent's few API calls are raw JSON over its upstream session), no kopf (the controller's),
whether started as ``cluster-agent`` or as ``wpctl agent``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"
NOT_IN_THE_AGENT = ("cryptography", "kopf", "lightkube", "httpx", "httpx2")
SERVE_PATH = (
    "workflowplane.agent.command",
    "workflowplane.agent.runner",
    "workflowplane.agent.tunnel",
    "workflowplane.agent.upstream",
    "workflowplane.agent.bootstrap",
    "workflowplane.agent.consent",
    "workflowplane.agent.replicas",
    "workflowplane.agent.health",
    "workflowplane.agent.metrics",
    "workflowplane.agent.exec",
    "workflowplane.kits.process",
    "workflowplane.kits.memory",
)


PROBE = "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running ``code``."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [sys.executable, "-c", code + PROBE]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "start",
    [
        "import workflowplane.agent.command",
        "from workflowplane.cli.main import build_parser\n"
        "build_parser(['-v', '--log-format', 'json', 'agent']).parse_args("
        "['agent', '--plane-id=p', '--server-url=wss://gw/ws'])",
    ],
    ids=["cluster-agent", "wpctl agent"],
)
def test_the_agent_process_loads_no_controller_or_certificate_library(start: str) -> None:
    loaded = _loaded_after(start + "\n" + "\n".join(f"import {m}" for m in SERVE_PATH))
    assert "aiohttp" in loaded  # the probe saw the serve path
    assert loaded.isdisjoint(NOT_IN_THE_AGENT), sorted(loaded & set(NOT_IN_THE_AGENT))


def test_wpctl_registers_only_the_long_running_command_it_starts() -> None:
    from workflowplane.cli.main import build_parser  # noqa: PLC0415

    every = build_parser().format_help()
    assert all(name in every for name in ("agent", "gateway", "controller", "testenv", "run"))
    alone = build_parser(["--log-format=json", "agent", "--plane-id=p"]).format_help()
    assert "agent" in alone and "controller" not in alone and "testenv" not in alone
    assert "controller" in build_parser(["get"]).format_help()  # a short command: all of them
