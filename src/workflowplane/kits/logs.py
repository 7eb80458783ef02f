"""Logs that a machine can join: one JSON object per line (``--log-format json``), or the
familiar text line.

A JSON record carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``msg``
(the formatted message), ``exc`` when there is a traceback, and every ``extra`` a caller
passed (``log.info("...", extra={"plane": ..., "cr": ..., "request_id": ...})``), so the same
plane, CR or request can be found in the gateway's and the agent's logs with one query.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Every attribute a LogRecord has of its own; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JSONFormatter(logging.Formatter):
    """One JSON object per record; values JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(fmt: LogFormat = "text", *, verbose: bool = False) -> None:
    """The root logger for a process: one stderr handler in the chosen format.

    Like ``logging.basicConfig`` (which it calls), a no-op when the root logger already has
    handlers, e.g. a test runner's.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


class _Fields(logging.Filter):
    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def add_fields(**fields: object) -> None:
    """Every record the root logger's handlers write carries ``fields`` (a record's own
    ``extra`` wins): for a process that serves one plane, so that each of its lines names it."""
    fields_filter = _Fields(fields)
    for handler in logging.getLogger().handlers:
        handler.addFilter(fields_filter)
