"""What the figures were measured on, printed by the benches beside them."""

from __future__ import annotations

import platform
import sys


def interpreter() -> str:
    """The Python the bench and the processes it starts run: its version, its path, and
    whether its interpreter is in a shared libpython (pyenv's default build: 15-20% slower
    Python than an optimised static one, docs/performance.md "The interpreter")."""
    with open("/proc/self/maps") as maps:
        shared = "libpython" in maps.read()
    build = "shared libpython" if shared else "static"
    return f"Python {platform.python_version()} ({sys.executable}, {build})"
