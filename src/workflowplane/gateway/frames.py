"""Agent WebSocket messages over the size limit fail one request, not the connection.

aiohttp answers a message over ``max_msg_size`` by closing the WebSocket (1009), which fails
every request the connection carries and leaves their callers to time out. So the gateway's
agent socket parses data frames itself, in front of aiohttp's parser: a message within the
limit is queued whole, as aiohttp would queue it; a bigger one is not buffered at all (its
bytes are skipped as they arrive) and becomes an :class:`OversizedMessage` naming the
``requestID`` read from its first bytes, so that request alone fails, at once.

Interop: OpenChoreo's Go agent sends a whole response body, base64, in one JSON message, with
no bound of its own, fragmented into 4 KiB frames (gorilla's write buffer); our agent sends
one frame. Both are handled; the limit applies to the whole message. Control frames
(ping/pong/close) and anything malformed go to aiohttp's own parser untouched, so protocol
errors end the connection exactly as before.

A message must also be complete ``timeout`` seconds (the gateway's request timeout) after
its first byte arrived: one frame trickling in, or fragments with only pongs between them
(which keep the connection alive), would otherwise hold up to the limit for as long as the
agent likes. An unfinished message then goes as one over the limit does: its buffer is freed
at once, an :class:`UnfinishedMessage` fails its request, the rest of it is skipped as it
arrives. Messages read whole in one read (nearly all) cost nothing for this; one still open
at the end of a read is stamped with the loop's time, and one timer per connection (armed
while such a message is open, moved on to the next one's deadline when it fires) judges it,
so that an agent that goes silent after part of a message is dropped on time too (the
heartbeat would close it only after ``--dead-after``, 3x the deadline by default).

The bytes of messages being assembled count against one budget per gateway
(:class:`MessageBudget`: four messages at the frame limit, 256 MiB by default; the agents
of one owner at most half of it: ``budget_owner``, the namespaces of the CRs they serve).
A message still open at the end of a read takes what that read added to it, and gives it
all back when it is handed on, dropped or skipped, or its connection ends; one that would
pass the budget goes as one over the limit does (an :class:`OverBudget` fails its request,
the rest of it is skipped), never waited for: waiting while others hold buffers could
deadlock. A message begun and ended within one read is never held past it (one
connection's read is parsed at a time) and costs nothing; so the budget costs no frame
anything, and a read a few attribute lookups.

A read's frames are parsed at most ``FRAMES_PER_PASS`` per pass of the event loop, and none
while aiohttp's message queue is over its high-water mark (as aiohttp's own reader stalls):
the rest of the read waits, the connection's reading held meanwhile, so one agent's flood of
tiny frames cannot hold the loop every agent and caller shares.

This uses aiohttp internals (the response's ``_post_start``, its data queue with its
``_size``, ``_limit`` and ``_protocol``, the protocol's ``_payload_parser``,
``_reading_paused`` and buffer hold, and the C masking helper), pinned with aiohttp;
tests/unit/gateway exercises them against the installed version.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.helpers import websocket_mask
from aiohttp.http_websocket import WebSocketError, WSMessage
from aiohttp.web_protocol import RequestHandler

from workflowplane.gateway.config import GatewayConfig
from workflowplane.kits.stall import StallWatch
from workflowplane.kits.ws_tap import (
    FRAMES_PER_PASS,
    FrameReader,
    HeldReads,
    ProtocolFlow,
    ReadFlow,
    header_length,
    payload_length,
    whole_binary_frame,
)
from workflowplane.protocol.binary import request_id_of as binary_request_id

HEAD_BYTES = 512  # enough of an oversized message to find its requestID
# Frames any message may be split into; past them, one more per KiB it carries (gorilla
# writes 4 KiB frames; empty or tiny fragments cost the parser and add nothing).
FREE_FRAGMENTS = 64
_REQUEST_ID = re.compile(rb'"requestID"\s*:\s*"([^"\\]{1,200})"')
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_DATA_OPCODES = frozenset({_OP_CONTINUATION, _OP_TEXT, _OP_BINARY})
# Seconds a message may take from its first byte to its last (``--request-timeout``).
MESSAGE_TIMEOUT: float = GatewayConfig.request_timeout_seconds


class ResponseTooLarge(Exception):
    """The agent's answer to a request was over the frame limit (skipped, never read)."""


