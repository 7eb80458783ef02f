"""``ttlAfterCompletion`` parsing."""

from __future__ import annotations

import datetime as dt

import pytest

from workflowplane.runs.ttl import parse_ttl


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1d12h", dt.timedelta(days=1, hours=12)),
        ("30m", dt.timedelta(minutes=30)),
        ("45s", dt.timedelta(seconds=45)),
        ("2d3h4m5s", dt.timedelta(days=2, hours=3, minutes=4, seconds=5)),
        ("90m", dt.timedelta(minutes=90)),
        ("0s", dt.timedelta(0)),
        (" 30m ", dt.timedelta(minutes=30)),
    ],
)
def test_durations_parse(text: str, expected: dt.timedelta) -> None:
    assert parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "1x", "30", "m", "1h1d", "1.5h", "-1h", "1 h"])
def test_malformed_durations_are_value_errors_quoting_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not like 1d12h, 30m or 45s") as caught:
        parse_ttl(text)
    assert repr(text) in str(caught.value)
