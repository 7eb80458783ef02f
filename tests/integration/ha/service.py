"""A Kubernetes Service on loopback: a TCP proxy that sends each new connection to the next
backend that accepts it (round-robin, refused ones skipped) and pipes bytes both ways
untouched, so TLS passes through and the client verifies the backend's own certificate.

An agent that dials one address (OpenChoreo's Go agent) is given the Service: when its
replica dies, the connection ends (both sides are closed as soon as either ends, as a dead
pod's connections end), and its redial lands on a live replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

CHUNK = 64 * 1024


@dataclass
class RoundRobinService:
    """``backends``: ports on ``host``; ``routed`` lists the backend of each connection."""

    backends: list[int]
    host: str = "127.0.0.1"
    routed: list[int] = field(default_factory=list)
    _next: int = 0
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None, "the Service is not started"
        return int(self._server.sockets[0].getsockname()[1])

    def redialled(self, since: int, dead_port: int) -> bool:
        """A connection made after the first ``since``, to a backend other than ``dead_port``
        (an agent back through the Service on a live replica)."""
        return len(self.routed) > since and self.routed[-1] != dead_port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            backend = await self._connect()
            if backend is None:  # no backend accepts: the client sees its connection closed
                writer.close()
                return
            port, (backend_reader, backend_writer) = backend
            self.routed.append(port)
            await _splice(reader, writer, backend_reader, backend_writer)
        except asyncio.CancelledError:
            pass  # the Service stops (the connection's own task: nothing awaits it)
        finally:
            self._connections.discard(task)

    async def _connect(
        self,
    ) -> tuple[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None:
        """The next backend in turn that accepts a connection."""
        count = len(self.backends)
        for offset in range(count):
            index = (self._next + offset) % count
            try:
                streams = await asyncio.open_connection(self.host, self.backends[index])
            except OSError:
                continue
            self._next = (index + 1) % count
            return self.backends[index], streams
        return None


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Both directions until either ends; then both connections are closed."""
    directions = [
        asyncio.create_task(_copy(a_reader, b_writer)),
        asyncio.create_task(_copy(b_reader, a_writer)),
    ]
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in directions:
            task.cancel()
        for writer in (a_writer, b_writer):
            writer.close()
        await asyncio.gather(*directions, return_exceptions=True)


@contextlib.asynccontextmanager
async def service_of(backends: list[int]) -> AsyncIterator[RoundRobinService]:
    service = RoundRobinService(backends)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
