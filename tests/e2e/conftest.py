"""End-to-end: the system as a user drives it, through ``wpctl`` and ``kubectl`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

WPCTL = str(Path(sys.executable).parent / "wpctl")


def run_wpctl(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKFLOWPLANE_STATE": str(state)}
    return subprocess.run(
        [WPCTL, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def dev_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state directory for ``wpctl dev``; always torn down at the end."""
    state = tmp_path_factory.mktemp("wpstate")
    try:
        yield state
    finally:
        run_wpctl(state, "dev", "down")
