"""The bytes of agent messages being assembled are bounded gateway-wide, not only per message.

The review's case: several admitted agents (any tenant can run one) each sending a message
just under the frame limit at once, within the deadline, passed the chart's 512 MiB and the
gateway was OOM-killed, dropping every tenant's plane. Now the frame guards of all
connections draw on one budget (four frame limits; one planeID's agents at most half of
it): a message open at the end of a read is charged what it holds, and gives it back when
it is handed on, dropped or skipped, or its connection ends; the message that would pass
the budget fails its own request with a 502 naming the limit and is skipped, the others
complete. A message begun and ended within one read is never held, and never refused.

Here the frame limit is 1 MiB (64 MiB in the gateway; same logic), so the budget is 4 MiB
and a plane's share 2 MiB. Time is looptime's: nothing waits for real."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_websocket import WebSocketError, WSMessage
from aiohttp.test_utils import make_mocked_request

from tests.unit.gateway.stand_ins import LEAF, OneAgent, ReadSide, drain, frame_guard
from tests.unit.ws_stand_ins import frame as ws_frame
from workflowplane.gateway import agent_endpoint
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.frames import (
    BUDGET_MESSAGES,
    FrameGuard,
    GuardedWebSocket,
    MessageBudget,
    OverBudget,
    OversizedMessage,
    UnfinishedMessage,
)
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.server import Gateway
from workflowplane.protocol import TunnelRequest, TunnelResponse, encode, encode_binary

pytestmark = pytest.mark.looptime

LIMIT = 1 << 20  # the frame limit
TOTAL = BUDGET_MESSAGES * LIMIT  # the gateway's budget: 4 MiB here
SHARE = TOTAL // 2  # what one planeID's agents may hold of it
NEAR_LIMIT = 900_000  # a large answer's bytes on the wire (under the frame limit)
DEADLINE = 30.0
MASK = b"\x5a\xa5\x3c\xc3"
PIECE = 64 * 1024
GAUGE = "workflowplane_gateway_unfinished_message_bytes"
OVER_TOTAL = f"the gateway holds {TOTAL} bytes of unfinished agent answers, its limit; retry"
_OP_TEXT, _OP_BINARY = 0x1, 0x2
KINDS = ["v1 json", "v3 binary"]
SHAPES = ["fragments", "one frame"]


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame, masked as an agent sends it."""
    return ws_frame(opcode, payload, fin=fin, mask=MASK)


def answer(kind: str, rid: str, wire_bytes: int) -> tuple[int, bytes]:
    """An agent's answer to ``rid`` of about ``wire_bytes``: v1/v2 JSON (a TEXT message,
    its body base64) or v3 (BINARY)."""
    if kind == "v1 json":
        body = b"b" * (wire_bytes * 3 // 4)
        return _OP_TEXT, encode(TunnelResponse(request_id=rid, status_code=200, body=body))
    body = b"b" * wire_bytes
    return _OP_BINARY, encode_binary(TunnelResponse(request_id=rid, status_code=200, body=body))


def reads_of(opcode: int, payload: bytes, shape: str) -> list[bytes]:
    """The message's reads: whole fragments of PIECE bytes, or one frame in PIECE pieces."""
    if shape == "fragments":
        pieces = [payload[i : i + PIECE] for i in range(0, len(payload), PIECE)]
        return [
            frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1)
            for i, piece in enumerate(pieces)
        ]
    wire = frame(opcode, payload)
    return [wire[i : i + PIECE] for i in range(0, len(wire), PIECE)]


def make_guard(budget: MessageBudget | None, plane: str) -> tuple[FrameGuard, Any]:
    return frame_guard(LIMIT, DEADLINE, budget, plane)


def data_of(messages: list[WSMessage]) -> list[Any]:
    return [m.data if isinstance(m.data, OversizedMessage) else bytes(m.data) for m in messages]


