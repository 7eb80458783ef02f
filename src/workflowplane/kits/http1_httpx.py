"""httpx's transport over ``kits.http1``, for lightkube's client in the control plane.

A profile of the control plane starting runs put a third of its CPU in httpx's default
transport stack (httpcore, anyio's TLS stream, a readability ``select`` per request) for
lightkube's merge patches. httpx still does what the client needs above the transport (URL
building, authentication flows, status errors); this sends the request and reads the answer
with the lean client. Failures are httpx's own exception types, so callers classify them as
before (``kits.errors``: ``httpx2.TransportError`` is a network error).

Deadlines: httpx's read timeout bounds each read; here it bounds the whole exchange (head and
body), which for the control plane's calls (single objects, small lists) is the practical
bound. A request with no read timeout (a watch) has none.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx2

from workflowplane.kits.http1 import CLIENT_HEADERS, Exchange, Http1Pool, Http1Response


class Http1Transport(httpx2.AsyncBaseTransport):
    """Requests to the server of ``url`` (its origin; the path travels in each request)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, *, limit: int = 100) -> None:
        parts = urlsplit(url)
        self._pool = Http1Pool(f"{parts.scheme}://{parts.netloc}", ssl_context, limit=limit)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        exchange = self._pool.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            _headers(request),
            await request.aread(),
            _deadline(request),
        )
        try:
            answer = await exchange.__aenter__()
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx2.ConnectError(str(exc) or repr(exc), request=request) from exc
        return httpx2.Response(
            answer.status,
            headers=answer.headers,
            stream=_Body(exchange, answer, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

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
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(str(exc), request=self._request) from exc
        except OSError as exc:
            raise httpx2.ReadError(str(exc) or repr(exc), request=self._request) from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._exchange.__aexit__(None, None, None)


def _headers(request: httpx2.Request) -> list[tuple[str, str]]:
    """The request's headers but those the client writes itself."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.headers.raw
        if name.decode("latin-1").lower() not in CLIENT_HEADERS
    ]


def _deadline(request: httpx2.Request) -> float | None:
    timeouts: Any = request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    return float(read) if read is not None else None
