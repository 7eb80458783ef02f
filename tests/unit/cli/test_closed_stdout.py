"""A reader that stops early (``wpctl logs run | head -1``) ends wpctl quietly, as SIGPIPE
ends other tools, instead of with a traceback on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The handler writes far more than a pipe holds, so the write after `head` has gone fails.
WRITER = """
import argparse, sys
from workflowplane.cli.main import run_handler

def handler(args):
    for n in range(200_000):
        sys.stdout.write(f"line {n}\\n")
    return 0

raise SystemExit(run_handler(handler, argparse.Namespace()))
"""


def test_a_reader_that_goes_away_ends_wpctl_with_141_and_nothing_on_stderr() -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.readline() == b"line 0\n"
    writer.stdout.close()
    stderr = writer.stderr.read()
    assert writer.wait(timeout=60) == 141
    assert stderr == b""


def test_a_command_started_with_stdout_closed_ends_without_a_traceback(tmp_path: Path) -> None:
    # `wpctl testenv down >&-`: Python has no sys.stdout at all then.
    argv = ["testenv", "--dir", str(tmp_path / "none"), "down"]
    ended = subprocess.run(
        [sys.executable, "-m", "workflowplane.cli.main", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in ended.stderr, ended.stderr.decode()
    assert ended.returncode == 0
