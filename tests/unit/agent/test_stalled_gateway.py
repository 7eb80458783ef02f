"""A gateway that keeps its connection but reads nothing of it: the agent's sends of answers
to it waited without end, each holding the API server connection its answer came from (a pool
shared with the tunnels to the other replicas), so one such replica starved every other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import pytest
from aiohttp import web

from tests.unit.agent.stand_ins import Gateway, Upstream, plain_tunnel, serving, until
from workflowplane.agent.upstream import UpstreamResult
from workflowplane.protocol import TunnelRequest, encode

BIG = 1 << 20  # as base64, within the stand-in's 4 MiB messages


class BigAnswers(Upstream):
    async def request(self, *_: Any, **__: Any) -> UpstreamResult:
        self.asked += 1
        return UpstreamResult(200, {}, b"x" * BIG)


async def test_a_gateway_that_reads_nothing_is_cut_off_and_redialled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def never_reads(ws: web.WebSocketResponse) -> None:
        if ws is not gateway.sockets[0]:  # the redial: a gateway that reads
            async for _ in ws:
                pass
            return
        transport = ws._writer.transport  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # no autotuning
        for n in range(12):  # the first answer fills its reader, which then stops reading
            await ws.send_str(encode(TunnelRequest(request_id=f"r{n}", path="/api")).decode())
        await until(lambda: len(gateway.upgrades) >= 2, timeout=30)  # cut off, redialled

    gateway = Gateway(never_reads)
    tunnel = plain_tunnel(
        "", upstream=BigAnswers(), timeout=0.5, dead_after=120.0, max_frame=64 << 20
    )
    async with serving(gateway):
        tunnel.url = f"{gateway.url}/ws"
        with caplog.at_level(logging.WARNING, logger="workflowplane.agent.tunnel"):
            running = asyncio.create_task(tunnel.run())
            try:
                await until(lambda: len(gateway.upgrades) >= 2, timeout=20)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
    assert "the gateway read nothing the agent sent" in caplog.text