class Agents:
    """Connections of the gateway (a guard each) drawing on one budget; checks after every
    read that the budget never passes its total and holds exactly what the guards buffer."""

    def __init__(self, budget: MessageBudget, planes: list[str]) -> None:
        self.budget = budget
        made = [make_guard(budget, plane) for plane in planes]
        self.guards = [checker for checker, _ in made]
        self.queues = [queue for _, queue in made]
        self.most = 0  # the most the budget held after any read

    def feed(self, index: int, data: bytes) -> None:
        self.guards[index].feed_data(data)
        held = self.budget.held
        assert held <= self.budget.total
        assert held == sum(checker.buffered for checker in self.guards)
        self.most = max(self.most, held)

    def interleaved(self, reads: list[list[bytes]]) -> None:
        """Each connection's reads, round robin (all their messages grow at once)."""
        for step in range(max(len(r) for r in reads)):
            for index, mine in enumerate(reads):
                if step < len(mine):
                    self.feed(index, mine[step])


def over_budget(messages: list[WSMessage]) -> list[OverBudget]:
    return [m.data for m in messages if isinstance(m.data, OverBudget)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
async def test_five_agents_at_once_never_pass_the_budget_one_fails_and_the_others_complete(
    kind: str, shape: str
) -> None:
    """Five connections (five planes) each send a message of 0.9 of the frame limit, their
    reads interleaved, all but the last left open: 4.5 MiB would be held under a 4 MiB
    budget. The one whose read would pass it is refused (its buffer freed at once, one
    report naming the limit); the other four complete, the refused one's rest is skipped,
    its connection's next message is served, and the budget is back at 0."""
    agents = Agents(MessageBudget(TOTAL), [f"plane-{i}" for i in range(5)])
    messages = [answer(kind, f"req-{i}", NEAR_LIMIT) for i in range(5)]
    reads = [reads_of(opcode, payload, shape) for opcode, payload in messages]
    agents.interleaved([mine[:-1] for mine in reads])

    reported = [over_budget(drain(queue)) for queue in agents.queues]
    refused = [index for index, found in enumerate(reported) if found]
    assert len(refused) == 1, reported
    (loser,) = refused
    (report,) = reported[loser]
    assert report.request_id == f"req-{loser}" and report.owner is None
    assert report.describe() == OVER_TOTAL and report.budget == TOTAL
    assert agents.guards[loser].buffered == 0
    assert agents.most > TOTAL - 2 * PIECE  # it was full, not refused early
    assert agents.budget.held == sum(g.buffered for g in agents.guards) > 3 * 800_000

    for index, mine in enumerate(reads):  # the last reads come
        agents.feed(index, mine[-1])
    for index, queue in enumerate(agents.queues):
        expected = [] if index == loser else [messages[index][1]]
        assert data_of(drain(queue)) == expected
    assert agents.budget.held == 0 and agents.budget.held_by(f"plane-{loser}") == 0

    opcode, again = answer(kind, "req-again", NEAR_LIMIT)  # the refused one's connection
    for piece in reads_of(opcode, again, shape):
        agents.feed(loser, piece)
    assert data_of(drain(agents.queues[loser])) == [again]
    assert agents.budget.held == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_one_planes_agents_hold_at_most_half_the_budget_and_others_go_on(
    kind: str,
) -> None:
    """Three connections of one planeID and one of another each send 0.9 of the frame
    limit at once: the greedy plane's third message would pass its share (half the budget)
    and is refused naming the share, though the budget has room; the other plane's message,
    begun after, completes, and so do the greedy plane's first two."""
    planes = ["greedy", "greedy", "greedy", "other"]
    agents = Agents(MessageBudget(TOTAL), planes)
    messages = [answer(kind, f"req-{i}", NEAR_LIMIT) for i in range(4)]
    reads = [reads_of(opcode, payload, "fragments") for opcode, payload in messages]
    agents.interleaved([mine[:-1] for mine in reads[:3]])
    assert agents.budget.held_by("greedy") <= SHARE
    (report,) = over_budget(drain(agents.queues[2]))
    assert report.request_id == "req-2" and report.owner == "greedy"
    assert report.budget == SHARE
    assert report.describe() == (
        f"the agents serving greedy hold {SHARE} bytes of unfinished answers at the "
        "gateway, their share of its limit; retry"
    )
    for piece in reads[3]:  # the other tenant's whole answer, while greedy's are open
        agents.feed(3, piece)
    assert data_of(drain(agents.queues[3])) == [messages[3][1]]
    for index in range(3):
        agents.feed(index, reads[index][-1])
    assert [data_of(drain(q)) for q in agents.queues[:3]] == [
        [messages[0][1]],
        [messages[1][1]],
        [],
    ]
    assert agents.budget.held == 0 and agents.budget.held_by("greedy") == 0


async def sleep_until(moment: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, moment - loop.time()))