class MalformedAnswer(ResponseTooLarge):
    """The agent's answer to a request names it but does not decode (its caller is told at
    once, not left to the request timeout)."""


@dataclass(frozen=True)
class OversizedMessage:
    """Queued, as a message's data, in place of a message over the limit."""

    request_id: str | None
    at_least: int  # bytes of the message seen so far (it may be longer still)
    limit: int

    def describe(self) -> str:
        return (
            f"the agent's answer is larger than the gateway's frame limit of "
            f"{self.limit} bytes (at least {self.at_least} bytes)"
        )


@dataclass(frozen=True)
class OverBudget(OversizedMessage):
    """Queued in place of a message the gateway had no room for: its bytes would have
    passed the gateway-wide ``budget`` (``owner`` None), or the share of it the agents of
    ``owner`` may hold (``budget``: that share). Skipped as an oversized one is."""

    budget: int
    owner: str | None = None

    def describe(self) -> str:
        if self.owner is None:
            return (
                f"the gateway holds {self.budget} bytes of unfinished agent answers, "
                f"its limit; retry"
            )
        return (
            f"the agents serving {self.owner} hold {self.budget} bytes of unfinished "
            f"answers at the gateway, their share of its limit; retry"
        )


@dataclass(frozen=True)
class UnfinishedMessage(OversizedMessage):
    """Queued in place of a message not complete ``within`` seconds of its first byte (it
    fails its request as an oversized one does; ``at_least``: the bytes that had arrived)."""

    within: float

    def describe(self) -> str:
        return (
            f"the agent's answer did not complete within {self.within:g}s "
            f"({self.at_least} bytes of it had arrived)"
        )


# Messages at the frame limit the gateway assembles at once (its budget, in frame limits).
BUDGET_MESSAGES = 4


class MessageBudget:
    """The bytes of agent messages being assembled, gateway-wide: one per gateway, shared by
    its connections' guards. At most ``total`` (``BUDGET_MESSAGES`` frame limits by default:
    256 MiB, under the chart's 512 MiB), and the connections of one owner (a tenant:
    ``budget_owner``) at most ``share`` (half of it): one tenant's agents cannot take it
    all. Each connection assembles one message at a time (a frame limit at most); so many
    agents at once, not one, could pass the pod's memory without it.

    A guard charges a message what each read adds to it while it stays open past the read,
    and gives it all back when the message is handed on, dropped or skipped, or its
    connection ends. A message that would pass either bound is refused at once, never
    waited for (``take`` is False)."""

    __slots__ = ("_owners", "held", "share", "total")

    def __init__(self, total: int, share: int | None = None) -> None:
        self.total = total
        self.share = total // 2 if share is None else share
        self.held = 0
        self._owners: dict[str, int] = {}  # owner -> bytes held, those holding any

    @classmethod
    def for_frames(cls, max_frame_bytes: int) -> MessageBudget:
        """The gateway's: ``BUDGET_MESSAGES`` messages at the frame limit."""
        return cls(BUDGET_MESSAGES * max_frame_bytes)

    def take(self, size: int, owner: str) -> bool:
        """Hold ``size`` more bytes for a message of ``owner``'s, if both bounds allow."""
        held = self.held + size
        if held > self.total:
            return False
        mine = self._owners.get(owner, 0) + size
        if mine > self.share:
            return False
        self.held = held
        self._owners[owner] = mine
        return True

    def give_back(self, size: int, owner: str) -> None:
        self.held -= size
        mine = self._owners[owner] - size
        if mine:
            self._owners[owner] = mine
        else:
            del self._owners[owner]

    def held_by(self, owner: str) -> int:
        return self._owners.get(owner, 0)

    def refusal(self, size: int, owner: str) -> tuple[int, str | None]:
        """Which bound ``size`` more bytes of ``owner``'s would pass: (the gateway's total,
        None) or (the owner's share, the owner)."""
        if self.held + size > self.total:
            return self.total, None
        return self.share, owner


