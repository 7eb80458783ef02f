"""Sampling profiles of running processes with py-spy, and a short text summary of them.

``profiled(pids, directory)`` attaches ``py-spy record`` to each process while its block runs
and writes ``<directory>/<name>.txt`` (py-spy's collapsed stacks). ``summary(path)`` prints the
frames with the most samples, by self time (the frame was running) and by cumulative time (the
frame was on the stack). Run alone: ``python bench/flame.py FILE...``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

SAMPLES_PER_SECOND = 250


@contextlib.contextmanager
def profiled(pids: dict[str, int], directory: Path | None) -> Iterator[None]:
    """py-spy attached to each process while the block runs (nothing when ``directory`` is
    None); stopped with SIGINT, on which py-spy writes its file."""
    if directory is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(  # noqa: S603
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                # PROFILE_NATIVE=1: C frames too (py-spy then pauses the process to sample)
                *(["--native"] if os.environ.get("PROFILE_NATIVE") else ["--nonblocking"]),
                "--rate",
                str(SAMPLES_PER_SECOND),
                "-o",
                str(directory / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(directory / f"{name}.log").open("w"),
        )
        for name, pid in pids.items()
    ]
    time.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)
        for process in spies:
            process.wait(30)


def _function(frame: str) -> str:
    """``name (path/to/module.py:123)`` -> ``name (module.py)``: one row per function."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


def tallies(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """Self and cumulative samples per function, and the total samples."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            cumulative[frame] += count
    return own, cumulative, total


def summary(path: Path, top: int = 15) -> str:
    own, cumulative, total = tallies(path)
    lines = [f"### {path.stem}: {total} samples", "", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| cumulative % | function |", "|---:|---|"]
    outermost = max(cumulative.values(), default=0)  # the process's own entry frames: skipped
    inner = [(name, n) for name, n in cumulative.most_common() if n < outermost][:top]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inner]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summary(Path(name)))
