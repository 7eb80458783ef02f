"""Gateway rules for working with OpenChoreo's peer (issue #11) that need no server: which
caller headers travel, how watch/follow are bounded for a v1 agent, what a stream init's
answer means, notify's words, OpenChoreo's command line, and exec's channel translation."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict, MultiDict

from tests.certmanager import self_signed_leaf
from workflowplane.gateway.command import add_gateway_flags, config_from_args
from workflowplane.gateway.connections import Reverification
from workflowplane.gateway.internal_api import notify_answer
from workflowplane.gateway.kube_proxy import complete_answer, degraded_query, forward_headers
from workflowplane.gateway.tls import ChainFiles, request_any_client_certificate, server_context
from workflowplane.kits.process import FatalError
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol import TunnelError, TunnelResponse
from workflowplane.protocol.exec import (
    close_reason,
    close_status,
    k8s_to_tunnel,
    status,
    tunnel_to_k8s,
)


def test_the_callers_identity_never_travels() -> None:
    caller = CIMultiDict(
        [
            ("Authorization", "Bearer t"),
            ("Impersonate-User", "intruder"),
            ("impersonate-group", "system:masters"),
            ("Impersonate-Extra-Scopes", "x"),
            ("Impersonate-Uid", "1"),
            ("Accept", "application/json"),
            ("Connection", "keep-alive"),
            ("Content-Encoding", "gzip"),
        ]
    )
    assert forward_headers(caller) == {"Accept": ["application/json"]}


def test_a_request_never_travels_without_headers() -> None:
    """OpenChoreo's agent fails such a request ("http: nil Request.Header")."""
    assert forward_headers(CIMultiDict([("Authorization", "Bearer t")])) == {"Accept": ["*/*"]}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"watch": "true"}, {"watch": "true", "timeoutSeconds": "25"}),
        ({"watch": "1", "timeoutSeconds": "3"}, {"watch": "1", "timeoutSeconds": "3"}),
        ({"watch": "true", "timeoutSeconds": "600"}, {"watch": "true", "timeoutSeconds": "25"}),
        ({"watch": "true", "timeoutSeconds": "x"}, {"watch": "true", "timeoutSeconds": "25"}),
        ({"follow": "true", "container": "c"}, {"container": "c"}),
        ({"follow": "true", "timeoutSeconds": "9"}, {"timeoutSeconds": "9"}),
    ],
)
def test_watch_and_follow_become_one_bounded_request_for_a_v1_agent(
    query: dict[str, str], expected: dict[str, str]
) -> None:
    degraded = degraded_query(MultiDict(query), request_timeout=30)
    assert dict(pair.split("=") for pair in degraded.split("&")) == expected


def test_a_tiny_request_timeout_still_leaves_a_watch_a_second() -> None:
    assert degraded_query(MultiDict({"watch": "true"}), request_timeout=2) == (
        "watch=true&timeoutSeconds=1"
    )


@pytest.mark.parametrize(
    ("reply", "whole"),
    [
        (TunnelResponse(request_id="r", status_code=200), False),  # a stream's head
        (TunnelResponse(request_id="r", status_code=404), False),  # its body comes as chunks
        (TunnelResponse(request_id="r", status_code=200, body=b"{}"), True),  # a v1 answer
        (TunnelResponse(request_id="r", status_code=502, error=TunnelError(message="x")), True),
        (TunnelResponse(request_id="r", status_code=101), True),
        (TunnelResponse(request_id="r", status_code=0), True),
    ],
)
def test_an_answer_to_a_stream_init_with_a_body_an_error_or_a_bad_status_is_whole(
    reply: TunnelResponse, whole: bool
) -> None:
    assert complete_answer(reply) is whole


def test_notify_answers_in_openchoreos_words() -> None:
    result = Reverification(granted=1, revoked=0, disconnected=0)
    assert notify_answer("created", result)["action"] == "revalidate"
    assert notify_answer("updated", result)["action"] == "revalidate"
    gone = notify_answer("deleted", Reverification(0, 1, 1))
    assert gone == {
        "success": True,
        "action": "disconnect",
        "disconnectedAgents": 1,
        "authorizationsGranted": 0,
        "authorizationsRevoked": 1,
    }


# ---- OpenChoreo's command line --------------------------------------------------------------

CHART_ARGS = [  # templates/cluster-gateway/deployment.yaml, rendered with its defaults
    "--port=8443",
    "--internal-port=8444",
    "--server-cert=/certs/tls.crt",
    "--server-key=/certs/tls.key",
    "--heartbeat-interval=30s",
    "--heartbeat-timeout=90s",
    "--internal-mtls=true",
    "--internal-client-ca-cert=/internal-ca/ca.crt",
    "--log-level=info",
]


def _parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_gateway_flags(parser)
    return parser.parse_args(args)


def test_openchoreos_chart_command_line_is_accepted_unchanged() -> None:
    config = config_from_args(_parse(CHART_ARGS))
    assert (config.public_port, config.internal_port) == (8443, 8444)
    assert config.tls_cert_file == Path("/certs/tls.crt")
    assert config.tls_key_file == Path("/certs/tls.key")
    assert config.internal_ca_file == Path("/internal-ca/ca.crt") and config.internal_mtls
    assert (config.ping_interval_seconds, config.dead_after_seconds) == (30.0, 90.0)


