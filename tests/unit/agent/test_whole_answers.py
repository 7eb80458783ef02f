"""Whole answers (OpenChoreo's v1 gateway: each answer in one frame) count against one budget per
agent process: a large body is reserved before or as it is read and given back once its frame is
sent, whatever happens to it; an answer that does not fit is refused at once with a 503 saying
so. Small answers and the chunked (v2/v3) path never touch the budget."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.agent.stand_ins import until
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.kubeconfig import KubeTarget
from workflowplane.agent.replicas import ReplicaAddress
from workflowplane.agent.runner import Agent
from workflowplane.agent.tunnel import FrameServer, body_limit
from workflowplane.agent.upstream import SMALL_ANSWER, AnswerBudget, Upstream
from workflowplane.kits.http1 import Http1Error
from workflowplane.protocol import StreamChunk, TunnelRequest, TunnelResponse, encode
from workflowplane.protocol.binary import decode_binary, encode_binary, encode_chunk

MAX_FRAME = 1 << 20  # a body of up to body_limit(MAX_FRAME) = 737,280 bytes fits one frame
PIECE = 100_000
KUBECONFIG = (
    "apiVersion: v1\nkind: Config\n"
    'clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]\n'
    "users: [{name: u, user: {token: t}}]\n"
    "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
)


class Answer:
    """One upstream answer: ``pieces`` of body as the socket would give them, with its
    Content-Length or none; it breaks before piece ``fail_at``, or stops before piece
    ``stall_at`` until ``resume`` is set (``stalled`` says it got there)."""

    def __init__(
        self,
        pieces: list[bytes],
        *,
        length: bool = True,
        fail_at: int | None = None,
        stall_at: int | None = None,
    ) -> None:
        self.status = 200
        self.headers = [("Content-Type", "application/json")]
        self.pieces = pieces
        self.content_length = sum(map(len, pieces)) if length else None
        self.complete = False
        self.fail_at, self.stall_at = fail_at, stall_at
        self.stalled, self.resume = asyncio.Event(), asyncio.Event()
        self.given = 0  # bytes handed out so far

    async def iter_any(self) -> AsyncIterator[bytes]:
        for index, piece in enumerate(self.pieces):
            if index == self.fail_at:
                raise Http1Error("connection reset by the API server")
            if index == self.stall_at:
                self.stalled.set()
                await self.resume.wait()
            self.given += len(piece)
            yield piece
        self.complete = True


def body(size: int, fill: bytes = b"x") -> list[bytes]:
    """A body of ``size`` bytes in pieces of ``PIECE``."""
    return [fill * min(PIECE, size - at) for at in range(0, size, PIECE)]


class PlaneApi(Upstream):
    """The agent's real ``Upstream.request`` (the budget's reservations included) over the
    scripted answers, one per path; the exchange of ``/ends-badly`` fails as it ends."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        super().__init__(KubeTarget.from_server("http://127.0.0.1:9"), 1 << 30)
        self.answers = answers

    def open(self, *args: Any, **_: Any) -> Any:
        return self._opened(args[1])

    @contextlib.asynccontextmanager
    async def _opened(self, path: str) -> AsyncIterator[Answer]:
        yield self.answers[path]
        if path == "/ends-badly":
            raise Http1Error("the connection broke as the exchange ended")


