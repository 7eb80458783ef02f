"""aiohttp's connector, with uvloop's descriptor bug reported as the connection error it is.

uvloop files every transport under its socket's descriptor and may keep a dead one there
(MagicStack/uvloop#653). A new socket that gets the same number then fails its
``sock_connect`` with ``RuntimeError: File descriptor N is used by transport …`` before
a byte is sent. aiohttp lets that RuntimeError through, so each caller would take a dial
that failed for the most ordinary reason (try again, or try the next peer) for a bug of
its own: the gateway's forwarding answered 500, and the agent's reconnect loop would end.

A session whose owner decides itself which requests may be sent twice also switches off
aiohttp's own silent resend (:func:`deciding_retries`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = ["Connector", "deciding_retries", "is_descriptor_clash"]

CLASH_MESSAGE = "is used by transport"


def is_descriptor_clash(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and CLASH_MESSAGE in str(exc)


class Connector(aiohttp.TCPConnector):
    """A ``TCPConnector`` (same options) whose dials fail only with aiohttp's own errors."""

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        try:
            return await super().connect(req, traces, timeout)
        except RuntimeError as exc:
            if not is_descriptor_clash(exc):
                raise
            unsent = ConnectionError(errno.EBUSY, f"not dialled, uvloop's descriptor bug: {exc}")
            raise aiohttp.ClientConnectorError(req.connection_key, unsent) from exc


def deciding_retries(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """``session`` without aiohttp's resend: it sends a GET, PUT or DELETE again on its own
    when the connection breaks after the request was written (RFC 9112 allows it for
    idempotent methods). A proxy must not run a PUT or DELETE twice in a plane behind the
    caller's back; its owner decides what may go again, and where."""
    session._retry_connection = False
    return session
