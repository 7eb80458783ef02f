"""``wpctl gateway`` and ``cluster-gateway``: our flags, and OpenChoreo's gateway command line
unchanged (``cmd/cluster-gateway/main.go``: Go flag syntax, its environment variables).

OpenChoreo's chart passes ``--port``, ``--internal-port``, ``--server-cert``, ``--server-key``,
``--heartbeat-interval``, ``--heartbeat-timeout``, ``--internal-mtls``,
``--internal-client-ca-cert`` and ``--log-level``; each is accepted here under that name, as an
alias of ours where we have one. Flags with no meaning here (its HTTP server timeouts, the
deprecated ``--skip-client-cert-verify``) are accepted and logged as ignored at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

from workflowplane.gateway.config import GATEWAY_NAMESPACE, GatewayConfig
from workflowplane.kits.goflags import (
    add_go_flag,
    apply_go_log_level,
    at_least,
    env_bool,
    log_level,
    parse_duration,
    port,
    positive_duration,
)
from workflowplane.kits.process import EXIT_USAGE, FatalError
from workflowplane.kits.tlsfiles import check_ca, check_pair

log = logging.getLogger(__name__)
DNS_NAME_MAX = 253
# Accepted for OpenChoreo's command line; nothing here corresponds to them.
IGNORED_FLAGS = (
    "read_timeout",
    "write_timeout",
    "idle_timeout",
    "shutdown_timeout",
    "skip_client_cert_verify",
    "tls_enabled",
)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _env_port(name: str, default: int) -> str:
    """A port variable, checked with the command line; a Kubernetes service link
    (``tcp://10.0.0.1:8443``, set for a Service named ``agent-server``) is not one, and
    keeps the default, as OpenChoreo's ``GetEnvInt`` does."""
    value = os.environ.get(name, "")
    return str(default) if not value or "://" in value else value


def add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    """Our flags, with OpenChoreo's names (and environment variables) as aliases."""
    base = GatewayConfig()

    def add(*names: str, **kwargs: Any) -> None:
        add_go_flag(parser, *names, **kwargs)

    add(
        "kubeconfig",
        type=Path,
        default=_env_path("KUBECONFIG"),
        help="control plane kubeconfig (default: $KUBECONFIG, else in-cluster)",
    )
    add("context", help="control plane context")
    add("namespace", default=GATEWAY_NAMESPACE, help="where the gateway keeps its Secrets")
    add("host", default="0.0.0.0", help="listen address")
    add(
        "public-port",
        "port",
        type=port,
        default=_env_port("AGENT_SERVER_PORT", base.public_port),
        help="agents (TLS, /ws); env AGENT_SERVER_PORT",
    )
    add(
        "internal-port",
        type=port,
        default=_env_port("AGENT_INTERNAL_PORT", base.internal_port),
        help="internal API (mTLS); env AGENT_INTERNAL_PORT",
    )
    add(
        "health-port",
        type=port,
        default=base.health_port,
        help="/health /ready /healthz /readyz /metrics",
    )
    parser.add_argument(
        "--server-dns-name",
        action="append",
        dest="dns_names",
        default=None,
        help="SAN for the server certificate it creates (repeatable)",
    )
    add(
        "tls-cert",
        "server-cert",
        type=Path,
        default=_env_path("SERVER_CERT_PATH"),
        help="server certificate file instead of the Secret; env SERVER_CERT_PATH",
    )
    add("tls-key", "server-key", type=Path, default=_env_path("SERVER_KEY_PATH"))
    add(
        "internal-ca",
        "internal-client-ca-cert",
        type=Path,
        default=_env_path("INTERNAL_CLIENT_CA_PATH"),
        help="CA file for internal callers instead of the Secret; env INTERNAL_CLIENT_CA_PATH",
    )
    add(
        "internal-mtls",
        go_bool=True,
        default=env_bool(os.environ.get("INTERNAL_MTLS_ENABLED"), True),
        help="require internal callers' client certificates (false: TLS only); "
        "env INTERNAL_MTLS_ENABLED",
    )
    add(
        "ping-interval",
        "heartbeat-interval",
        type=positive_duration,
        default=base.ping_interval_seconds,
    )
    add(
        "dead-after",
        "heartbeat-timeout",
        type=positive_duration,
        default=base.dead_after_seconds,
    )
    add("request-timeout", type=positive_duration, default=base.request_timeout_seconds)
    add("max-body-bytes", type=at_least(1024), default=base.max_body_bytes)
    add(
        "max-frame-bytes",
        type=at_least(64 * 1024),
        default=base.max_frame_bytes,
        help="largest agent message",
    )
    add("max-streams-per-agent", type=at_least(1), default=base.max_streams_per_agent)
    add("max-streams-per-cr", type=at_least(1), default=base.max_streams_per_cr)
    add("max-stream-buffer-bytes", type=at_least(64 * 1024), default=base.max_stream_buffer_bytes)
    add(
        "tls-handshake-timeout",
        type=positive_duration,
        default=base.tls_handshake_timeout_seconds,
    )
    add("header-timeout", type=positive_duration, default=base.header_timeout_seconds)
    add("max-junk-frames-per-second", type=at_least(1), default=base.max_junk_frames_per_second)
    add(
        "replica-name",
        default=os.environ.get("POD_NAME", ""),
        help="this replica's name (its Lease, status answers); env POD_NAME; "
        "default: hostname and internal port",
    )
    add(
        "advertise-host",
        default=os.environ.get("POD_IP", ""),
        help="host peers dial for this replica's internal API; env POD_IP",
    )
    add(
        "drain-seconds",
        type=parse_duration,
        default=base.drain_seconds,
        help="on SIGTERM, how long requests in flight may take to finish",
    )
    add(
        "log-level",
        type=log_level,
        default=os.environ.get("LOG_LEVEL") or None,
        help="debug|info|warn|error",
    )
    for name in ("read-timeout", "write-timeout", "idle-timeout", "shutdown-timeout"):
        add(name, type=parse_duration, default=None, help="accepted for OpenChoreo; unused")
    for name in ("skip-client-cert-verify", "tls-enabled"):
        add(name, go_bool=True, default=None, help="accepted for OpenChoreo; unused")


DNS_NAME = re.compile(
    r"(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)


def _check(args: argparse.Namespace) -> None:
    """Settings that are each valid but not together, and names the certificate carries."""
    if args.dead_after < args.ping_interval:
        raise FatalError(
            f"--dead-after ({args.dead_after:g}s) is shorter than --ping-interval "
            f"({args.ping_interval:g}s): every agent would be taken for dead between pings",
            exit_code=EXIT_USAGE,
        )
    for name in args.dns_names or ():
        if len(name) > DNS_NAME_MAX or not DNS_NAME.fullmatch(name):
            raise FatalError(
                f"--server-dns-name {name[:80]!r} is not a DNS name (lowercase labels of "
                "letters, digits and '-', joined by dots): it would be written into the "
                "server certificate every replica presents",
                exit_code=EXIT_USAGE,
            )


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    base = GatewayConfig()
    _check(args)
    if args.tls_cert and args.internal_mtls and not args.internal_ca:
        raise FatalError(
            "internal mTLS is enabled but no client CA is configured",
            "set --internal-client-ca-cert (helm: clusterGateway.internalMtls) or disable it "
            "with --internal-mtls=false",
            EXIT_USAGE,
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise FatalError("--server-cert and --server-key go together", None, EXIT_USAGE)
    return GatewayConfig(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        host=args.host,
        public_port=args.public_port,
        internal_port=args.internal_port,
        health_port=args.health_port,
        server_dns_names=tuple(args.dns_names or base.server_dns_names),
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        internal_ca_file=args.internal_ca,
        internal_mtls=args.internal_mtls,
        ping_interval_seconds=args.ping_interval,
        dead_after_seconds=args.dead_after,
        request_timeout_seconds=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        max_frame_bytes=args.max_frame_bytes,
        max_streams_per_agent=args.max_streams_per_agent,
        max_streams_per_cr=args.max_streams_per_cr,
        max_stream_buffer_bytes=args.max_stream_buffer_bytes,
        tls_handshake_timeout_seconds=args.tls_handshake_timeout,
        header_timeout_seconds=args.header_timeout,
        max_junk_frames_per_second=args.max_junk_frames_per_second,
        replica_name=args.replica_name,
        advertise_host=args.advertise_host,
        drain_seconds=args.drain_seconds,
        ignored=tuple(
            f"--{name.replace('_', '-')}={getattr(args, name)}"
            for name in IGNORED_FLAGS
            if getattr(args, name) is not None
        ),
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gateway",
        allow_abbrev=False,  # as Go flag parsing: --tls is no --tls-enabled
        help="run the cluster gateway (control plane)",
        description="Admits cluster agents (mutual TLS, per plane CR) and tunnels Kubernetes "
        "API requests to their planes. OpenChoreo's cluster-gateway flags and environment "
        "work as well.",
    )
    add_gateway_flags(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from workflowplane.gateway.runner import serve_forever  # noqa: PLC0415
    from workflowplane.kits.process import run  # noqa: PLC0415

    config = config_from_args(args)
    if config.tls_cert_file and config.tls_key_file:
        check_pair("--server-cert/--server-key", config.tls_cert_file, config.tls_key_file)
    if config.internal_ca_file and config.internal_mtls:
        check_ca("--internal-client-ca-cert", config.internal_ca_file)
    apply_go_log_level(args.log_level)
    run(serve_forever(config))
    return 0


def main(argv: list[str] | None = None) -> None:
    """``cluster-gateway``: the gateway alone, started with OpenChoreo's command line."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # as Go flag parsing: --tls is no --tls-enabled
        prog="cluster-gateway",
        description="workflowplane's cluster gateway (OpenChoreo-compatible)",
    )
    add_gateway_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code = _run(args)
    except FatalError as exc:
        parser.error(exc.message + (f" ({exc.hint})" if exc.hint else ""))
    raise SystemExit(code)