def request_id_of(head: bytes, *, binary: bool = False) -> str | None:
    """The ``requestID`` among a frame's first bytes: a JSON frame's (encoders write it
    first), or a binary v3 message's (``binary``: at a fixed place)."""
    if binary:
        return binary_request_id(head)
    found = _REQUEST_ID.search(head)
    return found.group(1).decode(errors="replace") if found else None


class MessageSink(Protocol):
    """aiohttp's WebSocket data queue, as far as the guard feeds it."""

    def feed_data(self, data: Any, size: int) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


@dataclass
class _Frame:
    fin: bool
    opcode: int
    mask: bytes | None
    remaining: int
    passthrough: bool  # control or malformed: aiohttp's parser reads it
    # The payload as it arrives: one copy out of the socket's buffers, unmasked in place
    # (a 1 MiB chunk of a large answer must not be copied once per step).
    data: bytearray = field(default_factory=bytearray)
    head: bytearray = field(default_factory=bytearray)

    def payload(self) -> bytearray:
        if self.mask is not None and self.data:
            websocket_mask(self.mask, self.data)
        return self.data


@dataclass
class _Message:
    opcode: int
    size: int = 0
    # Its frames' payloads in one buffer: a buffer per frame would let a message of many tiny
    # or empty frames (which add little or nothing to its size) hold memory without bound.
    body: bytearray = field(default_factory=bytearray)
    head: bytes = b""
    discarding: bool = False
    reported: bool = False
    frames: int = 0
    started: float | None = None  # loop time, once it is still open at the end of a read
    refused: tuple[int, str | None] | None = None  # the budget's bound it would pass


def _unmask(mask: bytes | None, data: bytes | bytearray) -> bytes:
    if mask is None or not data:
        return bytes(data)
    buffer = bytearray(data)
    websocket_mask(mask, buffer)
    return bytes(buffer)


