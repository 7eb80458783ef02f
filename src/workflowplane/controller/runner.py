"""Run the plane controller: a kopf operator over both plane kinds, cluster-wide."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import kopf
from lightkube import AsyncClient

from workflowplane.api.kube import kube_client, load_config
from workflowplane.controller.events import EventRecorder
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.health import ControllerHealth
from workflowplane.controller.leadership import Leadership, peer_identity
from workflowplane.controller.plane_handlers import (
    PlanesController,
    build_registry,
    build_settings,
    connection_info,
    has_changing_handlers,
    register_login,
)
from workflowplane.controller.plane_reconciler import PlaneReconciler
from workflowplane.kits.memory import settle
from workflowplane.protocol.agent_patience import DEFAULT_PATIENCE, AgentPatience
from workflowplane.runs.run_handlers import RunsController, register_runs

if TYPE_CHECKING:
    from workflowplane.protocol.gateway_client import Credentials
    from workflowplane.protocol.gateway_client import GatewayClient as GatewayClientType

log = logging.getLogger(__name__)
Flag = asyncio.Event | threading.Event  # kopf takes either (a thread may run the operator)


@dataclass(frozen=True)
class ControllerConfig:
    """``kubeconfig`` None means in-cluster (service account); ``peering`` None, standalone.

    ``runs`` also reconciles WorkflowRuns in the same operator (same leader election).
    ``health_port`` None: no health listener (0: any free port); a work queue with work due
    and no finished pass for ``stuck_after_seconds`` fails liveness.
    """

    kubeconfig: Path | None = None
    context: str | None = None
    resync_seconds: float = 60.0
    disconnect_grace_seconds: float = 10.0
    peering: str | None = None
    priority: int = 0
    runs: bool = True
    health_host: str = "0.0.0.0"
    health_port: int | None = None
    stuck_after_seconds: float = 300.0
    gateway_patience: AgentPatience = DEFAULT_PATIENCE


def quiet_handler_successes() -> None:
    """kopf logs "Handler … succeeded." at INFO for every event of every object. Our handlers
    only hand events to work queues, so those lines say nothing, and there were four per run
    started. kopf's per-object warnings and errors still show; ``--verbose`` shows all."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


