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


def _size(item: TunnelResponse | Body | StreamChunk) -> int:
    if isinstance(item, Body):
        return len(item)
    if isinstance(item, StreamChunk):
        return len(item.data or b"")
    return 0


class StreamBuffer:
    """Items for one stream of CR ``key``, at most ``limit`` bytes of body waiting.

    One item is always accepted into an empty buffer (a chunk may be as large as a frame);
    adding to a non-empty one past ``limit`` overflows it. ``on_overflow`` is called once,
    then, so the proxy can cut off a caller that is stuck not reading.
    """

    def __init__(self, key: str, limit: int, *, whole_chunks: bool = False) -> None:
        self.key = key
        self.limit = limit
        self.whole_chunks = whole_chunks  # exec: chunks queued as they are, not just their data
        self.on_overflow: Callable[[], None] = lambda: None
        self.overflowed = False
        self.peak = 0  # the most body bytes ever waiting (for tests and the bench)
        self._items: deque[StreamItem] = deque()
        self._bytes = 0
        self._ended = False
        self._ready = asyncio.Event()

    @property
    def buffered(self) -> int:
        return self._bytes

    @property
    def ended(self) -> bool:
        """No more items will come (the agent closed it, it failed, or it overflowed)."""
        return self._ended

    def put(self, item: TunnelResponse | Body | StreamChunk) -> bool:
        """Queue what the agent sent; False when the stream is over (ended or overflowed)."""
        if self._ended:
            return False
        size = _size(item)
        if self._items and self._bytes + size > self.limit:
            self._overflow()
            return False
        self._items.append(item)
        self._bytes += size
        self.peak = max(self.peak, self._bytes)
        self._ready.set()
        return True

    def end(self, end: StreamEnd = CLEAN_END) -> None:
        """No more items after those queued; ``end`` is the last one the caller sees."""
        if self._ended:
            return
        self._ended = True
        self._items.append(end)
        self._ready.set()

    def _overflow(self) -> None:
        self.overflowed = True
        self._items.clear()
        self._bytes = 0
        self.end(StreamEnd(f"the caller fell more than {self.limit} bytes behind the stream"))
        self.on_overflow()

    async def get(self) -> StreamItem:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if not isinstance(item, StreamEnd):
            self._bytes -= _size(item)
        return item
