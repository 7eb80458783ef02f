"""Stand-ins for the agent's unit tests: its API server, and a wait for what a test asserts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from workflowplane.agent.upstream import UpstreamResult


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait for ``check`` to hold (what the test asserts next)."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


class Upstream:
    """The plane's API server as the agent sees it: answers once ``gate`` is set."""

    def __init__(self, status: int = 200) -> None:
        self.gate = asyncio.Event()
        self.status = status
        self.asked = 0
        self.traces: list[aiohttp.TraceConfig] = []

    def observe(self, trace: aiohttp.TraceConfig) -> None:
        self.traces.append(trace)

    async def request(self, *_: Any) -> UpstreamResult:
        self.asked += 1
        await self.gate.wait()
        return UpstreamResult(self.status, {}, b"not ready" if self.status != 200 else b"ok")

    async def stream(self, *_: Any) -> AsyncIterator[UpstreamResult | bytes]:
        await self.gate.wait()
        yield UpstreamResult(200, {}, b"")
        await asyncio.Event().wait()  # a watch: until cancelled
