"""Settings of the agent, gateway and controller that mean nothing (or something dangerous)
are refused at start with the setting named, not accepted, wrapped or turned into a
traceback (a review found each of these starting, or crashing, before)."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx2
import pytest

from tests.unit.cli.wpctl import wpctl
from workflowplane.agent.command import add_arguments, config_from_args
from workflowplane.api.kube import load_config
from workflowplane.cli.main import _server_error
from workflowplane.gateway.command import add_gateway_flags
from workflowplane.kits.process import FatalError
from workflowplane.pki import generate_ca, issue_certificate

AGENT = ["agent", "--plane-id", "p", "--server-url", "wss://gw:8443/ws"]


def test_a_bad_agent_variable_does_not_break_every_wpctl_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's flags read their variables when the parser was built: a bad one made
    every wpctl command, --help included, end in a traceback."""
    monkeypatch.setenv("CLUSTER_AGENT_HEALTH_PORT", "abc")
    code, err = wpctl(capsys, "--help")
    assert code == 0 and "Traceback" not in err
    code, err = wpctl(capsys, *AGENT)
    assert code == 2 and "--health-port" in err and "'abc'" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--health-port=70000"], "port must be 0-65535"),
        (["--max-concurrent-requests=-1"], "must be at least 1"),
        (["--request-timeout=0"], "more than 0"),
        (["--reconnect-max=nan"], "finite"),
        (["--cert-validity-days=0"], "days from 1 to 3650"),
        (["--reconnect-initial=60s", "--reconnect-max=1s"], "longer than --reconnect-max"),
        (["--log-level=verbose"], "invalid log level"),
        (["--tls-enabled=maybe"], "invalid boolean"),
        (["--allowed-namespaces=,"], "has an empty entry"),
        (["--client-key=/k"], "--client-key given without --client-cert: they go together"),
        (["--server-ca=/nope/ca.crt"], "--server-ca /nope/ca.crt"),
    ],
)
def test_the_agent_refuses_settings_that_mean_nothing(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, err = wpctl(capsys, *AGENT, *argv)
    assert code == 2 and says in err, err


@pytest.mark.parametrize("plane_id", ["UPPER", "-lead", "a/b", "x" * 254, "has space", "a..b"])
def test_the_agent_refuses_a_plane_id_no_cr_can_have(
    capsys: pytest.CaptureFixture[str], plane_id: str
) -> None:
    code, err = wpctl(capsys, "agent", f"--plane-id={plane_id}", "--server-url", "wss://g:1/ws")
    assert code == 2 and "is not a planeID" in err


def test_a_boolean_variable_that_is_not_one_is_refused_not_taken_as_false(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenChoreo reads anything but "true"/"1" as false: ``TLS_ENABLED=maybe`` switched TLS
    off, and ``INTERNAL_MTLS_ENABLED=True`` let unauthenticated callers in."""
    monkeypatch.setenv("TLS_ENABLED", "maybe")
    code, err = wpctl(capsys, *AGENT)
    assert code == 2 and "invalid boolean 'maybe'" in err
    monkeypatch.setenv("INTERNAL_MTLS_ENABLED", "yes")
    code, err = wpctl(capsys, "gateway")
    assert code == 2 and "invalid boolean 'yes'" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--public-port=70000"], "port must be 0-65535"),
        (["--tls-handshake-timeout=0"], "more than 0"),
        (["--max-frame-bytes=-1"], "must be at least"),
        (["--drain-seconds=nan"], "finite"),
        (["--dead-after=1s", "--ping-interval=60s"], "is shorter than --ping-interval"),
        (["--server-dns-name=bad name!"], "is not a DNS name"),
        (["--server-dns-name="], "is not a DNS name"),
    ],
)
def test_the_gateway_refuses_settings_that_mean_nothing(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, err = wpctl(capsys, "gateway", *argv)
    assert code == 2 and says in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--resync-seconds=0"], "> 0"),
        (["--stuck-after=nan"], ">= 0"),
        (["--disconnect-grace=-1"], ">= 0"),
        (["--health-port=99999"], "port must be 0-65535"),
    ],
)
def test_the_controller_refuses_settings_that_mean_nothing(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, err = wpctl(capsys, "controller", *argv)
    assert code == 2 and says in err, err


@pytest.mark.parametrize("content", [None, "not: [yaml", "[]", "apiVersion: v1\n"])
def test_a_kubeconfig_that_cannot_be_used_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    if content is not None:
        kubeconfig.write_text(content)
    code, err = wpctl(capsys, "runs", "--kubeconfig", str(kubeconfig))
    assert code == 2 and str(kubeconfig) in err and "Traceback" not in err, err


def test_the_agent_refuses_a_plain_url_with_tls_on_and_a_consent_list_without_tls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TLS on with ws:// had run the tunnel in the clear without a word; a consent list with
    TLS off had run forever, refusing to connect."""
    code, err = wpctl(capsys, "agent", "--plane-id=p", "--server-url=ws://gw:80/ws")
    assert code == 2 and "is not a TLS URL but TLS is enabled" in err
    plain = ["agent", "--plane-id=p", "--server-url=ws://gw:80/ws", "--tls-enabled=false"]
    code, err = wpctl(capsys, *plain, "--allowed-namespaces=team-a")
    assert code == 2 and "--allowed-namespaces needs TLS" in err


def test_certificate_files_are_loaded_at_start_and_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one, other = generate_ca("one"), generate_ca("other")
    leaf = issue_certificate(one, "gw", client=False, server=True)
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "other.key").write_bytes(other.key_pem)
    (tmp_path / "empty.pem").write_text("")
    cert, key, empty = (str(tmp_path / n) for n in ("tls.crt", "other.key", "empty.pem"))
    code, err = wpctl(
        capsys, "gateway", f"--server-cert={cert}", f"--server-key={key}", "--internal-mtls=false"
    )
    assert code == 2 and f"--server-cert/--server-key ({cert}, {key})" in err
    code, err = wpctl(capsys, *AGENT, f"--server-ca={empty}")
    assert code == 2 and f"--server-ca {empty}" in err
    code, err = wpctl(capsys, "controller", f"--gateway-ca={cert}")
    assert code == 2 and "--gateway-ca given without --gateway-cert, --gateway-key" in err


REGISTER = ["register", "--wp-context=w", "--cp-context=c", "--kubeconfig=/nope"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["UPPER", "-n", "default"], "argument name"),
        (["wp", "-n", "Bad_NS"], "argument -n/--namespace"),
        (["wp", "-n", "d", "--ca-secret", "UPPER"], "argument --ca-secret"),
        (["wp", "--cluster", "--plane-id=p", "-n", "x"], "a ClusterWorkflowPlane has none"),
        (["wp", "-n", "d", "--ca-secret-namespace=x"], "--ca-secret-namespace needs --ca-secret"),
        (["wp", "-n", "d", "--allow="], "--allow is empty"),
    ],
)
def test_register_refuses_names_and_flags_before_writing_anything(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """Each of these had reached the agent's consent ConfigMap (or been dropped silently)."""
    code, err = wpctl(capsys, *REGISTER, *argv)
    assert code == 2 and says in err, err


def test_a_credential_in_a_broken_header_is_never_printed() -> None:
    """A token with a line break made the HTTP client refuse the header, and its message,
    token included, was printed as the reason the server was unreachable."""
    said = _server_error(httpx2.LocalProtocolError("Illegal header value b'Bearer ab\\ncd'"))
    assert said is not None and "Bearer" not in said.message and "cd" not in said.message
    assert "invalid HTTP header" in said.message and said.exit_code == 2


@pytest.mark.parametrize(
    "argv",
    [
        [*AGENT, "--tls=false"],
        [*AGENT, "--allow=team-a"],
        ["gateway", "--tls-hand=1s"],
    ],
)
def test_a_shortened_flag_is_refused_as_go_refuses_it(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """argparse took ``--tls=false`` for ``--tls-enabled=false``; Go's flag package (and
    OpenChoreo's charts) know no such abbreviation."""
    code, err = wpctl(capsys, *argv)
    assert code == 2 and "unrecognized arguments" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["controller", "--gateway-url=https://"], "--gateway-url needs distinct https://host"),
        (["controller", "--gateway-url=https://u:p@gw:1"], "without credentials"),
        (["controller", "--gateway-url=https://a:1,https://a:1"], "distinct"),
        (["controller", "--peering=Bad Name!"], "is not a Kubernetes object name"),
        (["control-plane", "--gateway-peer-url=notaurl"], "is not an https://host:port URL"),
        (["run", "docker-build", "--ttl="], "argument --ttl"),
        (["logs", "r", "--gateway-url=notaurl"], "--gateway-url needs distinct https://host"),
    ],
)
def test_urls_names_and_contexts_that_cannot_work_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, err = wpctl(capsys, *argv)
    assert code == 2 and says in err, err


