"""httpx's transport over ``kits.http1``, for lightkube's client in the control plane.

A profile of the control plane starting runs put a third of its CPU in httpx's default
transport stack (httpcore, anyio's TLS stream, a readability ``select`` per request) for
lightkube's merge patches. httpx still does what the client needs above the transport (URL
building, authentication flows, status errors); this sends the request and reads the answer
with the lean client. Failures are httpx's own exception types, so callers classify them as
before (``kits.errors``: ``httpx2.TransportError`` is a network error).

Deadlines: httpx's read timeout bounds the wait for the answer's head and then each silence
of its body (a large list that keeps coming is never cut); a request with none (a watch) has
none. Proxies are not spoken: ``api.kube_client`` leaves a server the environment sends
through a proxy to httpx's own transport.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx2

from workflowplane.kits.http1 import (
    CLIENT_HEADERS,
    ConnectTimeout,
    Exchange,
    Http1Error,
    Http1Pool,
    Http1Response,
    InvalidRequest,
)


class Http1Transport(httpx2.AsyncBaseTransport):
    """Requests to the server of ``url`` (its origin; the path travels in each request)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, *, limit: int = 100) -> None:
        parts = urlsplit(url)
        self._pool = Http1Pool(f"{parts.scheme}://{parts.netloc}", ssl_context, limit=limit)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            exchange = self._pool.request(
                request.method,
                request.url.raw_path.decode("ascii"),
                _headers(request),
                await request.aread(),
                _read_timeout(request),
                idle=True,
            )
        except InvalidRequest as exc:
            raise httpx2.LocalProtocolError(str(exc), request=request) from exc
        try:
            answer = await exchange.__aenter__()
        except BaseException as exc:
            raise _as_httpx(exc, request) from exc
        try:
            return httpx2.Response(
                answer.status,
                headers=[(_raw(name), _raw(value)) for name, value in answer.headers],
                stream=_Body(exchange, answer, request),
                extensions={"http_version": b"HTTP/1.1"},
            )
        except BaseException:
            await exchange.__aexit__(None, None, None)  # never a slot left taken
            raise

    async def aclose(self) -> None:
        await self._pool.close()


class _Body(httpx2.AsyncByteStream):
    """The answer's body as httpx reads it; closing it ends the exchange."""

    def __init__(self, exchange: Exchange, answer: Http1Response, request: httpx2.Request) -> None:
        self._exchange, self._answer, self._request = exchange, answer, request
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._answer.iter_any():
                yield chunk
        except (TimeoutError, OSError) as exc:
            raise _as_httpx(exc, self._request) from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._exchange.__aexit__(None, None, None)


def _as_httpx(exc: BaseException, request: httpx2.Request) -> BaseException:
    """httpx's exception for a failure of ours (others as they are): what lightkube and
    ``kits.errors`` expect from an httpx transport."""
    message = str(exc) or repr(exc)
    if isinstance(exc, ConnectTimeout):
        return httpx2.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        return httpx2.ReadTimeout(message, request=request)
    if isinstance(exc, Http1Error):  # the connection was there: the answer went wrong
        return httpx2.RemoteProtocolError(message, request=request)
    if isinstance(exc, OSError):  # refused, unreachable, name not known, TLS
        return httpx2.ConnectError(message, request=request)
    return exc


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _headers(request: httpx2.Request) -> list[tuple[str, str]]:
    """The request's headers but those the client writes itself (bytes as they are)."""
    return [
        (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        for name, value in request.headers.raw
        if name.decode("latin-1").lower() not in CLIENT_HEADERS
    ]


def _read_timeout(request: httpx2.Request) -> float | None:
    timeouts: Any = request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    return float(read) if read is not None else None
