"""Run the plane controller: a kopf operator over both plane kinds, cluster-wide."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import kopf
from lightkube import AsyncClient

from workflowplane.api.kube import load_config
from workflowplane.controller.events import EventRecorder
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.plane_handlers import (
    PlanesController,
    build_registry,
    build_settings,
    connection_info,
    register_login,
)
from workflowplane.controller.plane_reconciler import PlaneReconciler
from workflowplane.runs.run_handlers import RunsController, register_runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerConfig:
    """``kubeconfig`` None means in-cluster (service account); ``peering`` None, standalone.

    ``runs`` also reconciles WorkflowRuns in the same operator (same leader election).
    """

    kubeconfig: Path | None = None
    context: str | None = None
    resync_seconds: float = 60.0
    peering: str | None = None
    priority: int = 0
    runs: bool = True


async def run_controller(
    config: ControllerConfig,
    gateway: GatewayAPI,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Reconcile planes until ``stop_flag`` is set (or the task is cancelled)."""
    kube_config = load_config(config.kubeconfig, config.context)
    kube = AsyncClient(config=kube_config, field_manager="workflowplane-controller")
    try:
        reconciler = PlaneReconciler(
            kube, gateway, EventRecorder(kube), resync_seconds=config.resync_seconds
        )
        registry = build_registry(PlanesController(reconciler, gateway))
        if config.runs:
            register_runs(registry, RunsController(kube, gateway))

        async def credentials() -> kopf.ConnectionInfo:
            return connection_info(kube_config)

        register_login(registry, credentials)
        await kopf.operator(
            registry=registry,
            settings=build_settings(),
            clusterwide=True,
            standalone=config.peering is None,
            peering_name=config.peering,
            priority=config.priority,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await kube.close()


async def run_with_gateway_client(
    config: ControllerConfig,
    gateway_url: str,
    gateway_namespace: str,
    files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
    ready_flag: asyncio.Event | None = None,
) -> None:
    """The controller with a client for the gateway's internal API (files, else its Secret)."""
    from workflowplane.protocol.gateway_client import GatewayClient  # noqa: PLC0415

    ca, cert, key = files
    if ca and cert and key:
        gateway = GatewayClient.from_files(gateway_url, ca, cert, key)
    else:
        kube = AsyncClient(config=load_config(config.kubeconfig, config.context))
        try:
            gateway = await GatewayClient.from_secret(kube, gateway_url, gateway_namespace)
        finally:
            await kube.close()
    try:
        await run_controller(config, gateway, ready_flag=ready_flag)
    finally:
        await gateway.close()