ENDINGS = [
    "completed",
    "over the frame limit",
    "over the budget",
    "at its deadline",
    "connection ended",
    "protocol error",
]


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_gives_its_bytes_back_however_it_ends(kind: str, ending: str) -> None:
    """Half a message is held (the budget holds what the guard buffers, for its plane);
    then it is handed on, crosses the frame limit, is refused by the budget, is dropped at
    its deadline, or its connection ends or breaks: the budget is back at 0 at once (before
    the rest of the message comes), and a connection that goes on is served as before."""
    loop = asyncio.get_running_loop()
    budget = MessageBudget(TOTAL, share=TOTAL)
    checker, queue = make_guard(budget, "p")
    wire = 3 * LIMIT // 2 if ending == "over the frame limit" else NEAR_LIMIT
    opcode, payload = answer(kind, "rid-1", wire)
    reads = reads_of(opcode, payload, "fragments")
    half = len(reads) * 5 // 16  # under the frame limit, whatever the message's size
    started = loop.time()
    for piece in reads[:half]:
        checker.feed_data(piece)
    assert budget.held == budget.held_by("p") == checker.buffered > 250_000

    if ending == "completed":
        for piece in reads[half:]:
            checker.feed_data(piece)
        reads = reads[:half]  # nothing more comes of it
        assert data_of(drain(queue)) == [payload]
    elif ending == "over the frame limit":
        for piece in reads[half:]:
            checker.feed_data(piece)
            if budget.held == 0:
                break
        (report,) = data_of(drain(queue))
        assert type(report) is OversizedMessage and report.request_id == "rid-1"
    elif ending == "over the budget":
        assert budget.take(TOTAL - budget.held, "others")  # the other agents fill it
        checker.feed_data(reads[half])
        (report,) = data_of(drain(queue))
        assert isinstance(report, OverBudget) and report.request_id == "rid-1"
        assert budget.held == budget.held_by("others")  # all but this message's
        budget.give_back(budget.held_by("others"), "others")
    elif ending == "at its deadline":
        await sleep_until(started + DEADLINE + 1)
        (report,) = data_of(drain(queue))
        assert isinstance(report, UnfinishedMessage) and report.request_id == "rid-1"
    elif ending == "connection ended":
        checker.feed_eof()
    else:  # a new message begun in the middle of this one: the connection ends
        checker.feed_data(frame(opcode, b"x"))
        assert isinstance(queue.exception(), WebSocketError)
    assert budget.held == 0 and budget.held_by("p") == 0 and checker.buffered == 0

    if ending in {"connection ended", "protocol error"}:
        return
    for piece in reads[half:]:  # the rest, when it comes (skipped, unless delivered)
        checker.feed_data(piece)
    drain(queue)
    opcode, following = answer(kind, "rid-2", NEAR_LIMIT)
    for piece in reads_of(opcode, following, "one frame"):
        checker.feed_data(piece)
        assert budget.held == checker.buffered
    assert data_of(drain(queue)) == [following] and budget.held == 0


def small_traffic(kind: str, *, split: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """(the bytes of one read, the message it completes): whole one-frame answers, answers
    of 4 KiB fragments in one read, and (``split``) answers split over several reads."""
    for index in range(60):
        opcode, payload = answer(kind, f"small-{index}", 200 + 997 * index)
        wire = frame(opcode, payload)
        if index % 3 == 0:
            yield wire, payload
        elif index % 3 == 1:
            pieces = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
            fragments = [
                frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1)
                for i, piece in enumerate(pieces)
            ]
            yield b"".join(fragments), payload
        elif split:
            reads = [wire[i : i + 1000] for i in range(0, len(wire), 1000)]
            yield from ((read, b"") for read in reads[:-1])
            yield reads[-1], payload


