"""Peer text made short: shown with its length, or kept within a schema's maxLength."""

from __future__ import annotations

import tracemalloc

import pytest

from workflowplane.kits.text import decoded, shortened, within


@pytest.mark.parametrize("limit", [0, 5, 30, 1024])
def test_within_never_passes_its_limit_and_says_how_long_the_text_was(limit: int) -> None:
    text = "x" * 5000
    kept = within(text, limit)
    assert len(kept) <= limit
    if limit >= 30:
        assert kept.startswith("x") and kept.endswith("... (5000 characters)")
    assert within("short", limit + 5) == "short"


def test_shortened_shows_the_whole_limit_then_the_length() -> None:
    assert shortened("x" * 5000, 10) == "x" * 10 + "... (5000 characters)"
    assert shortened("short", 10) == "short"


def test_bytes_are_decoded_only_as_far_as_they_are_shown() -> None:
    """An agent's 64 MiB end reason was decoded whole (0.4 s of the loop, a 128 MiB string)
    to show its first 1,024 characters."""
    data = b"\xff" * (16 << 20)
    tracemalloc.start()
    try:
        shown = decoded(data, 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(shown) <= 1024 and shown.endswith(f"... ({16 << 20} bytes)")
    assert peak < 1 << 20
    assert decoded(b"caf\xc3\xa9 \xff", 1024) == "caf\u00e9 \ufffd"
