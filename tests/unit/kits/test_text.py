"""Peer text made short: shown with its length, or kept within a schema's maxLength."""

from __future__ import annotations

import pytest

from workflowplane.kits.text import shortened, within


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