@pytest.mark.parametrize("kind", KINDS)
async def test_small_answers_flow_as_before_and_those_read_whole_pass_a_full_budget(
    kind: str,
) -> None:
    """Small answers, whole or fragmented in one read or split over reads, arrive exactly
    as without a budget, none refused, the budget holding what the guard buffers between
    reads and nothing once each is whole. While other agents fill the budget, an answer
    begun and ended within one read (nearly every small one, v1 JSON too) still passes: it
    is never held past the read."""
    budget = MessageBudget(TOTAL)
    checker, queue = make_guard(budget, "p")
    plain, plain_queue = make_guard(None, "p")
    expected = []
    for data, completes in small_traffic(kind):
        checker.feed_data(data)
        plain.feed_data(data)
        assert budget.held == checker.buffered
        assert (budget.held == 0) == bool(completes)
        if completes:
            expected.append(completes)
    assert data_of(drain(queue)) == data_of(drain(plain_queue)) == expected
    assert len(expected) == 60

    full = MessageBudget(TOTAL, share=TOTAL)
    assert full.take(TOTAL, "others")
    checker, queue = make_guard(full, "p")
    sent = list(small_traffic(kind, split=False))
    checker.feed_data(b"".join(data for data, _ in sent))
    assert data_of(drain(queue)) == [payload for _, payload in sent]
    assert full.held == TOTAL and full.held_by("p") == 0


# ---- through the agent endpoint to the caller ------------------------------------------------


class AgentSide:
    """The agent's socket as the gateway sends to it."""

    closed = False

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_str(self, data: str) -> None: ...


class Endpoint:
    """An agent endpoint (frame limit 1 MiB: its budget 4 MiB) and its proxy around one
    agent connection of plane p1, read through a guard on that budget; and four connections
    of other planes on the same budget."""

    def __init__(self, kind: str) -> None:
        binary = kind == "v3 binary"
        ws: Any = AgentSide()
        self.conn = AgentConnection(
            "workflowplane", "p1", ws, LEAF, {"team-a/build"}, v2=binary, binary=binary
        )
        connections: Any = OneAgent(self.conn)
        config = GatewayConfig(max_frame_bytes=LIMIT)
        self.metrics = GatewayMetrics()
        self.proxy = KubeProxy(connections, config, self.metrics)
        self.endpoint = AgentEndpoint(connections, config, self.metrics)
        self.budget = self.endpoint.budget
        self.others = Agents(self.budget, [f"other-{i}" for i in range(4)])
        self.guard, self.queue = make_guard(self.budget, "p1")

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value(GAUGE)

    def ask(self, rid: str) -> asyncio.Task[Any]:
        return asyncio.create_task(
            self.proxy.ask(self.conn, TunnelRequest(request_id=rid, path="/x"))
        )


@pytest.mark.parametrize("kind", KINDS)
async def test_the_request_whose_answer_would_pass_the_budget_gets_a_502_naming_the_limit(
    kind: str,
) -> None:
    """Through the agent endpoint (its budget: four frame limits) and the proxy: four
    other agents hold most of the budget with unfinished answers; the request whose answer
    would pass it is answered 502 naming the gateway's limit at once (not at its timeout),
    the gauge shows what is held, the others complete, and the connection's next request
    is answered once there is room."""
    site = Endpoint(kind)
    assert site.budget.total == TOTAL
    reading = asyncio.create_task(site.endpoint._read_frames(site.conn, ReadSide(site.queue)))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    try:
        other_answers = [answer(kind, f"o-{i}", NEAR_LIMIT) for i in range(4)]
        other_reads = [reads_of(opcode, payload, "fragments") for opcode, payload in other_answers]
        site.others.interleaved([mine[:-1] for mine in other_reads])
        assert site.budget.held > 3_200_000 and site.gauge() == site.budget.held

        asking = site.ask("req-1")
        await asyncio.sleep(0)
        assert "req-1" in site.conn.pending
        started = loop.time()
        opcode, payload = answer(kind, "req-1", NEAR_LIMIT)
        reads = reads_of(opcode, payload, "one frame")
        for piece in reads[:-1]:
            site.guard.feed_data(piece)
            assert site.budget.held <= TOTAL
        reply = await asyncio.wait_for(asking, DEADLINE)
        assert loop.time() - started < 1.0  # at once, not at the request's timeout
        assert isinstance(reply, web.Response) and reply.status == 502
        assert isinstance(reply.body, bytes)
        status = json.loads(reply.body)
        assert OVER_TOTAL in status["message"] and status["reason"] == "ResponseTooLarge"
        assert site.guard.buffered == 0
        site.guard.feed_data(reads[-1])  # its end is skipped

        for index, mine in enumerate(other_reads):
            site.others.feed(index, mine[-1])
            assert data_of(drain(site.others.queues[index])) == [other_answers[index][1]]
        assert site.budget.held == 0 and site.gauge() == 0

        asking = site.ask("req-2")
        await asyncio.sleep(0)
        opcode, payload = answer(kind, "req-2", NEAR_LIMIT)
        for piece in reads_of(opcode, payload, "one frame"):
            site.guard.feed_data(piece)
        served = await asyncio.wait_for(asking, DEADLINE)
        assert isinstance(served, TunnelResponse) and served.status_code == 200
        assert site.budget.held == 0
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def test_one_budget_per_gateway_four_frame_limits_its_gauge_and_its_plane_share() -> None:
    """The gateway makes one budget (four frame limits, a plane's share half of it) and its
    agent endpoint uses it; the gauge reads it when scraped."""
    config = GatewayConfig(max_frame_bytes=LIMIT)
    kube: Any = None
    gateway = Gateway(config, kube)
    try:
        budget = gateway.message_budget
        assert gateway._agents.budget is budget
        assert (budget.total, budget.share) == (4 * LIMIT, 2 * LIMIT)
        assert GatewayConfig().max_frame_bytes * 4 == 256 << 20  # the default: 256 MiB
        assert budget.take(12345, "p")
        assert gateway.metrics.registry.get_sample_value(GAUGE) == 12345
        budget.give_back(12345, "p")
        assert gateway.metrics.registry.get_sample_value(GAUGE) == 0
    finally:
        gateway._files.cleanup()
    metrics = GatewayMetrics()
    endpoint = AgentEndpoint(OneAgent(None), GatewayConfig(), metrics)  # type: ignore[arg-type]
    assert endpoint.budget.total == 4 * GatewayConfig().max_frame_bytes


