"""The agent's upstream reads whole bodies even when they arrive in pieces.

A trivial HTTP upstream on loopback sends its body in delayed chunks (as an API server does for
a large list); the agent must forward all of it, and refuse one that exceeds its bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.upstream import ResponseTooLarge, Upstream

pytestmark = pytest.mark.integration
PIECES = [b'{"items": [', b'"a"' * 2000, b", ", b'"b"' * 2000, b"]}"]


@pytest.fixture
async def slow_upstream() -> AsyncIterator[str]:
    async def dribble(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for piece in PIECES:
            await response.write(piece)
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", dribble)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _upstream(url: str, max_body: int) -> Upstream:
    return Upstream(KubeTarget.from_server(url), max_body)


async def test_a_body_sent_in_pieces_arrives_whole(slow_upstream: str) -> None:
    upstream = _upstream(slow_upstream, 1 << 20)
    try:
        result = await upstream.request("GET", "/api/v1/namespaces", "", None, b"", 10)
    finally:
        await upstream.close()
    assert result.status == 200 and result.body == b"".join(PIECES)


async def test_a_body_over_the_bound_is_refused_whatever_its_pieces(slow_upstream: str) -> None:
    upstream = _upstream(slow_upstream, 5000)
    try:
        with pytest.raises(ResponseTooLarge, match="larger than 5000 bytes"):
            await upstream.request("GET", "/api/v1/namespaces", "", None, b"", 10)
    finally:
        await upstream.close()
