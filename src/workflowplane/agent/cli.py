"""``wpctl agent``: flags with CLUSTER_AGENT_* environment fallbacks (as the Helm chart sets)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from workflowplane.agent.config import AgentConfig, env
from workflowplane.api.constants import AGENT_NAMESPACE, AGENT_SECRET_NAME, PLANE_TYPE
from workflowplane.kits.process import EXIT_USAGE, FatalError


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the cluster agent (in the workflow plane)",
        description="Dials out to the cluster gateway over mutual TLS and serves Kubernetes "
        "API requests for the control plane. Every flag also reads CLUSTER_AGENT_<FLAG>.",
    )
    add = parser.add_argument
    add("--server-url", default=env("SERVER_URL"), help="gateway URL, e.g. wss://gw:8443")
    add("--plane-type", default=env("PLANE_TYPE", PLANE_TYPE))
    add("--plane-id", default=env("PLANE_ID"), help="must match the CR's planeID")
    add("--server-ca", default=env("SERVER_CA"), help="PEM file of the gateway's server CA")
    add("--client-cert", default=env("CLIENT_CERT"), help="use this cert instead of the Secret")
    add("--client-key", default=env("CLIENT_KEY"))
    add("--namespace", default=env("NAMESPACE", AGENT_NAMESPACE))
    add("--secret-name", default=env("SECRET_NAME", AGENT_SECRET_NAME))
    add("--kubeconfig", default=env("KUBECONFIG"), help="out-of-cluster: kubeconfig file")
    add("--context", default=env("CONTEXT"))
    add("--reconnect-initial", type=float, default=float(env("RECONNECT_INITIAL", "1") or 1))
    add("--reconnect-max", type=float, default=float(env("RECONNECT_MAX", "30") or 30))
    add("--request-timeout", type=float, default=float(env("REQUEST_TIMEOUT", "30") or 30))
    add(
        "--max-concurrent-requests",
        type=int,
        default=int(env("MAX_CONCURRENT_REQUESTS", "64") or 64),
    )
    add("--max-frame-bytes", type=int, default=int(env("MAX_FRAME_BYTES", "16777216") or 0))
    add("--cert-validity-days", type=float, default=float(env("CERT_VALIDITY_DAYS", "90") or 90))
    parser.set_defaults(handler=_run)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    for flag in ("server_url", "plane_id"):
        if not getattr(args, flag):
            name = flag.replace("_", "-")
            raise FatalError(
                f"--{name} is required", f"or set CLUSTER_AGENT_{flag.upper()}", EXIT_USAGE
            )
    return AgentConfig(
        server_url=args.server_url,
        plane_id=args.plane_id,
        plane_type=args.plane_type,
        server_ca_file=_path(args.server_ca),
        client_cert_file=_path(args.client_cert),
        client_key_file=_path(args.client_key),
        namespace=args.namespace,
        secret_name=args.secret_name,
        kubeconfig=_path(args.kubeconfig),
        context=args.context,
        reconnect_initial_seconds=args.reconnect_initial,
        reconnect_max_seconds=args.reconnect_max,
        request_timeout_seconds=args.request_timeout,
        max_concurrent_requests=args.max_concurrent_requests,
        max_frame_bytes=args.max_frame_bytes,
        cert_validity_days=args.cert_validity_days,
    )


def _run(args: argparse.Namespace) -> int:
    from workflowplane.agent.runner import Agent  # noqa: PLC0415 - heavy, only when running
    from workflowplane.kits.process import run  # noqa: PLC0415

    config = config_from_args(args)

    async def main() -> None:  # the agent's sessions need the running loop
        await Agent(config).run()

    run(main())
    return 0
