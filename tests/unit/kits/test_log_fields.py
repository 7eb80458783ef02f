"""A process that serves one plane names it on every line, without each call saying so."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from workflowplane.kits.logs import JSONFormatter, add_fields


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A JSON handler on the root logger for the test; after it, every root handler is as it
    was (``add_fields`` filters them all)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    before = {h: list(h.filters) for h in root.handlers}
    try:
        yield out
    finally:
        root.removeHandler(handler)
        for other, filters in before.items():
            other.filters[:] = filters


def test_every_line_carries_the_fields_and_a_calls_own_extra_wins(stream: io.StringIO) -> None:
    add_fields(plane="p1")
    log = logging.getLogger("workflowplane.test.fields")
    log.warning("one")
    log.warning("two", extra={"plane": "mine", "request_id": "r-1"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["plane"] == "p1" and first["msg"] == "one"
    assert (second["plane"], second["request_id"]) == ("mine", "r-1")
