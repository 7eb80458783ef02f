"""``wpctl controller``: reconcile WorkflowPlanes and ClusterWorkflowPlanes."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from workflowplane.api.planes import is_object_name
from workflowplane.controller.runner import ControllerConfig, GatewayReplicas
from workflowplane.kits.goflags import port
from workflowplane.kits.process import EXIT_USAGE, FatalError
from workflowplane.kits.tlsfiles import check_ca, check_pair, check_together
from workflowplane.protocol.agent_patience import (
    DEFAULT_AGENT_WAIT_SECONDS,
    DEFAULT_RECENT_SECONDS,
    AgentPatience,
    check_seconds,
)
from workflowplane.protocol.replicas import valid_https_url

DEFAULT_HEALTH_PORT = 8081


def add_controller_flags(parser: argparse.ArgumentParser, *, standalone: bool) -> None:
    add = parser.add_argument
    if standalone:
        add("--kubeconfig", type=Path, help="control plane kubeconfig (default: in-cluster)")
        add("--context", help="control plane context")
        add(
            "--gateway-url",
            default="https://cluster-gateway.openchoreo-control-plane.svc:8444",
            help="the gateway's internal API; several replicas: comma-separated URLs",
        )
        add(
            "--gateway-namespace",
            default="openchoreo-control-plane",
            help="namespace of the gateway's internal client Secret",
        )
        add("--gateway-ca", type=Path, help="files instead of the Secret: server CA ...")
        add("--gateway-cert", type=Path, help="... client certificate ...")
        add("--gateway-key", type=Path, help="... and key")
        add("--health-host", default="0.0.0.0", help="address of /healthz /readyz /metrics")
    # `wpctl control-plane` has the gateway's --health-port and --host already: there the
    # controller's listener is --controller-health-port, on the gateway's --host.
    add(
        "--health-port" if standalone else "--controller-health-port",
        dest="controller_health_port",
        metavar="PORT",
        type=port,
        default=DEFAULT_HEALTH_PORT,
        help="the controller's /healthz /readyz /metrics (0: any free port)",
    )
    add(
        "--stuck-after",
        type=more_than_zero("--stuck-after"),
        metavar="SECONDS",
        default=300.0,
        help="liveness fails when a work queue has work due and no pass finished for this "
        "many seconds",
    )
    add(
        "--gateway-leases",
        action="store_true",
        help="find the gateway's replicas from their Leases in the gateway namespace "
        "(re-read every few seconds; --gateway-url while none is live)",
    )
    if not standalone:
        add(
            "--gateway-peer-url",
            action="append",
            type=peer_url,
            default=[],
            metavar="URL",
            help="another gateway replica's internal API for the controller (repeatable)",
        )
    add(
        "--resync-seconds",
        type=more_than_zero("--resync-seconds"),
        default=60.0,
        help="periodic re-evaluation",
    )
    add(
        "--disconnect-grace",
        type=seconds("--disconnect-grace"),
        metavar="SECONDS",
        default=10.0,
        help="an agent missing from every gateway replica for less than this is still "
        "connected (a replica's restart does not flap the status)",
    )
    add(
        "--gateway-agent-wait",
        type=seconds("--gateway-agent-wait"),
        metavar="SECONDS",
        default=DEFAULT_AGENT_WAIT_SECONDS,
        help="when every gateway replica says a plane's agent is missing, and the controller "
        "reached that plane within --gateway-recent-seconds, wait up to this long for the "
        "agent to come back before failing (an agent that dials one replica redials through "
        "the Service after its replica died: OpenChoreo's agent after 5 s); 0: fail at once",
    )
    add(
        "--gateway-recent-seconds",
        type=seconds("--gateway-recent-seconds"),
        metavar="SECONDS",
        default=DEFAULT_RECENT_SECONDS,
        help="a plane reached within this many seconds is waited for (--gateway-agent-wait); "
        "a plane not reached lately fails at once",
    )
    add(
        "--peering",
        type=peering_name,
        default=None,
        help="kopf peering name: replicas with the same name elect one active controller",
    )


def controller_config(args: argparse.Namespace) -> ControllerConfig:
    config = ControllerConfig(
        kubeconfig=args.kubeconfig,
        context=args.context,
        resync_seconds=args.resync_seconds,
        disconnect_grace_seconds=args.disconnect_grace,
        peering=args.peering,
        priority=random.randint(1, 1_000_000) if args.peering else 0,
        health_port=args.controller_health_port,
        stuck_after_seconds=args.stuck_after,
        gateway_patience=AgentPatience(args.gateway_recent_seconds, args.gateway_agent_wait),
    )
    host = getattr(args, "health_host", None) or getattr(args, "host", None)
    return replace(config, health_host=host) if host else config


def seconds(flag: str) -> Callable[[str], float]:
    """An argparse type: a number of seconds, not negative (else a usage error naming it)."""

    def parse(value: str) -> float:
        try:
            return check_seconds(flag, float(value))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} needs a number of seconds >= 0 (got {value!r})"
            ) from None

    return parse


def more_than_zero(flag: str) -> Callable[[str], float]:
    """A number of seconds above zero (an interval or a deadline: 0 made a busy loop)."""
    check = seconds(flag)

    def parse(value: str) -> float:
        number = check(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(
                f"{flag} needs a number of seconds > 0 (got {value!r})"
            )
        return number

    return parse


def peer_url(value: str) -> str:
    if not valid_https_url(value.strip(), path=True):
        raise argparse.ArgumentTypeError(f"{value[:200]!r} is not an https://host:port URL")
    return value


def peering_name(value: str) -> str:
    """kopf's peering object is named by it: a Kubernetes object name."""
    if not is_object_name(value):
        raise argparse.ArgumentTypeError(
            f"{value[:80]!r} is not a Kubernetes object name (lowercase letters, digits, "
            "'-' and '.')"
        )
    return value


def gateway_urls(value: str) -> tuple[str, ...]:
    """``--gateway-url``: one URL, or several comma-separated (each https://host:port)."""
    urls = tuple(url.strip() for url in value.split(",") if url.strip())
    bad = [url for url in urls if not valid_https_url(url, path=True)]
    if not urls or bad or len(set(urls)) != len(urls):
        raise FatalError(
            f"--gateway-url needs distinct https://host:port URLs, without credentials "
            f"(got {value[:300]!r})",
            "e.g. --gateway-url https://gw-0:8444,https://gw-1:8444",
            EXIT_USAGE,
        )
    return urls


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "controller",
        help="run the plane controller",
        allow_abbrev=False,  # as Go flag parsing: --tls is no --tls-enabled
    )
    add_controller_flags(parser, standalone=True)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from workflowplane.controller.runner import run_with_gateway_client  # noqa: PLC0415
    from workflowplane.kits.process import run  # noqa: PLC0415

    replicas = GatewayReplicas(
        gateway_urls(args.gateway_url), args.gateway_namespace, leases=args.gateway_leases
    )
    files = {"--gateway-ca": args.gateway_ca, "--gateway-cert": args.gateway_cert}
    check_together(files | {"--gateway-key": args.gateway_key})
    if args.gateway_ca:
        check_ca("--gateway-ca", args.gateway_ca)
        check_pair("--gateway-cert/--gateway-key", args.gateway_cert, args.gateway_key)
    run(
        run_with_gateway_client(
            controller_config(args),
            replicas,
            files=(args.gateway_ca, args.gateway_cert, args.gateway_key),
        )
    )
    return 0