class CountedBudget(AnswerBudget):
    """A budget that remembers every reservation and the most it held at once."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.taken: list[int] = []
        self.peak = 0

    def take(self, size: int, answer: int, known: bool) -> None:
        super().take(size, answer, known)
        self.taken.append(size)
        self.peak = max(self.peak, self.held)


class Wire:
    """The gateway's side of one connection: the frames sent, decoded; a frame over
    ``gate_over`` bytes waits until ``opened`` is set (a gateway slow to read)."""

    def __init__(self, gate_over: int | None = None) -> None:
        self.gate_over = gate_over
        self.opened = asyncio.Event()
        self.waiting = 0
        self.frames: list[dict[str, Any]] = []

    async def send(self, data: bytes | bytearray) -> None:
        if self.gate_over is not None and len(data) > self.gate_over:
            self.waiting += 1
            try:
                await self.opened.wait()
            finally:
                self.waiting -= 1
        self.frames.append(json.loads(data))

    def answer(self, rid: str) -> dict[str, Any]:
        (frame,) = [frame for frame in self.frames if frame["requestID"] == rid]
        return frame


def request(rid: str, path: str | None = None) -> str:
    frame = {"requestID": rid, "target": "k8s", "method": "GET", "path": path or f"/{rid}"}
    return json.dumps(frame)


def is_close(rid: str) -> str:
    return json.dumps({"requestID": rid, "data": None, "isClose": True})


def body_of(frame: dict[str, Any]) -> bytes:
    return base64.b64decode(frame["body"])


def status_message(frame: dict[str, Any]) -> str:
    status = json.loads(body_of(frame))
    assert status["kind"] == "Status" and status["code"] == frame["statusCode"]
    return str(status["message"])


@contextlib.asynccontextmanager
async def v1_server(
    answers: dict[str, Answer], wire: Wire, budget: AnswerBudget, **options: Any
) -> AsyncIterator[FrameServer]:
    upstream = PlaneApi(answers)
    settings: dict[str, Any] = {"max_frame": MAX_FRAME, "answers": budget, **options}
    server = FrameServer(upstream, wire.send, 5, 8, **settings)
    try:
        yield server
    finally:
        wire.opened.set()
        await server.close()
        await upstream.close()


async def test_large_answers_past_the_budget_are_refused_at_once_the_rest_served_whole() -> None:
    budget, wire = AnswerBudget(1_000_000), Wire(gate_over=PIECE)
    answers = {f"/r{n}": Answer(body(400_000, bytes([97 + n]))) for n in range(3)}
    answers["/huge"] = Answer(body(5_000_000))
    async with v1_server(answers, wire, budget) as server:
        for n in range(3):
            server.dispatch(request(f"r{n}"))
        # two answers (800,000 bytes) wait to be sent; the third did not fit and was not read
        await until(lambda: wire.waiting == 2 and len(wire.frames) == 1)
        (refused,) = wire.frames
        # one over the frame limit could never be sent: told so (502), not to retry
        server.dispatch(request("huge"))
        await until(lambda: len(wire.frames) == 2)
        assert wire.answer("huge")["statusCode"] == 502 and answers["/huge"].given == 0
        assert "larger than" in status_message(wire.answer("huge"))
        assert budget.held == 800_000 and answers[f"/{refused['requestID']}"].given == 0
        assert refused["statusCode"] == 503 and refused["error"]["code"] == 503
        message = status_message(refused)
        assert message == refused["error"]["message"].join(["cluster agent: ", ""])
        assert "the agent holds 800000 bytes of whole answers for OpenChoreo's (v1) gateway" in (
            message
        )
        assert "at most 1000000" in message and "(400000 bytes)" in message
        assert "retry" in message and "?limit=" in message and "continue" in message
        assert json.loads(body_of(refused))["reason"] == "ServiceUnavailable"
        wire.opened.set()
        await server.idle()
        served = [frame for frame in wire.frames if frame["statusCode"] == 200]
        assert [frame["statusCode"] for frame in served] == [200, 200]
        for frame in served:
            assert body_of(frame) == b"".join(answers[f"/{frame['requestID']}"].pieces)
        assert budget.held == 0


async def test_without_a_length_an_answer_is_reserved_as_it_is_read() -> None:
    budget, wire = CountedBudget(1_000_000), Wire(gate_over=PIECE)
    answers = {
        "/first": Answer(body(600_000), length=False),
        "/second": Answer(body(600_000), length=False),
    }
    async with v1_server(answers, wire, budget) as server:
        server.dispatch(request("first"))
        await until(lambda: wire.waiting == 1)
        assert budget.held == 600_000
        server.dispatch(request("second"))
        await until(lambda: len(wire.frames) == 1)
        refused = wire.answer("second")
        assert refused["statusCode"] == 503 and "(at least 500000 bytes)" in status_message(refused)
        # it stopped reading where it no longer fit, and what it had reserved came back
        assert answers["/second"].given == 500_000 and budget.held == 600_000
        assert budget.peak == 1_000_000
        wire.opened.set()
        await server.idle()
        assert body_of(wire.answer("first")) == b"x" * 600_000 and budget.held == 0


async def test_one_budget_serves_every_connection_of_the_process() -> None:
    budget = AnswerBudget(1_000_000)
    one, other = Wire(gate_over=PIECE), Wire(gate_over=PIECE)
    big, also_big = {"/big": Answer(body(700_000))}, {"/big": Answer(body(400_000))}
    also_big["/small"] = Answer([b"{}"])
    async with v1_server(big, one, budget) as first, v1_server(also_big, other, budget) as second:
        first.dispatch(request("a", "/big"))
        await until(lambda: one.waiting == 1)
        second.dispatch(request("b", "/big"))
        second.dispatch(request("c", "/small"))
        await until(lambda: len(other.frames) == 2)
        assert other.answer("b")["statusCode"] == 503 and budget.held == 700_000
        assert other.answer("c")["statusCode"] == 200 and body_of(other.answer("c")) == b"{}"
        one.opened.set()
        await first.idle()
        assert one.answer("a")["statusCode"] == 200 and budget.held == 0


async def test_the_agent_gives_every_replicas_tunnel_its_one_budget(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    config = AgentConfig(server_url="wss://gw/ws", plane_id="p", kubeconfig=tmp_path / "kubeconfig")
    agent = Agent(config)
    try:
        tunnels = [agent._dial(ReplicaAddress(f"wss://gw-{n}/ws"), lambda: None) for n in (1, 2)]
        assert all(tunnel._answers is agent.answers for tunnel in tunnels)
        # one frame's worth: at least the largest body one frame carries, so it is served alone
        assert agent.answers.limit == config.max_frame_bytes > body_limit(config.max_frame_bytes)
    finally:
        await agent.upstream.close()
        await agent.own_upstream.close()


@pytest.mark.parametrize(
    ("answer", "status", "said"),
    [
        (Answer(body(600_000), fail_at=3), 502, "connection reset"),
        (Answer(body(600_000), length=False, fail_at=4), 502, "connection reset"),
        (Answer(body(1_000_000), length=False), 502, "larger than 737280 bytes"),
        (Answer(body(600_000)), 502, "broke as the exchange ended"),
    ],
    ids=["upstream-fails-with-length", "upstream-fails-without", "too-large", "exchange-fails"],
)
async def test_an_answer_that_fails_gives_back_what_it_reserved(
    answer: Answer, status: int, said: str
) -> None:
    budget, wire = CountedBudget(1_000_000), Wire()
    path = "/ends-badly" if said.startswith("broke") else "/r"
    async with v1_server({path: answer}, wire, budget) as server:
        server.dispatch(request("r", path))
        await server.idle()
        (frame,) = wire.frames
        assert frame["statusCode"] == status and said in status_message(frame)
        assert budget.peak >= SMALL_ANSWER and budget.held == 0  # it had reserved, gave back


async def test_an_answer_cancelled_by_is_close_while_it_is_read_gives_back_its_length() -> None:
    budget, wire = AnswerBudget(1_000_000), Wire()
    answer = Answer(body(600_000), stall_at=2)
    async with v1_server({"/r": answer}, wire, budget) as server:
        server.dispatch(request("r"))
        await asyncio.wait_for(answer.stalled.wait(), 10)
        assert budget.held == 600_000  # its Content-Length, reserved before reading
        server.dispatch(is_close("r"))
        await server.idle()
        assert budget.held == 0 and wire.frames == []


@pytest.mark.parametrize("end", ["isClose", "connection closed", "send failed"])
async def test_an_answer_that_is_not_sent_gives_back_its_body(end: str) -> None:
    budget, wire = AnswerBudget(1_000_000), Wire(gate_over=PIECE)
    if end == "send failed":
        sending = wire.send

        async def send(data: bytes | bytearray) -> None:
            await sending(data)
            raise ConnectionResetError("the gateway went away")

        wire.send = send  # type: ignore[method-assign]
    async with v1_server({"/r": Answer(body(600_000), length=False)}, wire, budget) as server:
        server.dispatch(request("r"))
        await until(lambda: wire.waiting == 1)
        assert budget.held == 600_000
        if end == "isClose":
            server.dispatch(is_close("r"))
        elif end == "connection closed":
            await server.close()
        else:
            wire.opened.set()
        await server.idle()
        assert budget.held == 0


async def test_small_answers_never_touch_the_budget() -> None:
    budget, wire = CountedBudget(0), Wire()  # not a byte for whole answers
    answers = {
        "/known": Answer(body(SMALL_ANSWER - 1)),
        "/unknown": Answer(body(SMALL_ANSWER - 1), length=False),
        "/tiny": Answer([b'{"kind":"Status"}']),
        "/counted": Answer(body(SMALL_ANSWER)),
    }
    async with v1_server(answers, wire, budget) as server:
        for rid in ("known", "unknown", "tiny", "counted"):
            server.dispatch(request(rid))
        await server.idle()
    for rid in ("known", "unknown", "tiny"):
        assert wire.answer(rid)["statusCode"] == 200
        assert body_of(wire.answer(rid)) == b"".join(answers[f"/{rid}"].pieces)
    assert wire.answer("counted")["statusCode"] == 503  # from SMALL_ANSWER on, counted
    assert budget.taken == [] and budget.held == 0


@pytest.mark.parametrize("length", [True, False], ids=["length", "no-length"])
@pytest.mark.parametrize("binary", [False, True], ids=["v2", "v3"])
async def test_chunked_answers_never_touch_the_budget(binary: bool, length: bool) -> None:
    """v2/v3 send a large body in chunks as it is read: never held whole, never counted, and
    served while v1 answers on another connection hold the whole budget."""
    budget, wire = CountedBudget(700_000), Wire(gate_over=PIECE)
    sent: list[bytes | bytearray] = []

    async def send(data: bytes | bytearray) -> None:
        sent.append(bytes(data))

    upstream = PlaneApi({"/r": Answer(body(2_000_000), length=length)})
    coding: dict[str, Any] = {"encoder": encode_binary, "chunk_encoder": encode_chunk}
    server = FrameServer(
        upstream, send, 5, 2, chunked=True, answers=budget, **(coding if binary else {})
    )
    async with v1_server({"/r": Answer(body(700_000))}, wire, budget) as v1:
        v1.dispatch(request("r"))
        await until(lambda: wire.waiting == 1)
        assert budget.held == 700_000 == budget.limit
        ask = TunnelRequest(request_id="r", target="k8s", method="GET", path="/r")
        server.dispatch(encode_binary(ask) if binary else encode(ask), binary=binary)
        await server.idle()
        await server.close()
        await upstream.close()
        assert budget.taken == [700_000] and budget.held == 700_000
    if binary:
        head, *chunks, close = [decode_binary(bytes(message)) for message in sent]
        assert isinstance(head, TunnelResponse) and head.chunked is True
        assert isinstance(close, StreamChunk) and close.is_close is True
        assert len(chunks) == 8
    else:
        first, *_, last = [json.loads(message) for message in sent]
        assert first["chunked"] is True and last["isClose"] is True
        assert len(sent) == 10


@contextlib.contextmanager
def traced() -> Iterator[list[int]]:
    """The most memory Python allocated (tracemalloc) within the block, in bytes."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


async def test_what_whole_answers_hold_at_once_is_bounded_by_the_budget() -> None:
    """Eight 2 MB lists at once behind a gateway slow to read: two fit a 4 MB budget and wait
    to be sent (each body and its base64 frame, ~9 MB together); the other six are refused
    before reading. Measured: about 12.7 MB at the peak; without a budget all eight are held
    (about 50 MB)."""
    piece = b"x" * (256 * 1024)  # one object: the API server's bytes cost the test nothing
    answers = {f"/r{n}": Answer([piece] * 8) for n in range(8)}
    budget, wire = AnswerBudget(4 * 1024 * 1024), Wire(gate_over=PIECE)
    async with v1_server(answers, wire, budget, max_frame=4 << 20) as server:
        with traced() as peak:  # up to the moment all eight are answered or wait to be sent
            for n in range(8):
                server.dispatch(request(f"r{n}"))
            await until(lambda: wire.waiting == 2 and len(wire.frames) == 6)
        wire.opened.set()
        await server.idle()
        assert sorted(frame["statusCode"] for frame in wire.frames) == [200] * 2 + [503] * 6
        assert budget.held == 0
    (most,) = peak
    assert most < 16 * 1024 * 1024, most
