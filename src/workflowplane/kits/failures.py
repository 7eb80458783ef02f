"""The error taxonomy's core, with no Kubernetes client behind it: ``kits.errors`` adds
lightkube's and httpx's errors to it. A process that does not load those clients (the agent)
uses this module alone, so that importing it costs nothing it does not use.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

# Statuses that a retry can outlive: the peer is overloaded, restarting, or not there yet;
# 409 is a write that lost a race (re-read and try again).
TRANSIENT_HTTP = frozenset({408, 409, 425, 429})


class Failure(Exception):
    """A failure of the world, not of this code; ``status`` is the HTTP status, 0 if none."""

    def __init__(self, message: str, *, status: int = 0, body: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


class TransientError(Failure):
    """Retrying later can help: an outage, a timeout, a conflict, something not there yet."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class PermanentError(Failure):
    """Retrying will fail the same way until the input changes."""


def transient_status(status: int) -> bool:
    """0 (no answer at all), 408/425/429 and every 5xx are worth retrying; other 4xx are not."""
    return status == 0 or status in TRANSIENT_HTTP or status >= 500


def from_status(status: int, message: str, body: object = None) -> Failure:
    """The error for an HTTP answer that was not a success."""
    if transient_status(status):
        return TransientError(message, status=status, body=body)
    return PermanentError(message, status=status, body=body)


# Network-level failures of the clients every component loads (asyncio, aiohttp).
BASE_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    EOFError,
    aiohttp.ClientError,
)


# What code that meets only our own failures and network errors expects (the rest: bugs).
BASE_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (Failure, *BASE_NETWORK_ERRORS)


def report(log: logging.Logger, what: str, exc: BaseException, *, expected: bool) -> None:
    """For loops that must outlive anything: a failure of the world (``expected``) is a
    warning, anything else is a bug and says so with its traceback."""
    if expected:
        log.warning("%s failed (%s)", what, exc)
    else:
        log.error("bug: %s raised", what, exc_info=exc)


def report_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    """``report`` for code that meets only our own failures and network errors."""
    report(log, what, exc, expected=isinstance(exc, BASE_EXPECTED_ERRORS))
