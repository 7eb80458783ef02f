"""One proxied stream's buffer between the agent's frames and the caller, bounded in bytes.

The tunnel (v1) has no per-stream flow control, and pausing the agent's WebSocket would stall
every other request it carries. So what a caller has not taken yet waits here, up to a bound;
a caller that falls further behind loses its stream (``overflowed``): the buffer is emptied
at once, the proxy cuts the caller off and tells the agent to stop. Watch clients re-watch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from workflowplane.kits.text import shortened
from workflowplane.protocol import StreamChunk, TunnelResponse


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a stream; ``problem`` says why when it did not end normally."""

    problem: str | None = None


# bytes: a watch/follow body or a chunked answer (a bytearray when it is the v3 message it
# came in, uncopied); StreamChunk: an exec stream's chunks whole (their stream byte and
# isClose data mean something there).
Body = bytes | bytearray
StreamItem = TunnelResponse | Body | StreamChunk | StreamEnd
CLEAN_END = StreamEnd()


# What one queued item costs besides its bytes: its object, the buffer it came in (a v3
# chunk keeps its message's head) and its slot in the queue; about 100 bytes for a 1-byte
# chunk. aiohttp counts 128 bytes per queued message for the same reason. Without it, an
# agent sending 1-byte chunks made a buffer hold about 66 times its bound.
ITEM_OVERHEAD = 128
# At most this much of why a stream ended is kept: an agent's isClose data (up to a frame,
# 64 MiB) is the reason, and it goes into the caller's 502 and the gateway's log lines.
PROBLEM_SHOWN = 1024


def _size(item: TunnelResponse | Body | StreamChunk) -> int:
    """What an item counts against the bound: its bytes, its metadata and ITEM_OVERHEAD."""
    if isinstance(item, Body):
        return ITEM_OVERHEAD + len(item)
    if isinstance(item, StreamChunk):
        return ITEM_OVERHEAD + len(item.request_id) + len(item.data or b"")
    return ITEM_OVERHEAD + len(item.request_id) + len(item.body or b"") + _headers_size(item)


def _headers_size(head: TunnelResponse) -> int:
    """A head's header names and values (up to a frame's metadata, 1 MiB, on v3)."""
    headers = head.headers or {}
    return sum(len(name) + sum(map(len, values)) for name, values in headers.items())


class StreamBuffer:
    """Items for one stream of CR ``key``, at most ``limit`` bytes waiting (each item counted
    with its metadata and ITEM_OVERHEAD, so tiny chunks cannot hold more than the bound).

    One item is always accepted into an empty buffer (a chunk may be as large as a frame);
    adding to a non-empty one past ``limit`` overflows it. ``on_overflow`` is called once,
    then, so the proxy can cut off a caller that is stuck not reading. A stream has one head
    (a TunnelResponse), its first item: a response after anything else is refused.
    """

    def __init__(
        self, key: str, limit: int, *, whole_chunks: bool = False, headed: bool = False
    ) -> None:
        self.key = key
        self.limit = limit
        self.whole_chunks = whole_chunks  # exec: chunks queued as they are, not just their data
        self.on_overflow: Callable[[], None] = lambda: None
        self.overflowed = False
        self.peak = 0  # the most bytes ever counted waiting (for tests and the bench)
        self._items: deque[StreamItem] = deque()
        self._bytes = 0
        self.received = 0  # bytes of data (bodies, chunks) ever queued: the agent's pace
        self._ended = False
        # headed: the head came another way (a chunked answer's, through its request's
        # future), so no response is of use to it.
        self._began = headed
        self._ready = asyncio.Event()

    @property
    def buffered(self) -> int:
        """The bytes counted waiting (``_size``: items' bytes, metadata and overhead)."""
        return self._bytes

    def wants_head(self) -> bool:
        """Whether a head (TunnelResponse) can be of use: only as the first item of a stream
        still going. Any later one would wait unread (the caller reads one head)."""
        return not (self._began or self._ended)

    @property
    def ended(self) -> bool:
        """No more items will come (the agent closed it, it failed, or it overflowed)."""
        return self._ended

    def put(self, item: TunnelResponse | Body | StreamChunk) -> bool:
        """Queue what the agent sent; False when the stream is over (ended or overflowed)
        or the item is of no use to it (a head after the stream began: ``wants_head``)."""
        if self._ended or (isinstance(item, TunnelResponse) and self._began):
            return False
        size = _size(item)
        if self._items and self._bytes + size > self.limit:
            self._overflow()
            return False
        self._items.append(item)
        self._began = True
        self._bytes += size
        if isinstance(item, Body):
            self.received += len(item)
        self.peak = max(self.peak, self._bytes)
        self._ready.set()
        return True

    def end(self, end: StreamEnd = CLEAN_END) -> None:
        """No more items after those queued; ``end`` is the last one the caller sees."""
        if self._ended:
            return
        self._ended = True
        self._items.append(_bounded(end))
        self._ready.set()

    def _overflow(self) -> None:
        self.overflowed = True
        self.cut(f"the caller fell more than {self.limit} bytes behind the stream")
        self.on_overflow()

    def cut(self, problem: str) -> None:
        """End the stream at once for ``problem``: what waits is dropped (the caller will be
        cut off, its answer incomplete), and nothing more is taken. Once ended, a no-op."""
        if self._ended:
            return
        self._items.clear()
        self._bytes = 0
        self.end(StreamEnd(problem))

    def get_nowait(self) -> StreamItem | None:
        """The next item if one waits, else None: a relay draining a full buffer needs no
        timer (one ``wait_for`` per item cost a task and two passes of the loop on 3.11)."""
        if not self._items:
            return None
        item = self._items.popleft()
        if not isinstance(item, StreamEnd):
            self._bytes -= _size(item)
        return item

    async def get(self) -> StreamItem:
        while (item := self.get_nowait()) is None:
            self._ready.clear()
            await self._ready.wait()
        return item


def _bounded(end: StreamEnd) -> StreamEnd:
    """``end`` with at most PROBLEM_SHOWN characters of its problem."""
    problem = end.problem
    if problem is None or len(problem) <= PROBLEM_SHOWN:
        return end
    return StreamEnd(shortened(problem, PROBLEM_SHOWN))
