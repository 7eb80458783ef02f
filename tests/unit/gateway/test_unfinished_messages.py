"""A message must be complete within the deadline (``--request-timeout``) of its first byte.

The review's case: an admitted agent sends most of a message just under the frame limit,
without FIN (or one frame, never all of it), then only pongs, which keep its connection
alive: the gateway held those bytes without end, and eight such connections passed the
pod's memory limit. Now such a message goes as an oversized one goes: at its deadline its
buffer is freed, its request fails with a 502 naming the reason, the rest of it is skipped
as it arrives and the connection carries on. Messages that complete in time, however slowly
they arrive, are untouched. All on looptime's clock: no test waits for real."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import tracemalloc
import weakref
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WSMessage
from aiohttp.test_utils import make_mocked_request

from tests.unit.gateway.stand_ins import LEAF, OneAgent, ReadSide, drain, frame_guard
from tests.unit.ws_stand_ins import frame as ws_frame
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.frames import (
    MESSAGE_TIMEOUT,
    FrameGuard,
    GuardedWebSocket,
    OversizedMessage,
    UnfinishedMessage,
)
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.protocol import TunnelRequest, TunnelResponse, encode, encode_binary

pytestmark = pytest.mark.looptime

DEADLINE = 30.0  # the gateway's request timeout, by default
LIMIT = 8 * 1024 * 1024  # the frame limit (64 MiB in the gateway; smaller here, same logic)
MASK = b"\x5a\xa5\x3c\xc3"  # not zero: the head of an unfinished frame must be unmasked
PIECE = 64 * 1024
REASON = "the agent's answer did not complete within 30s"
_OP_TEXT, _OP_BINARY, _OP_PONG = 0x1, 0x2, 0xA


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame, masked as an agent sends it."""
    return ws_frame(opcode, payload, fin=fin, mask=MASK)


PONG = frame(_OP_PONG, b"")


def answer(kind: str, rid: str, body_bytes: int) -> tuple[int, bytes]:
    """An agent's answer to ``rid``: v1/v2 JSON (a TEXT message) or v3 (BINARY)."""
    response = TunnelResponse(request_id=rid, status_code=200, body=b"b" * body_bytes)
    if kind == "v1 json":
        return _OP_TEXT, encode(response)
    return _OP_BINARY, encode_binary(response)


def frames_of(opcode: int, payload: bytes, *, ends: bool = True) -> list[bytes]:
    """The message (or, not ``ends``, its first part) as whole fragments of PIECE bytes
    (as gorilla writes, larger); ``opcode`` 0: a later part of it."""
    pieces = [payload[i : i + PIECE] for i in range(0, len(payload), PIECE)]
    return [
        frame(opcode if index == 0 else 0, piece, fin=ends and index == len(pieces) - 1)
        for index, piece in enumerate(pieces)
    ]