class _Built(Exception):
    pass


@pytest.mark.parametrize(
    ("granted", "owner"),
    [
        ({"team-a/build"}, "namespaces team-a"),
        ({"team-a/build", "team-a/test", "team-b/x"}, "namespaces team-a,team-b"),
        ({"/shared"}, "namespaces /"),  # ClusterWorkflowPlanes: the platform's
    ],
)
async def test_each_agent_socket_draws_on_the_budget_share_of_its_crs_namespaces(
    monkeypatch: pytest.MonkeyPatch, granted: set[str], owner: str
) -> None:
    """``/ws`` makes the agent's socket with the endpoint's budget, owned by the namespaces
    of the CRs it was admitted for, not by its planeID: a squatter (its own CR and CA on a
    victim's planeID) filling its share leaves the victim's whole, and a tenant naming many
    planeIDs still has one share."""
    made: dict[str, Any] = {}

    def socket(**kwargs: Any) -> GuardedWebSocket:
        made.update(kwargs)
        raise _Built

    admits: Any = SimpleNamespace(
        admit=lambda plane, leaf, intermediates=(): SimpleNamespace(granted=frozenset(granted))
    )
    endpoint = AgentEndpoint(admits, GatewayConfig(), GatewayMetrics())
    monkeypatch.setattr(agent_endpoint, "peer_chain", lambda request: (LEAF,))
    monkeypatch.setattr(agent_endpoint, "GuardedWebSocket", socket)
    for plane_id in ("p7", "p8"):
        with pytest.raises(_Built):
            target = f"/ws?planeType=workflowplane&planeID={plane_id}"
            await endpoint.handle(make_mocked_request("GET", target))
        assert made["budget"] is endpoint.budget and made["owner"] == owner


async def test_a_guard_charges_its_owners_share_until_its_connection_ends() -> None:
    budget = MessageBudget(TOTAL)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    request = make_mocked_request("GET", "/ws", headers={**upgrade, "Sec-WebSocket-Key": key})
    ws = GuardedWebSocket(limit=LIMIT, budget=budget, owner="p7")
    await ws.prepare(request)
    assert ws.guard is not None
    opcode, payload = answer("v3 binary", "r", NEAR_LIMIT)
    ws.guard.feed_data(reads_of(opcode, payload, "fragments")[0])
    assert budget.held == budget.held_by("p7") == PIECE
    ws.guard.feed_eof()  # aiohttp's, when the connection is lost
    assert budget.held == 0
