"""Giving start-up memory back, for long-lived processes that then mostly idle.

After start-up a process holds garbage it will never reach again and free heap pages glibc
keeps for later. ``settle`` collects the garbage, moves what survives out of the collector's
generations (``gc.freeze``: later collections do not walk, and so do not touch, the start-up
objects) and asks glibc to return free pages to the system (``malloc_trim``).

A process that relays large bodies then keeps some heap: ``keep_heap_for_bodies``.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
from collections.abc import Callable

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEPT_FREE_BYTES = 16 * 1024 * 1024  # free heap kept at the top, not given back at once
MAPPED_FROM_BYTES = 32 * 1024 * 1024  # smaller blocks come from the heap (glibc's own cap)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the process's own symbols hold libc's


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (the process's own symbols hold libc's); None elsewhere."""
    try:
        trim: Callable[[int], int] = _libc().malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def settle() -> None:
    """Collect, freeze what survives, and return free heap pages to the system."""
    gc.collect()
    gc.freeze()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def keep_heap_for_bodies() -> bool:
    """Make glibc keep the memory of large bodies for the next ones; whether it was set.

    A relay's large blocks (a 256 KiB chunk, a TLS read, a whole v1 answer) come and go with
    every request. glibc raises its mmap threshold to the largest block freed so far, but
    gives the heap's free top back once it passes twice that, so with several chunks alive
    at once the next body faults its pages in and zeroes them again: a tenth of the gateway's
    and the agent's CPU for a 10 MB list. Fixed thresholds keep up to ``KEPT_FREE_BYTES`` of
    free heap instead, and take blocks up to the dynamic threshold's own cap from the heap
    (``settle`` still gives start-up memory back). Left alone where the operator tuned
    glibc's allocator (its ``MALLOC_`` variables or ``GLIBC_TUNABLES``), and where there is
    no glibc."""
    tuned = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
    if any(name in os.environ for name in tuned):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt: Callable[[int, int], int] = _libc().mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MAPPED_FROM_BYTES) and mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES)
    )
