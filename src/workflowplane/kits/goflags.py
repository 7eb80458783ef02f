"""Command lines written for Go programs, read by argparse.

OpenChoreo's Helm charts start their Go binaries with Go ``flag`` syntax: ``-name`` or ``--name``,
``=value`` or a separate value, bools as ``--flag`` or ``--flag=false``, durations as ``5s`` or
``1m30s``. These helpers let an argparse parser accept the same command line unchanged.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Callable
from typing import Any

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
MAX_PORT = 65535


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``300ms``, ``1h30m``) or a plain number of seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = _go_duration(value)
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"duration must be a finite time: {text!r}")
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"duration must not be negative: {text!r}")
    return seconds


def positive_duration(text: str) -> float:
    """A duration that must be more than zero (a timeout, an interval)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be more than 0: {text!r}")
    return seconds


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        number = int(text.strip())
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port must be 0-{MAX_PORT}: {text!r}")
    return number


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer of at least ``minimum`` (a count, a size)."""

    def parse(text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of at least {minimum}: {text!r}"
            ) from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return number

    parse.__name__ = f"at least {minimum}"  # argparse names the type in its own messages
    return parse


def log_level(text: str) -> str:
    """OpenChoreo's levels: debug, info, warn (warning), error."""
    if text.lower() not in {"info", *_GO_LOG_LEVELS}:
        raise argparse.ArgumentTypeError(
            f"invalid log level {text!r} (expected debug, info, warn or error; trace, fatal)"
        )
    return text


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


def env_bool(value: str | None, default: bool) -> str:
    """A boolean environment variable as a flag's default, checked when the command line is
    read (``parse_bool``: a value such as ``True`` or ``maybe`` is no longer taken as false,
    which would switch TLS off): unset or empty keeps ``default``."""
    return value or ("true" if default else "false")


def add_go_flag(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> None:
    """``--name`` and Go's single-dash ``-name`` for each name (the first is the destination);
    ``go_bool=True``: a bool flag that needs no value (``--tls-enabled``, ``--tls-enabled=false``).
    """
    if kwargs.pop("go_bool", False):
        kwargs.update(nargs="?", const=True, type=parse_bool)
    spellings = [spelling for name in names for spelling in (f"--{name}", f"-{name}")]
    parser.add_argument(*spellings, dest=names[0].replace("-", "_"), **kwargs)


_GO_LOG_LEVELS = {
    "debug": "DEBUG",
    "trace": "DEBUG",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "fatal": "ERROR",
    "panic": "ERROR",
}


def apply_go_log_level(level: str | None) -> None:
    """OpenChoreo's ``--log-level`` (debug|info|warn|error, checked by :func:`log_level`)
    on the root logger; none leaves the level as it is."""
    if level:
        logging.getLogger().setLevel(_GO_LOG_LEVELS.get(level.lower(), "INFO"))
