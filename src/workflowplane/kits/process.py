"""Process bootstrap for long-lived components: the event loop, signals, fatal errors.

uvloop first (less memory and latency per TLS connection), asyncio otherwise; Ctrl-C and
SIGTERM cancel the main coroutine so it can clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Coroutine
from typing import Any

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4


async def listening(start: Awaitable[None], what: str, host: str, port: int) -> None:
    """``start`` (a listener's), or a FatalError naming it: a port taken or out of reach, a
    host that is no address of this machine, is a setting to fix, not a traceback."""
    try:
        await start
    except OSError as exc:
        raise FatalError(
            f"cannot listen for {what} on {host}:{port}: {exc}", None, EXIT_USAGE
        ) from exc


class FatalError(Exception):
    """Stops a command or a process: one clear line, a hint, and a meaningful exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


async def _until_signalled(main: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(_until_signalled(main))
        return
    uvloop.run(_until_signalled(main))