class FrameGuard:
    """Stands where aiohttp's WebSocket parser stands (fed the socket's bytes) and bounds
    each data message to ``limit`` bytes; see the module docstring."""

    def __init__(
        self,
        inner: FrameReader,
        queue: MessageSink,
        limit: int,
        flow: ReadFlow | None = None,
        *,
        timeout: float = MESSAGE_TIMEOUT,
        loop: asyncio.AbstractEventLoop | None = None,
        budget: MessageBudget | None = None,
        owner: str = "",
    ) -> None:
        self._inner = inner
        self._queue = queue
        self._limit = limit
        self._timeout = timeout  # for a message, from its first byte to its last
        self._loop = loop  # None: the running loop, when first needed
        self._timer: asyncio.TimerHandle | None = None  # at most one, for the open message
        self._timer_at = 0.0
        # Takes a whole binary message as it is read, or declines it (False: it is queued).
        self.direct: Callable[[bytearray], bool] | None = None
        self._header = bytearray()
        self._frame: _Frame | None = None
        self._message: _Message | None = None
        self._broken = False
        # Without a flow (tests of the parsing alone) every read is parsed at once.
        self._held = HeldReads(flow)
        self._frames_left = FRAMES_PER_PASS
        self._waiting = False  # for the queue to drain (aiohttp's reader waits likewise)
        self._budget = budget  # None: no gateway-wide bound (tests of the parsing alone)
        self._owner = owner  # whose share of the budget it draws on (``budget_owner``)
        self._charged = 0  # bytes of the open message held in the budget

    @property
    def holding(self) -> bool:
        return bool(self._held)

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished message held (its payload so far)."""
        held = len(self._message.body) if self._message is not None else 0
        if self._frame is not None and not self._frame.passthrough:
            held += len(self._frame.data)
        return held

    def feed_eof(self) -> None:
        if self._held:  # the agent's last bytes still count: parsed now, all of them
            self._held.unpaced()
            self._parse_held()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._message = self._frame = None  # nothing more comes: an unfinished one goes now
        self._release()
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._broken:
            return self._inner.feed_data(data)
        if self._held:
            self._held.add(data)
        else:
            self._parse(data)
        return self._broken, b""

    def queue_drained(self) -> None:
        """aiohttp's queue resumed reading: go on with what is held, if anything."""
        if self._waiting:
            self._waiting = False
            self._parse_held()

    def _parse_held(self) -> None:
        self._parse(*self._held.take())
        self._held.release_if_done()

    def _parse(self, data: bytes, start: int = 0) -> None:
        """Parse ``data`` from ``start`` until it ends, a pass's frames are spent or the
        queue is full; hold the rest and come back to it (next pass, or once drained)."""
        self._frames_left = FRAMES_PER_PASS
        pos = start
        try:
            view = memoryview(data)
            if self._frame is None and self._message is None and not self._header:
                pos = self._whole_messages(view, pos)
            if pos < len(data) and self._may_go_on():
                pos = self._feed(view, pos)
        except WebSocketError as exc:
            self._broken = True
            self._message = self._frame = None  # the connection ends: nothing more is parsed
            self._release()
            self._queue.set_exception(exc)
        if pos < len(data) and not self._broken:  # broken: the connection ends, unread
            self._hold(data, pos)
        message = self._message
        if message is not None and not message.discarding:
            if message.started is None:
                self._stamp(message)
            if self._budget is not None:
                self._charge(message, self._budget)

    def _stamp(self, message: _Message) -> None:
        """A message open at the end of a read: its time runs from now (its first byte came
        in this read); the connection's timer is armed for its deadline unless it is armed."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        message.started = loop.time()
        if self._timer is None:
            self._arm(loop, message.started + self._timeout)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._at_deadline)

    def _at_deadline(self) -> None:
        """The timer's deadline: the message open now is dropped if it is the one (or as old
        as the one) the timer was armed for; a later one gets the timer for its own."""
        self._timer = None
        message = self._message
        if message is None or message.started is None or message.discarding or self._broken:
            return  # nothing to judge: unarmed until a message is open at a read's end again
        deadline = message.started + self._timeout
        if deadline > self._timer_at:
            assert self._loop is not None  # set when the message was stamped
            self._arm(self._loop, deadline)
            return
        self._expire(message)

    def _expire(self, message: _Message) -> None:
        """Drop an unfinished message as an oversized one is dropped: its buffer freed now,
        its request failed (by the requestID its first bytes show), the rest skipped."""
        frame = self._frame if self._frame is not None and not self._frame.passthrough else None
        arrived = len(message.body) + (len(frame.data) if frame is not None else 0)
        head = bytearray(message.body[:HEAD_BYTES])
        if frame is not None and len(head) < HEAD_BYTES:  # its payload from 0: mask aligned
            head += _unmask(frame.mask, frame.data[: HEAD_BYTES - len(head)])
        message.head = bytes(head)
        message.body = bytearray()
        if frame is not None:
            frame.data = bytearray()
        self._release()
        message.discarding = message.reported = True
        request_id = request_id_of(message.head, binary=message.opcode == _OP_BINARY)
        unfinished = UnfinishedMessage(request_id, arrived, self._limit, self._timeout)
        self._queue.feed_data(WSMessage(WSMsgType.BINARY, unfinished, None), 0)

    def _hold(self, data: bytes, pos: int) -> None:
        self._held.hold(data, pos)
        if self._queue_full():
            self._waiting = True  # queue_drained comes back to it
        else:
            assert self._held.flow is not None  # held: there is one
            self._held.flow.later(self._parse_held)

    def _may_go_on(self) -> bool:
        if self._held.flow is None:
            return True
        return self._frames_left > 0 and not self._queue_full()

    def _queue_full(self) -> bool:
        size, limit = getattr(self._queue, "_size", 0), getattr(self._queue, "_limit", 0)
        return bool(limit) and size > limit

    def _whole_messages(self, data: memoryview, pos: int) -> int:
        """Deliver the masked binary single-frame messages within the limit that ``data``
        holds whole, from ``pos`` (every answer, when the socket keeps up); where they end.
        The rest, and anything else, goes the general way, frame state and all."""
        below = self._limit + 1  # the guard's limit is the largest message taken
        while (whole := whole_binary_frame(data, pos, masked=True, below=below)) is not None:
            start, pos = whole
            payload = bytearray(data[start:pos])
            if payload:
                websocket_mask(bytes(data[start - 4 : start]), payload)
            if self.direct is None or not self.direct(payload):
                self._queue.feed_data(WSMessage(WSMsgType.BINARY, payload, None), len(payload))
                if self._queue_full():
                    self._frames_left = 0
            self._frames_left -= 1
            if self._frames_left <= 0 and self._held.flow is not None:
                break
        return pos

    def _feed(self, data: memoryview, pos: int) -> int:
        """Frames from ``pos`` on, until the data ends or the pass may not go on (at a frame's
        start); where it stopped."""
        while not self._broken:
            if self._frame is None:
                if pos >= len(data) or (not self._header and not self._may_go_on()):
                    return pos
                pos = self._read_header(data, pos)
                if self._frame is None:
                    return pos
                self._frames_left -= 1
            frame = self._frame
            take = min(frame.remaining, len(data) - pos)
            if take:
                self._payload(frame, data[pos : pos + take])
                pos += take
                frame.remaining -= take
            if frame.remaining:
                return pos
            self._frame = None
            self._end_frame(frame)
        return pos

    def _read_header(self, data: memoryview, pos: int) -> int:
        while (missing := header_length(self._header) - len(self._header)) > 0:
            if pos >= len(data):
                return pos
            piece = data[pos : pos + missing]
            self._header += piece
            pos += len(piece)
        header = bytes(self._header)
        self._header.clear()
        self._frame = self._start_frame(header)
        return pos

    def _start_frame(self, header: bytes) -> _Frame:
        fin, reserved, opcode = bool(header[0] & 0x80), header[0] & 0x70, header[0] & 0x0F
        length = payload_length(header)
        mask = header[-4:] if header[1] & 0x80 else None
        if reserved or opcode not in _DATA_OPCODES:
            self._pass(header)
            return _Frame(fin, opcode, mask, length, passthrough=True)
        message = self._message_for(opcode)
        message.size += length
        message.frames += 1
        if message.frames > FREE_FRAGMENTS + message.size // 1024:
            raise WebSocketError(
                WSCloseCode.POLICY_VIOLATION,
                f"a message split into {message.frames} frames for {message.size} bytes "
                f"(at most {FREE_FRAGMENTS}, and one more per KiB it carries)",
            )
        if not message.discarding and message.size > self._limit:
            message.discarding = True
            message.body = bytearray()  # the memory goes now, not when the message ends
            self._release()
        return _Frame(fin, opcode, mask, length, passthrough=False)

    def _message_for(self, opcode: int) -> _Message:
        if opcode == _OP_CONTINUATION:
            if self._message is None:
                raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "continuation without a message")
            return self._message
        if self._message is not None:
            raise WebSocketError(
                WSCloseCode.PROTOCOL_ERROR, "a message began before the previous one ended"
            )
        self._message = _Message(opcode)
        return self._message

    def _payload(self, frame: _Frame, piece: memoryview) -> None:
        if frame.passthrough:
            self._pass(bytes(piece))
            return
        message = self._message
        assert message is not None
        if not message.discarding:
            frame.data += piece
            return
        if not message.head and len(frame.head) < HEAD_BYTES:
            frame.head += piece[: HEAD_BYTES - len(frame.head)]
            if len(frame.head) >= HEAD_BYTES:
                message.head = _unmask(frame.mask, frame.head)
        self._report(message)

    def _charge(self, message: _Message, budget: MessageBudget) -> None:
        """A message open at the end of a read holds its bytes until a later one: the budget
        is charged what this read added to it, or the message is refused."""
        grown = self.buffered - self._charged
        if not grown:
            return
        if budget.take(grown, self._owner):
            self._charged += grown
        else:
            self._refuse(message, budget.refusal(grown, self._owner))

    def _refuse(self, message: _Message, refused: tuple[int, str | None]) -> None:
        """No room in the budget for the open message: it goes as one over the limit goes
        (its buffers freed now, its request failed as soon as its requestID can be read,
        the rest skipped as it arrives), naming the bound it would pass."""
        frame = self._frame if self._frame is not None and not self._frame.passthrough else None
        if frame is not None:
            if not message.head:  # in its first bytes: the head, from its frame's start
                frame.head = frame.data[:HEAD_BYTES]  # masked yet, as the rest will be
                if len(frame.head) >= HEAD_BYTES:
                    message.head = _unmask(frame.mask, frame.head)
            frame.data = bytearray()
        message.body = bytearray()
        message.refused = refused
        message.discarding = True
        self._release()
        self._report(message)

    def _release(self) -> None:
        """Give the budget back what the open message held (it is handed on, dropped or
        skipped, or its connection is over)."""
        if self._charged:
            assert self._budget is not None
            self._budget.give_back(self._charged, self._owner)
            self._charged = 0

    def _end_frame(self, frame: _Frame) -> None:
        if frame.passthrough:
            return
        message = self._message
        assert message is not None
        if not message.discarding:
            payload = frame.payload()
            if message.body:
                message.body += payload
            else:  # its first bytes: the frame's own buffer (a one-frame message is not copied)
                message.body = payload
            if not message.head:
                message.head = bytes(payload[:HEAD_BYTES])
        elif not message.head:
            message.head = _unmask(frame.mask, frame.head)
        if message.discarding:
            self._report(message, final=frame.fin)
        if frame.fin:
            self._message = None
            if self._charged:  # held past a read
                self._release()
            if not message.discarding:
                self._deliver(message)

    def _report(self, message: _Message, *, final: bool = False) -> None:
        """Tell the reader once, as soon as the requestID can be read (or cannot be)."""
        if message.reported:
            return
        request_id = request_id_of(message.head, binary=message.opcode == _OP_BINARY)
        if request_id is None and not final and len(message.head) < HEAD_BYTES:
            return
        message.reported = True
        oversized = (
            OversizedMessage(request_id, message.size, self._limit)
            if message.refused is None
            else OverBudget(request_id, message.size, self._limit, *message.refused)
        )
        self._queue.feed_data(WSMessage(WSMsgType.BINARY, oversized, None), 0)

    def _deliver(self, message: _Message) -> None:
        """TEXT (v1/v2 JSON) as bytes, as before; BINARY (v3) as the bytearray it was read
        into, uncopied (a chunk's data stays in it: ``take_chunk``)."""
        data = message.body
        if message.opcode == _OP_TEXT:
            text = bytes(data)
            self._queue.feed_data(WSMessage(WSMsgType.TEXT, text, None), len(text))
            return
        if self.direct is not None and self.direct(data):
            return
        self._queue.feed_data(WSMessage(WSMsgType.BINARY, data, None), len(data))

    def _pass(self, data: bytes) -> None:
        eof, _ = self._inner.feed_data(data)
        if eof:
            self._broken = True


class GuardedWebSocket(web.WebSocketResponse):
    """The agent-facing WebSocket: no compression (so frames are what the guard reads), and
    a :class:`FrameGuard` in front of aiohttp's parser. TEXT messages arrive as bytes."""

    def __init__(
        self,
        *,
        limit: int,
        message_timeout: float = MESSAGE_TIMEOUT,
        budget: MessageBudget | None = None,
        owner: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(compress=False, max_msg_size=limit + 1, **kwargs)
        self._guard_limit = limit
        self._message_timeout = message_timeout
        self._budget = budget  # the gateway's, shared by its agents' sockets
        self._owner = owner
        self.guard: FrameGuard | None = None  # once started

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        super()._post_start(request, protocol, writer)
        handler = request.protocol
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        flow = _ConnectionFlow(handler, loop)
        self.guard = handler._payload_parser = FrameGuard(
            handler._payload_parser,
            self._reader,
            self._guard_limit,
            flow,
            timeout=self._message_timeout,
            loop=loop,
            budget=self._budget,
            owner=self._owner,
        )
        flow.guard = self.guard
        # the queue pauses and resumes reading through it (a public attribute of the queue)
        self._reader._protocol = flow  # type: ignore[assignment]

    @property
    def write_stalled(self) -> bool:
        """Whether its connection was cut off for reading nothing sent to it."""
        handler = self._req.protocol if self._req is not None else None
        return isinstance(handler, StallGuardedHandler) and handler.stalled


class _ConnectionFlow(ProtocolFlow):
    """The connection's reading as the guard holds it (``ProtocolFlow``), and as aiohttp's
    message queue pauses and resumes it: through this, so that the guard hears of a resume."""

    def __init__(self, handler: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(handler, loop)
        self._handler = handler
        self.guard: FrameGuard | None = None

    @property
    def _reading_paused(self) -> bool:  # read by aiohttp's queue
        return bool(self._handler._reading_paused)

    def pause_reading(self) -> None:
        self._handler.pause_reading()

    def resume_reading(self) -> None:
        self._handler.resume_reading()
        if self.guard is not None:
            self.guard.queue_drained()


class StallGuardedHandler(RequestHandler):
    """aiohttp's request handler, for agents: one whose peer reads nothing of what is sent to
    it for ``stall_seconds`` (the transport paused the writes, its buffer full, and the buffer
    did not shrink since) is cut off. Every write and close would wait for that peer without
    end: a request's send past its timeout, and each close (a shutdown closes every agent).
    A slow reader that takes a large body bit by bit is not cut off."""

    __slots__ = ("_stall", "_stall_seconds", "stalled")

    def __init__(self, manager: Any, *, stall_seconds: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._stall_seconds = stall_seconds
        self._stall: StallWatch | None = None
        self.stalled = False  # cut off

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None and self.transport is not None:
            self._stall = StallWatch(self._loop, self.transport, self._stall_seconds)
            self._stall.start(self._cut_off, until=lambda: self.transport is None)

    def resume_writing(self) -> None:
        self._disarm_stall()
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_stall()
        super().connection_lost(exc)

    def _disarm_stall(self) -> None:
        if self._stall is not None:
            self._stall.stop()
            self._stall = None

    def _cut_off(self) -> None:
        self._stall = None
        self.stalled = True
        if self.transport is not None:
            self.transport.abort()  # its blocked writes fail and its reads end


def stall_guarded(server: web.Server, stall_seconds: float) -> Callable[[], RequestHandler]:
    """A protocol factory for ``loop.create_server``: ``server``'s handlers, stall-guarded
    (what ``web.Server.__call__`` makes, with the same settings)."""

    def handler() -> RequestHandler:
        return StallGuardedHandler(
            server,
            loop=server._loop,  # web.Server keeps what it makes its handlers with
            stall_seconds=stall_seconds,
            **server._kwargs,
        )

    return handler
