"""One error taxonomy for every component: a failure is transient (retrying later can help)
or permanent (it will fail the same way until something changes).

The mapping from HTTP statuses and network errors lives here and nowhere else, so the gateway
client, the plane API and both reconcilers agree on what "retry" means. Anything that is
neither (a ``KeyError``, a ``TypeError``) is a bug, and callers let it surface as one.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import httpx2
from lightkube.core.exceptions import ApiError

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


# Network-level failures: the peer did not answer, so nothing about the request is known.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    EOFError,
    aiohttp.ClientError,
    httpx2.TransportError,
)


# What a read from the Kubernetes API server fails with when the fault is not ours.
KUBE_READ_ERRORS: tuple[type[BaseException], ...] = (ApiError, *NETWORK_ERRORS)


def status_of(exc: BaseException) -> int:
    """The HTTP status an error carries (0 when it never got an answer)."""
    if isinstance(exc, ApiError):
        return int(exc.status.code or 0)
    if isinstance(exc, httpx2.HTTPStatusError):  # an error answer that is no Kubernetes Status
        return int(exc.response.status_code)
    if isinstance(exc, Failure):
        return exc.status
    return 0


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later can help; Kubernetes API errors are judged by their status."""
    if isinstance(exc, ApiError | httpx2.HTTPStatusError):
        return transient_status(status_of(exc))
    return isinstance(exc, (TransientError, *NETWORK_ERRORS))


def is_expected(exc: BaseException) -> bool:
    """A failure of the world (transient or permanent), as opposed to a bug in this code."""
    return isinstance(exc, Failure | ApiError | httpx2.HTTPStatusError) or is_transient(exc)


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    Failure,
    ApiError,
    httpx2.HTTPStatusError,
    *NETWORK_ERRORS,
)


def report_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    """For loops that must outlive anything: a failure of the world is a warning, anything
    else is a bug and says so with its traceback."""
    if is_expected(exc):
        log.warning("%s failed (%s)", what, exc)
    else:
        log.error("bug: %s raised", what, exc_info=exc)
