"""``wpctl control-plane``: gateway and controller in one process (each also runs alone).

Two health listeners: the gateway's (``--health-port``: its own probes and metrics) and the
controller's (``--controller-health-port``, default 8081), which answers for the whole
process: its liveness and readiness include the gateway's own /healthz and /readyz, fetched
over loopback, so one probe port tells the truth about both. /metrics stays per component.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from typing import Any

from workflowplane.api.kube import kube_client, load_config
from workflowplane.controller.command import add_controller_flags, controller_config
from workflowplane.controller.health import ControllerHealth
from workflowplane.controller.runner import keep_credentials_current, run_controller
from workflowplane.gateway.command import add_gateway_flags, config_from_args
from workflowplane.gateway.server import Gateway
from workflowplane.kits.health import http_probe
from workflowplane.protocol.gateway_client import (
    Credentials,
    GatewayClient,
    credentials_from_secret,
)
from workflowplane.protocol.replicas import LeaseDirectory

ANY_ADDRESS = ("0.0.0.0", "::", "")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "control-plane",
        help="run gateway + controller together in one process",
        allow_abbrev=False,  # as Go flag parsing: --tls is no --tls-enabled
    )
    add_gateway_flags(parser)
    add_controller_flags(parser, standalone=False)
    parser.set_defaults(handler=_run)


async def serve(
    args: argparse.Namespace,
    *,
    health: ControllerHealth | None = None,
    stop_flag: threading.Event | None = None,
    own_process: bool = False,
) -> None:
    """Until cancelled (or ``stop_flag``); ``health`` may come from the caller (tests);
    ``own_process``: the process's main work (memory settles after start)."""
    gateway_config = config_from_args(args)
    kube = kube_client(
        load_config(gateway_config.kubeconfig, gateway_config.context), "cluster-gateway"
    )
    gateway = Gateway(gateway_config, kube)
    await gateway.start()
    own = f"https://127.0.0.1:{gateway.ports['internal']}"
    urls = [own, *(u.rstrip("/") for u in args.gateway_peer_url if u.rstrip("/") != own)]
    replicas: list[str] | LeaseDirectory = urls
    if args.gateway_leases:  # the Leases' client is the gateway's (closed after the directory)
        replicas = LeaseDirectory(kube, gateway_config.namespace, own)
    config = controller_config(args)

    async def read() -> Credentials:
        return await credentials_from_secret(kube, gateway_config.namespace)

    client = GatewayClient.with_credentials(replicas, await read(), config.gateway_patience)
    health = health or ControllerHealth(stuck_after=config.stuck_after_seconds)
    host = "127.0.0.1" if gateway_config.host in ANY_ADDRESS else gateway_config.host
    probe = f"http://{host}:{gateway.ports['health']}"
    health.add_live_check("gateway-healthz", http_probe(f"{probe}/healthz"))
    health.add_ready_check("gateway-readyz", http_probe(f"{probe}/readyz"))
    renewal = asyncio.create_task(keep_credentials_current(client, read))
    try:
        # When kopf stops it cancels every task started in this loop while it ran, the
        # gateway's included; that is only ever at shutdown, and the gateway stops next.
        await run_controller(
            config, client, health=health, stop_flag=stop_flag, own_process=own_process
        )
    finally:
        renewal.cancel()
        await asyncio.gather(renewal, return_exceptions=True)
        await client.close()
        await gateway.stop()
        await kube.close()


def _run(args: argparse.Namespace) -> int:
    from workflowplane.kits.process import run  # noqa: PLC0415

    run(serve(args, own_process=True))
    return 0
