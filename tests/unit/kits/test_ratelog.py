"""Throttled log lines: one per key per interval, the rest counted into the next line."""

from __future__ import annotations

import logging

import pytest

from workflowplane.kits.ratelog import LogThrottle


def test_one_line_per_key_per_interval_with_a_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttle = LogThrottle(logging.getLogger("t"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttle.log(("c1", "bad"), logging.WARNING, "bad frame %s", 1)
        for n in range(500):
            assert not throttle.log(("c1", "bad"), logging.WARNING, "bad frame %s", n)
        assert throttle.log(("c2", "bad"), logging.WARNING, "bad frame %s", "other")
        now[0] += 10
        assert throttle.log(("c1", "bad"), logging.WARNING, "bad frame %s", "again")
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame 1",
        "bad frame other",
        "bad frame again (and 500 more like it in the previous 10s)",
    ]


def test_forget_drops_a_sources_keys() -> None:
    throttle = LogThrottle(logging.getLogger("t"))
    throttle.log(("c1", "a"), logging.INFO, "x")
    throttle.log(("c1", "b"), logging.INFO, "x")
    throttle.log(("c2", "a"), logging.INFO, "x")
    throttle.forget(lambda key: isinstance(key, tuple) and key[0] == "c1")
    assert len(throttle) == 1