def test_a_context_without_a_kubeconfig_is_refused_not_ignored() -> None:
    """In a pod the service account was used and ``--context`` silently ignored."""
    with pytest.raises(FatalError, match="--context foo needs --kubeconfig"):
        load_config(None, "foo")


KUBECONFIG_USER = """
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "{server}", insecure-skip-tls-verify: true}}
contexts:
- name: x
  context: {{cluster: c, user: u}}
current-context: x
users:
- name: u
  user: {user}
"""


@pytest.mark.parametrize(
    ("server", "user", "says"),
    [
        ("https://127.0.0.1:1", "{auth-provider: {name: gcp}}", "credentials cannot be used"),
        ("https://127.0.0.1:1", "{tokenFile: /nope/token}", "Token file /nope/token"),
        ("https://127.0.0.1:1", "{client-certificate: /c.crt}", "go together"),
        ("https://127.0.0.1:99999", "{token: abc}", "Port out of range"),
    ],
)
def test_a_kubeconfig_the_client_cannot_use_is_named_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, server: str, user: str, says: str
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_USER.format(server=server, user=user))
    code, err = wpctl(capsys, "runs", "--kubeconfig", str(kubeconfig))
    assert code == 2 and says in err and "Traceback" not in err, err


def test_openchoreos_settings_beyond_our_defaults_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenChoreo's chart may pass any --reconnect-delay (its cap is ours to choose), and a
    CR without a planeID is reached by its name, which may hold dots."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--server-url=wss://gw:8443/ws", "--plane-id=build.eu-west"]
    config = config_from_args(parser.parse_args([*base, "--reconnect-delay=1m"]))
    assert config.reconnect_initial_seconds == 60 and config.reconnect_max_seconds == 60
    config = config_from_args(parser.parse_args(base))
    assert config.reconnect_max_seconds == 30 and config.plane_id == "build.eu-west"


def test_a_kubernetes_service_link_in_a_port_variable_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kubernetes sets AGENT_SERVER_PORT=tcp://IP:PORT for a Service named agent-server;
    OpenChoreo's GetEnvInt ignores it, and so does the gateway (a number is still checked)."""
    monkeypatch.setenv("AGENT_SERVER_PORT", "tcp://10.0.0.1:8443")
    parser = argparse.ArgumentParser()
    add_gateway_flags(parser)
    assert parser.parse_args([]).public_port == 8443


@pytest.mark.parametrize(
    ("server", "user", "says"),
    [
        ("https://127.0.0.1:99999", "{token: abc}", "Port out of range"),
        ("https://127.0.0.1:1", "{client-certificate: /c.crt}", "go together"),
    ],
)
def test_the_components_kubeconfig_is_checked_as_wpctls_is(
    tmp_path: Path, server: str, user: str, says: str
) -> None:
    """One check for both (api/kube.context_problem): the components had met these only at
    their first request, in a traceback."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_USER.format(server=server, user=user))
    with pytest.raises(FatalError, match=says):
        load_config(kubeconfig, None)
