"""``read_bounded`` holds about the body's size however small the pieces it is read in: an API
server trickling 2-byte pieces, one per read, made it hold ~28 bytes per byte (~1 GB at the
agent's answer limit)."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

from workflowplane.agent.upstream import read_bounded


class Trickle:
    """An answer whose body comes as ``count`` fresh 2-byte pieces, then one long piece."""

    def __init__(self, count: int, long: bytes) -> None:
        self.count, self.long = count, long
        self.content_length: int | None = None
        self.complete = False
        self.held = 0

    async def iter_any(self) -> AsyncIterator[bytes]:
        for index in range(self.count):
            yield b"%02d" % (index % 100)  # a new object each time, as a socket's reads are
        self.held, _ = tracemalloc.get_traced_memory()
        yield self.long


async def test_a_body_read_in_tiny_pieces_holds_about_its_own_size() -> None:
    long = b"z" * 64 * 1024
    answer = Trickle(200_000, long)
    tracemalloc.start()
    try:
        body = await read_bounded(answer, 1 << 20)  # type: ignore[arg-type]
    finally:
        tracemalloc.stop()
    assert answer.held < 1.5 * 400_000, f"{answer.held} bytes held for 400,000 read"
    assert body == b"".join(b"%02d" % (i % 100) for i in range(200_000)) + long