def test_go_syntax_env_and_accepted_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SERVER_PORT", "9443")
    monkeypatch.setenv("SERVER_CERT_PATH", "/c/tls.crt")
    monkeypatch.setenv("SERVER_KEY_PATH", "/c/tls.key")
    monkeypatch.setenv("INTERNAL_MTLS_ENABLED", "false")
    args = _parse(["-heartbeat-interval", "1m30s", "--read-timeout=60s", "--tls-enabled"])
    config = config_from_args(args)
    assert config.public_port == 9443 and config.tls_cert_file == Path("/c/tls.crt")
    assert not config.internal_mtls and config.ping_interval_seconds == 90.0
    assert config.ignored == ("--read-timeout=60.0", "--tls-enabled=True")


def test_internal_mtls_without_its_ca_is_refused_as_openchoreo_refuses_it() -> None:
    args = _parse(["--server-cert=/c/tls.crt", "--server-key=/c/tls.key"])
    with pytest.raises(FatalError, match="no client CA"):
        config_from_args(args)
    assert not config_from_args(_parse([*args_of(args), "--internal-mtls=false"])).internal_mtls


def args_of(args: argparse.Namespace) -> list[str]:
    return [f"--server-cert={args.tls_cert}", f"--server-key={args.tls_key}"]


# ---- exec: Kubernetes channels <-> the tunnel's stream bytes ---------------------------------


def test_callers_channels_become_openchoreos_stream_bytes() -> None:
    assert k8s_to_tunnel(b"\x00ls\n") == b"\x00ls\n"
    resize = k8s_to_tunnel(b"\x04" + json.dumps({"Width": 80, "Height": 24}).encode())
    assert resize is not None and resize[:1] == b"\x03"
    assert json.loads(resize[1:]) == {"width": 80, "height": 24}
    assert k8s_to_tunnel(b"\xff\x00") == b"\x00"  # v5 stdin close: the byte alone
    assert k8s_to_tunnel(b"\x04not json") is None and k8s_to_tunnel(b"\x03{}") is None
    assert k8s_to_tunnel(b"\x00") is None and k8s_to_tunnel(b"") is None


def test_openchoreos_stream_bytes_become_kubernetes_channels() -> None:
    assert tunnel_to_k8s(b"\x01out", v5=True) == b"\x01out"
    assert tunnel_to_k8s(b"\x02err", v5=False) == b"\x02err"
    assert tunnel_to_k8s(b"\x01", v5=True) is None  # "started"
    assert (
        tunnel_to_k8s(b"\x00", v5=True) == b"\xff\x00" and tunnel_to_k8s(b"\x00", v5=False) is None
    )
    resize = tunnel_to_k8s(b'\x03{"width": 100, "height": 40}', v5=True)
    assert resize == b"\x04" + json.dumps({"Width": 100, "Height": 40}).encode()


def test_how_an_exec_ended_reaches_the_caller() -> None:
    assert json.loads(close_status(None)) == {"metadata": {}, "status": "Success"}
    exit_3 = status("command terminated with non-zero exit code: 3", reason="NonZeroExitCode")
    assert close_status(exit_3) == exit_3  # a Status passes as it is
    failed = json.loads(close_status(b"exec failed: no such container"))
    assert failed["status"] == "Failure" and failed["message"] == "exec failed: no such container"
    assert close_reason(exit_3) == "command terminated with non-zero exit code: 3"
    assert len(close_reason(b"x" * 500).encode()) <= 123


# ---- the public listener's TLS: what reaches admission ----------------------------------------


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes | None:
    """The client certificate the server saw (DER), or None; SSLError when refused."""
    seen: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not seen.done():
            seen.set_result(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        # TLS 1.3: the client is done before the server judges its certificate; a refusal
        # shows as the connection ending before the server's handler ran.
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await asyncio.wait_for(reader.read(1), 10)
        writer.close()
        if not seen.done():
            raise ConnectionError("the server refused the handshake")
        return seen.result()
    finally:
        listener.close()


def _tls_pair(tmp_path: Path, leaf: tuple[bytes, bytes]) -> tuple[ChainFiles, ssl.SSLContext]:
    server_ca = generate_ca("server-ca")
    served = issue_certificate(
        server_ca, "gw", client=False, server=True, ip_addresses=["127.0.0.1"]
    )
    chain = ChainFiles.write(tmp_path, served)
    client = ssl.create_default_context(cadata=server_ca.cert_pem.decode())
    (tmp_path / "c.crt").write_bytes(leaf[0])
    (tmp_path / "c.key").write_bytes(leaf[1])
    client.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    return chain, client


async def test_openssl_takes_a_self_signed_leaf_in_the_trust_store_as_its_own_anchor(
    tmp_path: Path,
) -> None:
    """The fallback listener (trust = the union of plane CAs) admits a pinned leaf too."""
    leaf = self_signed_leaf("p")
    chain, client = _tls_pair(tmp_path, leaf)
    server = server_context(chain, leaf[0], required=False)
    assert await _handshake(server, client) is not None


async def test_the_listener_takes_any_client_certificate_to_judge_after_the_handshake(
    tmp_path: Path,
) -> None:
    stranger = issue_certificate(generate_ca("no-cr-trusts-it"), "agent")
    chain, client = _tls_pair(tmp_path, (stranger.cert_pem, stranger.key_pem))
    verifying = server_context(chain, generate_ca("some-plane").cert_pem, required=False)
    with pytest.raises(ConnectionError, match="refused"):
        await _handshake(verifying, client)
    accepting = server_context(chain, generate_ca("some-plane").cert_pem, required=False)
    assert request_any_client_certificate(accepting)
    seen = await _handshake(accepting, client)
    assert seen == stranger.certificate.public_bytes(serialization.Encoding.DER)