async def run_controller(
    config: ControllerConfig,
    gateway: GatewayAPI,
    *,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
    health: ControllerHealth | None = None,
    own_process: bool = False,
) -> None:
    """Reconcile planes until ``stop_flag`` is set (or the task is cancelled); ``own_process``:
    this is the process's main work (memory settles after start).

    ``health`` (checks and metrics) may come from the caller, who adds checks of its own or
    reads the metrics; its listener is started here when ``config.health_port`` is set.
    """
    health = health or ControllerHealth(stuck_after=config.stuck_after_seconds)
    kube_config = load_config(config.kubeconfig, config.context)
    kube = kube_client(kube_config, "workflowplane-controller")
    identity = peer_identity()
    try:
        registry, pausable = _build(config, kube, gateway, health)
        if own_process:
            _settle_after_start(registry)

        async def credentials() -> kopf.ConnectionInfo:
            return connection_info(kube_config)

        register_login(registry, credentials)
        leadership = Leadership(
            kube, config.peering, identity, config.priority, on_change=health.metrics.leader.set
        )
        leadership.on_change = _follow_leadership(leadership, health, pausable)
        health.watch_leadership(leadership)
        if config.health_port is not None:
            await health.start(config.health_host, config.health_port)
        quiet_handler_successes()
        await kopf.operator(
            registry=registry,
            settings=build_settings(),
            clusterwide=True,
            standalone=config.peering is None,
            peering_name=config.peering,
            priority=config.priority,
            identity=cast(Any, identity),  # kopf's Identity is a NewType of str
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await health.close()
        await kube.close()


class Pausable(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...


def _follow_leadership(
    leadership: Leadership, health: ControllerHealth, pausable: list[Pausable]
) -> Callable[[bool], None]:
    """kopf pauses its handlers while another replica leads; the queues, timers and
    followers of this process are its own, and would go on reconciling beside the leader
    (two writers of every status, twice the notifies): they pause and resume with it."""

    def changed(leading: bool) -> None:
        health.metrics.leader.set(leading)
        for each in pausable:
            if leadership.standing_by:
                each.pause()
            else:
                each.resume()

    return changed


def _build(
    config: ControllerConfig, kube: AsyncClient, gateway: GatewayAPI, health: ControllerHealth
) -> tuple[kopf.OperatorRegistry, list[Pausable]]:
    """The kopf registry of planes (and runs), their queues watched and measured, and what
    pauses while another replica leads."""
    metrics = health.metrics
    reconciler = PlaneReconciler(
        kube,
        gateway,
        EventRecorder(kube),
        resync_seconds=config.resync_seconds,
        disconnect_grace_seconds=config.disconnect_grace_seconds,
        on_status_lag=metrics.plane_status_lag.observe,
    )
    planes = PlanesController(reconciler, gateway, metrics=metrics)
    health.watch(planes.queue.progress_watch(health.stuck_after))
    registry = build_registry(planes)
    pausable: list[Pausable] = [planes.queue]
    if config.runs:
        runs = RunsController(kube, gateway, queue_metrics=metrics.queues, run_metrics=metrics.runs)
        health.watch(runs.progress_watch(health.stuck_after))
        register_runs(registry, runs)
        pausable.append(runs)
    health.register(registry)
    health.watch_gateway(gateway)
    if has_changing_handlers(registry):  # settings: EventsOnlyDiffBase builds no diff base
        raise RuntimeError("a changing handler needs kopf's own diff base storage")

    return registry, pausable


def _settle_after_start(registry: kopf.OperatorRegistry) -> None:
    """The process's start-up objects frozen out of the collector's way once kopf has started:
    each full collection walked them all, a 60-180 ms pause of the event loop while 1,000 runs
    were followed (26-96 ms with them frozen). Only for a process of its own: a host process
    (the tests') would have its whole heap frozen."""

    @kopf.on.startup(registry=registry, id="settle")
    async def settle_now(**_: Any) -> None:
        settle()


@dataclass(frozen=True)
class GatewayReplicas:
    """Where the gateway's replicas are: a fixed list of internal API URLs (one: a single
    gateway, or its Service), or their Leases in ``namespace`` (the list's first URL while
    none is live)."""

    urls: tuple[str, ...]
    namespace: str
    leases: bool = False


CREDENTIALS_CHECK_SECONDS = 3600.0  # the gateway re-issues them with a third of their life left

Files = tuple[Path | None, Path | None, Path | None]  # ca.crt, tls.crt, tls.key


def credentials_reader(
    config: ControllerConfig, namespace: str, files: Files
) -> Callable[[], Awaitable[Credentials]]:
    """How the gateway callers' credential is read: from files (a mounted Secret, which the
    kubelet updates), else from the Secret the gateway keeps."""
    from workflowplane.protocol import gateway_client as gc  # noqa: PLC0415

    ca, cert, key = files
    if ca and cert and key:
        return lambda: asyncio.to_thread(gc.credentials_from_files, ca, cert, key)

    async def from_secret() -> Credentials:
        kube = kube_client(load_config(config.kubeconfig, config.context))
        try:
            return await gc.credentials_from_secret(kube, namespace)
        finally:
            await kube.close()

    return from_secret


async def gateway_client(
    config: ControllerConfig,
    replicas: GatewayReplicas,
    read: Callable[[], Awaitable[Credentials]],
) -> GatewayClientType:
    """A client for the gateway's internal API."""
    from workflowplane.protocol.gateway_client import GatewayClient  # noqa: PLC0415
    from workflowplane.protocol.replicas import LeaseDirectory, ReplicaDirectory  # noqa: PLC0415

    target: list[str] | ReplicaDirectory = list(replicas.urls)
    if replicas.leases:
        kube = kube_client(load_config(config.kubeconfig, config.context))
        target = LeaseDirectory(kube, replicas.namespace, replicas.urls[0], owns_client=True)
    return GatewayClient.with_credentials(target, await read(), config.gateway_patience)


async def keep_credentials_current(
    gateway: GatewayClientType,
    read: Callable[[], Awaitable[Credentials]],
    every: float = CREDENTIALS_CHECK_SECONDS,
) -> None:
    """Present the renewed credential once the gateway re-issued it, long before the one in
    use expires (a controller running for a year would otherwise be refused by then)."""
    while True:
        await asyncio.sleep(every)
        try:
            if gateway.present(await read()):
                log.info("gateway client credential renewed: presenting the new certificate")
        except Exception:  # any failure: kept until the next check
            log.warning("could not re-read the gateway client credential", exc_info=True)


async def run_with_gateway_client(
    config: ControllerConfig,
    replicas: GatewayReplicas,
    files: Files = (None, None, None),
    ready_flag: asyncio.Event | None = None,
) -> None:
    """The controller with a client for the gateway's internal API."""
    read = credentials_reader(config, replicas.namespace, files)
    gateway = await gateway_client(config, replicas, read)
    renewal = asyncio.create_task(keep_credentials_current(gateway, read))
    try:
        await run_controller(config, gateway, ready_flag=ready_flag, own_process=True)
    finally:
        renewal.cancel()
        await asyncio.gather(renewal, return_exceptions=True)
        await gateway.close()
