"""The allocator keeps large bodies' memory for the next ones (kits/memory.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

# Rounds of a relay's traffic: ``count`` blocks of ``size`` bytes live at once (chunks,
# reads, whole answers), then gone. Page faults are counted over the rounds after the first:
# memory kept is not faulted in again.
CHURN = textwrap.dedent(
    """
    import resource, sys
    from workflowplane.kits.memory import keep_heap_for_bodies
    if sys.argv[1] == "kept":
        assert keep_heap_for_bodies()
    count, size = int(sys.argv[2]), int(sys.argv[3])
    def round_():
        blocks = [bytearray(size) for _ in range(count)]
        del blocks
    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, count: int, size: int) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode, str(count), str(size)],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


GLIBC = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ, reason="glibc's mallopt"
)


@GLIBC
def test_large_blocks_freed_are_kept_for_the_next_ones_not_faulted_in_again() -> None:
    pages_per_round = 8 * 300 * 1024 // 4096  # glibc alone gives them back each round here
    assert _faults("kept", 8, 300 * 1024) < pages_per_round * 5  # the first round's serve all


@GLIBC
@pytest.mark.parametrize("size", [2 * 1024 * 1024, 13 * 1024 * 1024])
def test_a_whole_answer_of_megabytes_is_kept_too(size: int) -> None:
    assert _faults("kept", 1, size) < size // 4096 * 5  # not mapped and faulted in each time


@pytest.mark.parametrize(
    ("name", "value"),
    [("MALLOC_TRIM_THRESHOLD_", "131072"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")],
)
def test_the_operators_own_glibc_settings_are_left_alone(name: str, value: str) -> None:
    code = "from workflowplane.kits.memory import keep_heap_for_bodies as k; print(k())"
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
