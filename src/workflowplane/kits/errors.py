"""One error taxonomy for every component: a failure is transient (retrying later can help)
or permanent (it will fail the same way until something changes).

The mapping from HTTP statuses and network errors lives here and nowhere else, so the gateway
client, the plane API and both reconcilers agree on what "retry" means. Anything that is
neither (a ``KeyError``, a ``TypeError``) is a bug, and callers let it surface as one.
"""

from __future__ import annotations

import logging

import httpx2
from lightkube.core.exceptions import ApiError

from workflowplane.kits.failures import (
    BASE_NETWORK_ERRORS,
    TRANSIENT_HTTP,
    Failure,
    PermanentError,
    TransientError,
    from_status,
    report,
    transient_status,
)

__all__ = [
    "EXPECTED_ERRORS",
    "KUBE_READ_ERRORS",
    "NETWORK_ERRORS",
    "TRANSIENT_HTTP",
    "Failure",
    "PermanentError",
    "TransientError",
    "from_status",
    "is_expected",
    "is_transient",
    "report_failure",
    "status_of",
    "transient_status",
]

# Network-level failures: the peer did not answer, so nothing about the request is known.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (*BASE_NETWORK_ERRORS, httpx2.TransportError)


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
    report(log, what, exc, expected=is_expected(exc))
