"""Command lines written for Go programs, read by argparse.

OpenChoreo's Helm charts start their Go binaries with Go ``flag`` syntax: ``-name`` or ``--name``,
``=value`` or a separate value, bools as ``--flag`` or ``--flag=false``, durations as ``5s`` or
``1m30s``. These helpers let an argparse parser accept the same command line unchanged.
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``300ms``, ``1h30m``) or a plain number of seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = _go_duration(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"duration must not be negative: {text!r}")
    return seconds


def _go_duration(value: str) -> float:
    sign = -1.0 if value.startswith("-") else 1.0
    rest = value.lstrip("+-")
    total, position = 0.0, 0
    for match in _PART.finditer(rest):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not rest or position != len(rest):
        raise argparse.ArgumentTypeError(
            f"invalid duration {value!r} (expected e.g. 30s, 1m30s, 500ms)"
        )
    return sign * total


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``: 1/t/true/TRUE/True and 0/f/false/FALSE/False."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (expected true or false)")


def env_bool(value: str | None, default: bool) -> bool:
    """OpenChoreo's ``GetEnvBool``: unset or empty keeps the default, "true"/"1" is true."""
    if not value:
        return default
    return value in ("true", "1")


def add_go_flag(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> None:
    """``--name`` and Go's single-dash ``-name`` for each name (the first is the destination);
    ``go_bool=True``: a bool flag that needs no value (``--tls-enabled``, ``--tls-enabled=false``).
    """
    if kwargs.pop("go_bool", False):
        kwargs.update(nargs="?", const=True, type=parse_bool)
    spellings = [spelling for name in names for spelling in (f"--{name}", f"-{name}")]
    parser.add_argument(*spellings, dest=names[0].replace("-", "_"), **kwargs)


_GO_LOG_LEVELS = {"debug": "DEBUG", "warn": "WARNING", "warning": "WARNING", "error": "ERROR"}


def apply_go_log_level(level: str | None) -> None:
    """OpenChoreo's ``--log-level`` (debug|info|warn|error) on the root logger; anything else
    is info, as its gateway and agent treat it; none leaves the level as it is."""
    if level:
        logging.getLogger().setLevel(_GO_LOG_LEVELS.get(level.lower(), "INFO"))
