"""Go command-line syntax read by argparse: durations, bools, single-dash flags."""

from __future__ import annotations

import argparse
import logging

import pytest

from workflowplane.kits.goflags import (
    add_go_flag,
    apply_go_log_level,
    at_least,
    env_bool,
    log_level,
    parse_bool,
    parse_duration,
    port,
    positive_duration,
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


def test_a_boolean_variable_is_checked_as_a_flag_value_is() -> None:
    """OpenChoreo's ``GetEnvBool`` takes anything but "true" and "1" as false, so
    ``INTERNAL_MTLS_ENABLED=True`` or ``TLS_ENABLED=maybe`` switched security off; here the
    variable is the flag's default, read by ``parse_bool`` with the rest of the command line."""
    assert env_bool(None, True) == "true" and env_bool("", False) == "false"
    parser = argparse.ArgumentParser()
    add_go_flag(parser, "tls-enabled", go_bool=True, default=env_bool("True", False))
    assert parser.parse_args([]).tls_enabled is True
    refusing = argparse.ArgumentParser(exit_on_error=False)
    add_go_flag(refusing, "tls-enabled", go_bool=True, default=env_bool("maybe", True))
    with pytest.raises(argparse.ArgumentError, match="invalid boolean 'maybe'"):
        refusing.parse_args([])


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999"])
def test_a_duration_must_be_finite(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", True),
        ("65535", True),
        ("65536", False),
        ("-1", False),
        ("abc", False),
        ("80.5", False),
    ],
)
def test_ports_are_checked_not_wrapped(text: str, ok: bool) -> None:
    if ok:
        assert port(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="port must be 0-65535"):
            port(text)


def test_counts_durations_and_levels_refuse_what_means_nothing() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0"):
        positive_duration("0s")
    with pytest.raises(argparse.ArgumentTypeError, match="invalid log level"):
        log_level("verbose")
    assert log_level("WARN") == "WARN" and positive_duration("1m") == 60


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
