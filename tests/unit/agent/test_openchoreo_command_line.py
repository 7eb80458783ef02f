"""OpenChoreo's chart starts our agent unchanged: its flags (Go syntax) and its agent's
environment variables are accepted and mapped; the ones with no meaning here are reported."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from tests.openchoreo_chart import agent_args, chart_dir
from workflowplane.agent.command import add_arguments, config_from_args
from workflowplane.agent.config import AgentConfig
from workflowplane.testenv.peer import source_dir

GO_ENV = {"SERVER_URL", "PLANE_TYPE", "PLANE_ID", "TLS_ENABLED", "CLIENT_CERT_PATH"}
GO_ENV |= {"CLIENT_KEY_PATH", "SERVER_CA_PATH", "KUBECONFIG", "LOG_LEVEL", "POD_NAME"}
GO_ENV |= {"POD_NAMESPACE"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLUSTER_AGENT_") or name in GO_ENV:
            monkeypatch.delenv(name)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def _config(argv: list[str]) -> AgentConfig:
    return config_from_args(_parse(argv))


def chart_args() -> list[str]:
    """The agent container's args as OpenChoreo's chart renders them with its default values."""
    if not chart_dir().is_dir():
        pytest.skip(f"OpenChoreo's chart is not at {chart_dir()}")
    return agent_args()


def test_openchoreos_chart_command_line_is_accepted_and_mapped() -> None:
    args = chart_args()
    flags = {arg.split("=", 1)[0] for arg in args}
    assert {"--tls-enabled", "--heartbeat-interval", "--reconnect-delay", "--log-level"} <= flags
    config = _config(args)
    assert config.server_url.startswith("wss://") and config.server_url.endswith("/ws")
    assert (config.plane_type, config.plane_id) == ("workflowplane", "default")
    assert config.tls_enabled is True
    assert config.client_cert_file == Path("/certs/tls.crt")
    assert config.client_key_file == Path("/certs/tls.key")
    assert config.server_ca_file == Path("/ca-certs/ca.crt")
    assert config.reconnect_initial_seconds == 5.0  # reconnectDelay: 5s
    assert config.ignored == ("--heartbeat-interval=30s",)


def test_every_flag_of_openchoreos_agent_is_accepted() -> None:
    """All flags of cmd/cluster-agent/main.go, in Go's single-dash form."""
    main_go = (source_dir() / "cmd/cluster-agent/main.go").read_text()
    names = re.findall(r'flag\.\w+Var\(&\w+, "([\w-]+)"', main_go)
    assert "request-timeout" in names and "kubeconfig" in names
    samples = {"tls-enabled": "false", "reconnect-delay": "2s", "heartbeat-interval": "10s"}
    samples |= {"request-timeout": "1m", "log-level": "debug", "plane-id": "p"}
    samples["plane-type"] = "workflowplane"
    samples["server-url"] = "wss://gw/ws"  # checked at start: a URL the agent can dial
    argv = ["-server-url=wss://gw/ws", "-plane-id=p"]
    argv += [f"-{name}={samples.get(name, '/x')}" for name in names]
    config = _config(argv)
    assert config.request_timeout_seconds == 60.0 and config.tls_enabled is False


def test_openchoreos_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SERVER_URL": "wss://gw:8443/ws",
        "PLANE_TYPE": "workflowplane",
        "PLANE_ID": "from-env",
        "TLS_ENABLED": "true",
        "CLIENT_CERT_PATH": "/c/tls.crt",
        "CLIENT_KEY_PATH": "/c/tls.key",
        "SERVER_CA_PATH": "/ca/ca.crt",
        "KUBECONFIG": "/k/config",
        "LOG_LEVEL": "warn",
        "POD_NAME": "cluster-agent-abc",
        "POD_NAMESPACE": "openchoreo-workflow-plane-2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = _parse([])
    config = config_from_args(args)
    assert (config.server_url, config.plane_id) == ("wss://gw:8443/ws", "from-env")
    assert config.client_cert_file == Path("/c/tls.crt")
    assert config.client_key_file == Path("/c/tls.key")
    assert config.server_ca_file == Path("/ca/ca.crt")
    assert config.kubeconfig == Path("/k/config")
    assert config.namespace == "openchoreo-workflow-plane-2"
    assert args.log_level == "warn"
    assert config.ignored == ("POD_NAME=cluster-agent-abc",)


def test_our_variables_win_over_openchoreos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANE_ID", "theirs")
    monkeypatch.setenv("CLUSTER_AGENT_PLANE_ID", "ours")
    monkeypatch.setenv("SERVER_URL", "wss://gw/ws")
    assert _config([]).plane_id == "ours"
    assert _config(["--plane-id", "flag"]).plane_id == "flag"


def test_tls_disabled_from_the_environment_as_getenvbool_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TLS_ENABLED", "false")
    assert _config(["--server-url=wss://g/ws", "--plane-id=p"]).tls_enabled is False


def test_our_own_flags_still_work() -> None:
    ours = ["--server-url", "wss://g", "--plane-id", "p", "--reconnect-initial", "0.2"]
    config = _config(
        [*ours, "--reconnect-max=2", "--request-timeout=30", "--max-frame-bytes=1048576"]
    )
    assert config.reconnect_initial_seconds == 0.2 and config.reconnect_max_seconds == 2.0
    assert config.max_frame_bytes == 1 << 20 and config.ignored == ()


def test_a_plane_type_openchoreos_agent_refuses_is_refused_naming_the_choices() -> None:
    """Its agent exits on any other (its gateway looks up that kind of CR); ours had taken
    any word and dialled with it."""
    from workflowplane.kits.process import FatalError  # noqa: PLC0415

    base = ["--server-url=wss://gw:8443/ws", "--plane-id=p"]
    for plane_type in ("dataplane", "workflowplane", "observabilityplane"):
        assert _config([*base, f"--plane-type={plane_type}"]).plane_type == plane_type
    with pytest.raises(FatalError, match="dataplane, observabilityplane, workflowplane"):
        _config([*base, "--plane-type=buildplane"])
    assert _config([*base, "--plane-type="]).plane_type == "workflowplane"  # empty: default
