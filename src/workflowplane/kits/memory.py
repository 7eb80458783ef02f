"""Giving start-up memory back, for long-lived processes that then mostly idle.

After start-up a process holds garbage it will never reach again and free heap pages glibc
keeps for later. ``settle`` collects the garbage, moves what survives out of the collector's
generations (``gc.freeze``: later collections do not walk, and so do not touch, the start-up
objects) and asks glibc to return free pages to the system (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (the process's own symbols hold libc's); None elsewhere."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
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
