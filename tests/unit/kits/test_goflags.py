"""Go command-line syntax read by argparse: durations, bools, single-dash flags."""

from __future__ import annotations

import argparse
import logging

import pytest

from workflowplane.kits.goflags import (
    add_go_flag,
    apply_go_log_level,
    env_bool,
    parse_bool,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("300ms", 0.3),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("1h0m0.5s", 3600.5),
        ("10us", 1e-5),
    ],
)
def test_durations_in_go_syntax_or_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5d", "s", "5 s", "1m-5s", "-5s", "abc"])
def test_bad_durations_name_the_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)


def test_bools_as_go_parses_them() -> None:
    assert [parse_bool(v) for v in ("1", "t", "TRUE", "true", "True")] == [True] * 5
    assert [parse_bool(v) for v in ("0", "f", "FALSE", "false", "False")] == [False] * 5
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("yes")


def test_env_bool_is_openchoreos_getenvbool() -> None:
    assert env_bool(None, True) and env_bool("", True)
    assert env_bool("1", False) and env_bool("true", False)
    assert not env_bool("TRUE", True)  # only "true" and "1" count, as in cmdutil.GetEnvBool


def test_flags_take_one_or_two_dashes_and_bools_need_no_value() -> None:
    parser = argparse.ArgumentParser()
    add_go_flag(parser, "plane-id")
    add_go_flag(parser, "tls-enabled", go_bool=True, default=True)
    add_go_flag(parser, "reconnect-initial", "reconnect-delay", type=parse_duration)
    args = parser.parse_args(["-plane-id=p1", "--tls-enabled=false", "-reconnect-delay", "5s"])
    assert (args.plane_id, args.tls_enabled, args.reconnect_initial) == ("p1", False, 5.0)
    assert parser.parse_args(["--tls-enabled"]).tls_enabled is True


@pytest.mark.parametrize(
    ("given", "level"),
    [("debug", logging.DEBUG), ("WARN", logging.WARNING), ("error", logging.ERROR),
     ("verbose", logging.INFO)],
)  # fmt: skip
def test_openchoreos_log_levels_set_the_root_logger(given: str, level: int) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        apply_go_log_level(given)
        assert root.level == level
    finally:
        root.setLevel(before)


def test_no_log_level_leaves_the_root_logger_alone() -> None:
    root = logging.getLogger()
    before = root.level
    apply_go_log_level(None)
    assert root.level == before
