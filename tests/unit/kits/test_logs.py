"""JSON logs: one object per line with the fixed fields and the record's context."""

from __future__ import annotations

import json
import logging
import sys

from workflowplane.kits.logs import JSONFormatter, formatter


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    return logging.getLogger("workflowplane.test").makeRecord(
        "workflowplane.test", logging.WARNING, __file__, 1, msg, args, None, extra=extra
    )


def test_a_record_becomes_one_json_object_with_its_context() -> None:
    record = _record("plane %s connected", "p1", plane="p1", cr="team/wp", request_id="r-7")
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "workflowplane.test"
    assert entry["msg"] == "plane p1 connected"
    assert (entry["plane"], entry["cr"], entry["request_id"]) == ("p1", "team/wp", "r-7")
    assert entry["ts"].endswith("+00:00") and "T" in entry["ts"]
    assert "args" not in entry and "levelno" not in entry, "no LogRecord internals"


def test_a_traceback_and_an_unserializable_value_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    record = _record("failed", key=("team", "run-1"), peer=object())
    record.exc_info = info
    entry = json.loads(JSONFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]
    assert entry["key"] == ["team", "run-1"] and entry["peer"].startswith("<object")


def test_text_stays_the_familiar_line() -> None:
    text = formatter("text").format(_record("hello %s", "there"))
    assert text.endswith("WARNING workflowplane.test: hello there")
