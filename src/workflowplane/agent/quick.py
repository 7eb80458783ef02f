"""An ordinary request served without a task: begun in the read that brought its frame,
answered in the read that completes its answer.

Why: a task per request costs two passes of the event loop (its start, and its wake-up when
the API server's answer comes) and the coroutine layers between, about a fifth of the
agent's time per small request; with them the tunnel's latency stayed behind OpenChoreo's Go
pair. Here the request is written at once on an idle keep-alive connection
(``kits.http1.QuickExchange``) and its answer followed in the connection's callbacks: a
small answer leaves as one frame the moment it is whole. Anything else goes the task's way:
a request that would wait (for a slot, a connection, its turn), an answer that grows past
one chunk (handed to a task that relays it in chunks, ``QuickHost.hand_over``), a reused
connection the server had closed (the request made again by a task, for the methods safe to
repeat).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from workflowplane.agent.upstream import (
    Upstream,
    failure_code,
    response_headers,
    upstream_failure,
)
from workflowplane.kits.http1 import RETRY_SAFE, QuickExchange
from workflowplane.protocol import TunnelRequest, TunnelResponse

log = logging.getLogger(__name__)


class QuickHost(Protocol):
    """What a quick request needs of the frame server that started it."""

    @property
    def chunk_bytes(self) -> int: ...

    def answer_now(self, quick: QuickRequest, answer: TunnelResponse) -> None:
        """Forget ``quick`` and send its whole answer."""

    def fail_now(self, quick: QuickRequest, status: int, message: str) -> None:
        """Forget ``quick`` and answer it with an error."""

    def hand_over(self, quick: QuickRequest) -> None:
        """Forget ``quick``; a task relays its answer (larger than one chunk)."""

    def start_again(self, quick: QuickRequest) -> None:
        """Forget ``quick``; a task makes its request anew (a stale connection)."""


class QuickRequest:
    """One request followed through ``progress``, called at each step of its answer."""

    __slots__ = (
        "_call",
        "_done",
        "_host",
        "_started",
        "_timed",
        "_upstream",
        "ended",
        "exchange",
        "frame",
    )

    def __init__(self, host: QuickHost, upstream: Upstream, frame: TunnelRequest) -> None:
        self._host, self.frame = host, frame
        self.ended: Callable[[bool], None] = _uncounted  # the host counts it once begun
        self._upstream = upstream
        query = frame.query if isinstance(frame.query, str) else ""
        self._call = (frame.method.upper(), frame.path, query)  # as the task's way tells it
        self._started = time.perf_counter()
        self._timed = self._done = False
        self.exchange: QuickExchange | None = None

    def progress(self) -> None:
        """Called by the connection's callbacks: nothing may escape into its parser."""
        try:
            self._progress()
        except Exception as exc:  # a bug: said, and the request answered, not left hanging
            log.exception("serving request %s", self.frame.request_id)
            self._done = True
            if self.exchange is not None:
                self._release(self.exchange, whole=False)  # once: a release is idempotent
            self._host.fail_now(self, 500, f"agent error: {exc!r}")  # if still in flight

    def _progress(self) -> None:
        exchange = self.exchange
        response = exchange.response if exchange is not None else None
        if self._done or exchange is None or response is None:
            return
        if response.error is not None:
            self._failed(exchange, response.error)
            return
        if not response.status:
            return
        if not self._timed:
            self._timed = True
            self._upstream.observed(self._call, str(response.status), self._seconds())
        if response.complete:
            self._done = True
            answer = TunnelResponse(
                request_id=self.frame.request_id,
                status_code=response.status,
                headers=response_headers(response.headers),
                body=response.take_body(),
            )
            self._release(exchange, whole=True)
            self._host.answer_now(self, answer)
        elif max(response.content_length or 0, response.held) >= self._host.chunk_bytes:
            self._done = True
            exchange.stop_watching()
            self._host.hand_over(self)

    def _failed(self, exchange: QuickExchange, error: BaseException) -> None:
        self._done = True
        self._release(exchange, whole=False)
        if exchange.stale and self.frame.method.upper() in RETRY_SAFE:
            self._host.start_again(self)  # told once, by the task's way, as its own retry is
            return
        self._tell_failure(error)
        self._host.fail_now(self, *upstream_failure(error, exchange.timeout))

    def cancel(self) -> None:
        """The gateway gave up on it (or the connection closed): no answer is sent."""
        if self._done:
            return
        self._done = True
        self._tell_failure(asyncio.CancelledError())
        if self.exchange is not None:
            self.exchange.stop_watching()
            self.exchange.release(whole=False)

    def _tell_failure(self, error: BaseException) -> None:
        if not self._timed:
            self._timed = True
            self._upstream.observed(self._call, failure_code(error), self._seconds())

    @staticmethod
    def _release(exchange: QuickExchange, *, whole: bool) -> None:
        """After the callback that told of it: the connection's parser is still running."""
        exchange.connection.loop.call_soon(_release, exchange, whole)

    def _seconds(self) -> float:
        return time.perf_counter() - self._started


def _uncounted(_: bool) -> None:
    pass


def _release(exchange: QuickExchange, whole: bool) -> None:
    exchange.release(whole=whole)
