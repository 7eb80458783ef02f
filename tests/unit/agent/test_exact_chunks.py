"""A large answer's chunks as the agent cuts them from the API server's reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from workflowplane.agent.tunnel import _exact_chunks

pytestmark = pytest.mark.asyncio


async def reads(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_tiny_reads_are_held_as_a_few_pieces_not_one_object_each() -> None:
    """A hostile API server answering in 2-byte chunks: a chunk in the making must not keep
    an object per read (about 25 bytes per byte carried)."""
    body = bytes(range(256)) * 64  # 16 KiB
    tiny = [body[i : i + 2] for i in range(0, len(body), 2)]
    chunks = [(list(parts), size) async for parts, size in _exact_chunks(reads(tiny), 4096)]
    assert [size for _, size in chunks] == [4096] * 4 + [0]
    assert b"".join(b"".join(parts) for parts, _ in chunks) == body
    assert max(len(parts) for parts, _ in chunks) <= 5  # joined as they came (2,048 reads)


async def test_large_reads_are_not_copied() -> None:
    big = [bytes([n]) * 3000 for n in range(4)]
    chunks = [(list(parts), size) async for parts, size in _exact_chunks(reads(big), 4096)]
    assert [size for _, size in chunks] == [4096, 4096, 3808]
    assert chunks[0][0][0] is big[0]  # the first read, as it came
    assert b"".join(b"".join(parts) for parts, _ in chunks) == b"".join(big)
