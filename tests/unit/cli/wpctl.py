"""``wpctl`` run in this process, as a test calls it: its exit code and what it said.

Each call runs in a thread of its own: a command's ``asyncio.run`` leaves the event loop
policy of the thread it runs on without a loop, and on the main thread that made the
looptime tests that came later run on real time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from workflowplane.cli.main import main

# A kubeconfig whose server refuses at once (port 1 on loopback).
UNREACHABLE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
users:
- name: u
  user: {token: abc}
"""


def wpctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit code and standard error of ``wpctl ARGV``."""
    with ThreadPoolExecutor(1) as thread, pytest.raises(SystemExit) as ended:
        thread.submit(main, list(argv)).result()
    code = ended.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().err
