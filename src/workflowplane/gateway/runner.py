"""Run a gateway until cancelled (SIGTERM/SIGINT end the event loop's main task)."""

from __future__ import annotations

import asyncio
import logging

from workflowplane.api.kube import kube_client, load_config
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.server import Gateway
from workflowplane.kits.memory import keep_heap_for_bodies, settle

log = logging.getLogger(__name__)


async def serve_forever(config: GatewayConfig) -> None:
    for setting in config.ignored:
        log.info("accepted for OpenChoreo's command line, no effect here: %s", setting)
    kube = kube_client(load_config(config.kubeconfig, config.context), "cluster-gateway")
    gateway = Gateway(config, kube)
    await gateway.start()
    settle()  # start-up objects frozen out of the collector's way (it walked them per request)
    keep_heap_for_bodies()  # large bodies' memory kept for the next ones
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await gateway.drain()  # SIGTERM/SIGINT; a second signal cuts the drain short
        raise
    finally:
        await gateway.stop()
        await kube.close()