def split(data: bytes, size: int = PIECE) -> list[bytes]:
    """Bytes as they may arrive: in pieces, anywhere in a frame (no control frame between)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def reads_of(opcode: int, payload: bytes, shape: str) -> list[bytes]:
    """The message's reads: whole fragments (a pong may come after any of them), or one
    frame in pieces (nothing may come between them)."""
    if shape == "fragments":
        return frames_of(opcode, payload)
    return split(frame(opcode, payload))


def with_pongs(reads: list[bytes], shape: str) -> list[bytes]:
    """A pong after each read where the protocol allows one (between fragments)."""
    if shape != "fragments":
        return reads
    return [piece for read in reads for piece in (read, PONG)]


def guard(deadline: float = DEADLINE) -> tuple[FrameGuard, Any]:
    return frame_guard(LIMIT, deadline)


def data_of(messages: list[WSMessage]) -> list[Any]:
    """The queued messages but pongs, as comparable values."""
    return [
        m.data if isinstance(m.data, OversizedMessage) else bytes(m.data)
        for m in messages
        if m.type is not WSMsgType.PONG
    ]


def reports(messages: list[WSMessage]) -> list[OversizedMessage]:
    return [m.data for m in messages if isinstance(m.data, OversizedMessage)]


async def sleep_until(moment: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, moment - loop.time()))


KINDS = ["v1 json", "v3 binary"]
SHAPES = ["fragments", "one frame"]


@pytest.mark.parametrize("after", ["kept busy", "silence"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
async def test_an_unfinished_message_is_dropped_at_its_deadline_and_the_connection_goes_on(
    kind: str, shape: str, after: str
) -> None:
    """2 MiB of a 3 MiB (4 MiB as JSON) message; then (kept busy) a pong every 5 s (between
    its fragments: a frame cannot have one inside) and 2 KiB more of it every 10 s (never
    idle for long: it is judged from its first byte), or nothing at all (no read comes to
    judge it by: the deadline does)."""
    loop = asyncio.get_running_loop()
    checker, queue = guard()
    opcode, payload = answer(kind, "gw-7", 3 * 1024 * 1024)
    cut = 2 * 1024 * 1024
    if shape == "fragments":  # the trickle: 2 KiB fragments
        partial = frames_of(opcode, payload[:cut], ends=False)
        trickle = [frame(0, payload[cut + i : cut + i + 2048], fin=False) for i in (0, 2048, 4096)]
        rest = frames_of(0, payload[cut + 6144 :])
    else:
        sent = frame(opcode, payload)
        partial, trickle = split(sent[:cut]), split(sent[cut : cut + 6144], 2048)
        rest = split(sent[cut + 6144 :])
    nxt = answer(kind, "gw-8", 1000)[1]
    started = loop.time()

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for piece in partial:
            checker.feed_data(piece)
        assert checker.buffered >= 2_000_000
        if after == "silence":
            await sleep_until(started + DEADLINE - 0.5)
        else:
            for second in range(5, 30, 5):
                await sleep_until(started + second)
                if shape == "fragments":
                    checker.feed_data(PONG)
                if second % 10 == 0:
                    checker.feed_data(trickle.pop(0))
            await sleep_until(started + DEADLINE - 0.5)
        assert reports(drain(queue)) == []  # not before its deadline
        assert checker.buffered >= 2_000_000

        await sleep_until(started + DEADLINE + 0.5)  # no read needed: the deadline judges
        (report,) = reports(drain(queue))
        assert checker.buffered == 0
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - before < 256 * 1024, f"{held - before} bytes still held"
    assert isinstance(report, UnfinishedMessage) and report.request_id == "gw-7"
    assert REASON in report.describe() and report.at_least >= 2_000_000

    for piece in with_pongs([*trickle, *rest], shape):  # the rest, when it comes, is skipped...
        checker.feed_data(piece)
    assert checker.buffered == 0
    checker.feed_data(frame(opcode, nxt))  # ...and the next message is served
    assert data_of(drain(queue)) == [nxt]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_completing_in_time_is_untouched_and_each_is_judged_from_its_own_start(
    kind: str,
) -> None:
    """A completes at 0.9 of the deadline (pongs between its parts); B opens at 0.95 and
    stays open: when A's deadline passes B is young and kept, at its own deadline dropped."""
    loop = asyncio.get_running_loop()
    checker, queue = guard()
    opcode, first = answer(kind, "a", 1024 * 1024)
    a_pieces = frames_of(opcode, first)
    started = loop.time()
    checker.feed_data(b"".join(a_pieces[:-1]))
    for second in range(5, 27, 5):
        await sleep_until(started + second)
        checker.feed_data(PONG)
    await sleep_until(started + 0.9 * DEADLINE)
    checker.feed_data(a_pieces[-1])
    assert data_of(drain(queue)) == [first] and checker.buffered == 0

    _, second_answer = answer(kind, "b", 1024 * 1024)
    b_wire = frame(opcode, second_answer)
    await sleep_until(started + 0.95 * DEADLINE)
    b_started = loop.time()
    checker.feed_data(b_wire[: len(b_wire) // 2])
    await sleep_until(started + DEADLINE + 1)
    assert data_of(drain(queue)) == [] and checker.buffered > 0  # young yet
    await sleep_until(b_started + DEADLINE - 0.5)
    assert data_of(drain(queue)) == []
    await sleep_until(b_started + DEADLINE + 0.5)
    (report,) = reports(drain(queue))
    assert isinstance(report, UnfinishedMessage) and report.request_id == "b"
    assert checker.buffered == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
async def test_slow_but_steady_large_messages_are_untouched(kind: str, shape: str) -> None:
    """Two 3 MiB messages, each arriving evenly over 0.8 of the deadline, back to back (the
    second is open when the first's deadline passes), arrive whole; a third left unfinished
    after them is dropped at its own deadline, not earlier."""
    loop = asyncio.get_running_loop()
    checker, queue = guard()
    started = loop.time()
    expected = []
    for index in range(2):
        opcode, payload = answer(kind, f"steady-{index}", 3 * 1024 * 1024)
        expected.append(payload)
        pieces = reads_of(opcode, payload, shape)
        step = 0.8 * DEADLINE / (len(pieces) - 1)
        begun = loop.time()
        for number, piece in enumerate(pieces):
            await sleep_until(begun + number * step)
            checker.feed_data(piece)
            if shape == "fragments":
                checker.feed_data(PONG)
        assert loop.time() - begun >= 0.75 * DEADLINE
        assert data_of(drain(queue)) == [expected[-1]]
    assert loop.time() - started >= 1.5 * DEADLINE
    opcode, third = answer(kind, "left-open", 1024 * 1024)
    checker.feed_data(b"".join(reads_of(opcode, third, shape))[: 512 * 1024])
    third_started = loop.time()
    await sleep_until(third_started + DEADLINE - 0.5)
    assert data_of(drain(queue)) == []
    await sleep_until(third_started + DEADLINE + 0.5)
    (report,) = reports(drain(queue))
    assert isinstance(report, UnfinishedMessage) and report.request_id == "left-open"


async def test_a_connection_ending_mid_message_frees_it_and_leaves_no_timer_behind() -> None:
    """aiohttp feeds the guard its EOF when the connection is lost: the unfinished message
    goes then, and the guard is not kept alive (with it) by its deadline's timer."""
    checker, _ = guard()
    opcode, payload = answer("v3 binary", "gone", 1024 * 1024)
    for piece in frames_of(opcode, payload)[:-1]:
        checker.feed_data(piece)
    assert checker.buffered > 0
    checker.feed_eof()
    assert checker.buffered == 0
    alive = weakref.ref(checker)
    del checker
    gc.collect()
    assert alive() is None


# ---- through the agent endpoint to the caller ------------------------------------------------


class AgentSide:
    """The agent's socket as the gateway sends to it: the requests, decoded or not."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_str(self, data: str) -> None:
        self.sent.append(data)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_request_whose_answer_never_completes_gets_a_502_naming_the_reason(
    kind: str,
) -> None:
    """Through the agent endpoint and the proxy: the request waiting for the unfinished
    answer is answered 502 with the reason at the message's deadline, and the connection's
    next request is answered. (In the gateway the two deadlines are equal and a plain
    request's own timer, started before the answer's first byte, comes first; here the
    request's is longer, to see the message's deadline answer it.)"""
    binary = kind == "v3 binary"
    agent = AgentSide()
    ws: Any = agent
    conn = AgentConnection(
        "workflowplane", "p1", ws, LEAF, {"team-a/build"}, v2=binary, binary=binary
    )
    connections: Any = OneAgent(conn)
    config = GatewayConfig(request_timeout_seconds=3 * DEADLINE)
    metrics = GatewayMetrics()
    proxy = KubeProxy(connections, config, metrics)
    endpoint = AgentEndpoint(connections, config, metrics)
    checker, queue = guard()
    reading = asyncio.create_task(endpoint._read_frames(conn, ReadSide(queue)))  # type: ignore[arg-type]
    first, second = "req-1", "req-2"
    try:
        asking = asyncio.create_task(proxy.ask(conn, TunnelRequest(request_id=first, path="/x")))
        await asyncio.sleep(0)
        assert first in conn.pending
        opcode, payload = answer(kind, first, 2 * 1024 * 1024)
        loop = asyncio.get_running_loop()
        started = loop.time()
        frames = frames_of(opcode, payload)
        for piece in frames[:-2]:
            checker.feed_data(piece)
        while loop.time() + 4 < started + DEADLINE:
            await asyncio.sleep(4)
            checker.feed_data(PONG)  # the connection stays alive
        assert not asking.done()
        reply = await asyncio.wait_for(asking, DEADLINE)
        assert loop.time() - started == pytest.approx(DEADLINE, abs=0.01)
        assert isinstance(reply, web.Response) and reply.status == 502
        assert isinstance(reply.body, bytes)
        status = json.loads(reply.body)
        assert REASON in status["message"], status
        assert checker.buffered == 0
        checker.feed_data(b"".join(frames[-2:]))  # its end, when it comes, is skipped

        asking = asyncio.create_task(proxy.ask(conn, TunnelRequest(request_id=second, path="/x")))
        await asyncio.sleep(0)
        opcode, payload = answer(kind, second, 100_000)
        checker.feed_data(b"".join(frames_of(opcode, payload)))
        served = await asyncio.wait_for(asking, 5)
        assert isinstance(served, TunnelResponse) and served.body == b"b" * 100_000
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def test_the_agent_socket_hands_its_guard_the_deadline_the_request_timeout_by_default() -> (
    None
):
    """``GuardedWebSocket(message_timeout=...)`` (agent_endpoint passes
    ``--request-timeout``); without it, the gateway's default request timeout."""
    assert MESSAGE_TIMEOUT == GatewayConfig().request_timeout_seconds == DEADLINE
    assert GuardedWebSocket(limit=LIMIT)._message_timeout == DEADLINE
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    request = make_mocked_request("GET", "/ws", headers={**upgrade, "Sec-WebSocket-Key": key})
    ws = GuardedWebSocket(limit=LIMIT, message_timeout=5.0)
    await ws.prepare(request)
    assert ws.guard is not None
    loop = asyncio.get_running_loop()
    opcode, payload = answer("v3 binary", "short", 100_000)
    ws.guard.feed_data(frames_of(opcode, payload)[0])
    started = loop.time()
    await sleep_until(started + 4.5)
    assert ws.guard.buffered == PIECE and data_of(drain(ws._reader)) == []
    await sleep_until(started + 5.5)
    (report,) = reports(drain(ws._reader))
    assert report.request_id == "short" and "did not complete within 5s" in report.describe()
    assert ws.guard.buffered == 0
