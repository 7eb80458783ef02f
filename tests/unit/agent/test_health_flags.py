"""The agent's health listener flags: on by default at :8082 (OpenChoreo's agent has none, so
its command line gets one too), from the environment as every agent flag, and off in a
config built by code unless asked for."""

from __future__ import annotations

import argparse
import errno
import os

import pytest

from workflowplane.agent.command import add_arguments, config_from_args
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import start_health
from workflowplane.kits.process import FatalError

REQUIRED = ["--server-url=wss://gw:8443/ws", "--plane-id=p"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLUSTER_AGENT_"):
            monkeypatch.delenv(name)


def _config(*argv: str) -> AgentConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args([*REQUIRED, *argv]))


def test_the_listener_is_on_by_default_at_8082() -> None:
    config = _config()
    assert (config.health_host, config.health_port) == ("0.0.0.0", 8082)


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config("--health-port=9100", "-health-host", "127.0.0.1").health_port == 9100
    monkeypatch.setenv("CLUSTER_AGENT_HEALTH_PORT", "0")
    assert _config().health_port == 0  # any free port


def test_a_config_built_by_code_serves_no_listener() -> None:
    assert AgentConfig(server_url="wss://gw", plane_id="p").health_port is None


def test_only_the_default_port_nobody_chose_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config().health_optional
    assert not _config("--health-port=9100").health_optional
    assert not _config("--health-port=8082").health_optional  # asked for, if the default
    monkeypatch.setenv("CLUSTER_AGENT_HEALTH_PORT", "8082")
    assert not _config().health_optional


class TakenPort:
    """A health listener whose port another process holds (or ``problem``)."""

    def __init__(self, problem: int = errno.EADDRINUSE) -> None:
        self.problem = problem

    async def start(self, host: str, port: int) -> int:
        cause = OSError(self.problem, os.strerror(self.problem))
        error = FatalError(f"cannot listen for health on {host}:{port}: {cause}")
        raise error from cause


async def test_a_taken_default_port_is_a_warning_and_the_agent_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenChoreo's agent has no listener: agents started with its command line, several on
    one host, had all but one exit (2) on the port the first took."""
    await start_health(TakenPort(), _config())  # type: ignore[arg-type]
    assert "serving without /healthz" in caplog.text and "already in use" in caplog.text


async def test_a_taken_port_asked_for_stops_the_agent_naming_it() -> None:
    with pytest.raises(FatalError, match="Address already in use"):
        await start_health(TakenPort(), _config("--health-port=9100"))  # type: ignore[arg-type]


async def test_any_other_listening_problem_stops_the_agent_even_on_the_default() -> None:
    """Only a port another process holds is passed over (a host that is no address of this
    machine is a setting to fix)."""
    with pytest.raises(FatalError, match="Cannot assign requested address"):
        await start_health(TakenPort(errno.EADDRNOTAVAIL), _config())  # type: ignore[arg-type]
