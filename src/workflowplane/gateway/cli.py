"""``wpctl gateway``: run the cluster gateway."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from workflowplane.gateway.config import GATEWAY_NAMESPACE, GatewayConfig


def add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    base = GatewayConfig()
    add("--kubeconfig", type=Path, help="control plane kubeconfig (default: in-cluster)")
    add("--context", help="control plane context")
    add("--namespace", default=GATEWAY_NAMESPACE, help="where the gateway keeps its Secrets")
    add("--host", default="0.0.0.0", help="listen address")
    add("--public-port", type=int, default=8443, help="agents (TLS, /ws)")
    add("--internal-port", type=int, default=8444, help="internal API (mTLS)")
    add("--health-port", type=int, default=8080, help="/healthz /readyz /metrics")
    add(
        "--server-dns-name",
        action="append",
        dest="dns_names",
        default=None,
        help="SAN for the server certificate (repeatable)",
    )
    add("--tls-cert", type=Path, help="server certificate file (instead of the Secret)")
    add("--tls-key", type=Path)
    add("--internal-ca", type=Path, help="CA file for internal callers (instead of Secret)")
    add("--ping-interval", type=float, default=30.0)
    add("--dead-after", type=float, default=90.0)
    add("--request-timeout", type=float, default=30.0)
    add("--max-body-bytes", type=int, default=10 * 1024 * 1024)
    add("--max-frame-bytes", type=int, default=base.max_frame_bytes, help="largest agent answer")
    add("--max-streams-per-agent", type=int, default=base.max_streams_per_agent)
    add("--max-streams-per-cr", type=int, default=base.max_streams_per_cr)
    add("--max-stream-buffer-bytes", type=int, default=base.max_stream_buffer_bytes)
    add("--tls-handshake-timeout", type=float, default=base.tls_handshake_timeout_seconds)
    add("--header-timeout", type=float, default=base.header_timeout_seconds)
    add("--max-junk-frames-per-second", type=int, default=base.max_junk_frames_per_second)


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    base = GatewayConfig()
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
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("gateway", help="run the cluster gateway (control plane)")
    add_gateway_flags(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from workflowplane.gateway.runner import serve_forever  # noqa: PLC0415
    from workflowplane.kits.process import run  # noqa: PLC0415

    run(serve_forever(config_from_args(args)))
    return 0
