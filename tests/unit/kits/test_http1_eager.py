"""A request of the agent's HTTP client begun eagerly (in a socket's read callback, outside any
task) works on every path: the ones that need a timeout (a new connection, a wait for a slot
against the deadline) first go on in a task, where ``asyncio.timeout`` works."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from workflowplane.kits.eager import start_eagerly
from workflowplane.kits.http1 import Http1Pool


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    """A loopback HTTP/1.1 server answering every request with ``ok``, keeping it alive."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def quietly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(quietly, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


async def begun_in_a_read(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    loop = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.Task[None] | None] = loop.create_future()

    def callback() -> None:
        try:
            started.set_result(start_eagerly(loop, coro))
        except Exception as exc:  # noqa: BLE001 - the test's to see
            started.set_exception(exc)

    loop.call_soon(callback)
    return await started


async def fetch(pool: Http1Pool, bodies: list[bytes]) -> None:
    async with pool.request("GET", "/", [], timeout=5) as response:
        bodies.append(await response.read())


async def test_a_request_begun_eagerly_makes_its_new_connection_in_a_task(server_url: str) -> None:
    pool = Http1Pool(server_url, None)
    bodies: list[bytes] = []
    task = await begun_in_a_read(fetch(pool, bodies))  # no idle connection: it connects
    assert task is not None
    await task
    assert bodies == [b"ok"]
    await pool.close()


async def test_a_request_begun_eagerly_waits_for_a_slot_in_a_task(server_url: str) -> None:
    pool = Http1Pool(server_url, None, limit=1)
    bodies: list[bytes] = []
    holding = pool.request("GET", "/", [], timeout=5)
    await holding.__aenter__()  # the pool's one slot, held
    task = await begun_in_a_read(fetch(pool, bodies))  # waits for it, against its deadline
    assert task is not None and not bodies
    await holding.__aexit__(None, None, None)
    await task
    assert bodies == [b"ok"]
    await pool.close()
