"""The allocator keeps large bodies' memory for the next ones (kits/memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Rounds of a relay's traffic: eight 300 KiB blocks live at once (chunks, reads), then gone.
# Page faults are counted over the rounds after the first: memory kept is not faulted again.
CHURN = textwrap.dedent(
    """
    import resource, sys
    from workflowplane.kits.memory import keep_heap_for_bodies
    if sys.argv[1] == "kept":
        assert keep_heap_for_bodies()
    def round_():
        blocks = [bytearray(300 * 1024) for _ in range(8)]
        del blocks
    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_freed_are_kept_for_the_next_ones_not_faulted_in_again() -> None:
    pages_per_round = 8 * 300 * 1024 // 4096
    assert _faults("kept") < pages_per_round * 5  # 50 rounds: the first one's pages serve all
    assert _faults("default") > pages_per_round * 25  # glibc alone gives them back each round


def test_the_operators_own_glibc_settings_are_left_alone() -> None:
    code = "from workflowplane.kits.memory import keep_heap_for_bodies as k; print(k())"
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
