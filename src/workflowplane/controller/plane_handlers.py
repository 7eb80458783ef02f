"""kopf wiring for planes: events only *add* keys to one work queue; the queue decides when
each CR is reconciled (``plane_reconciler.py``), one pass per CR at a time.

The triggers: kopf watch events of both plane kinds (which also deliver every CR at startup),
events of Secrets (a CA Secret changed: its CRs are re-notified, see ``notify_owed``), the
gateway's push channel (an agent of a planeID connected or left) and the resync, which is
each pass's "look again after" (the resync period, or sooner to retry).

kopf keeps its progress and diff-base in annotations (``kopf.openchoreo.dev/*``), never in
``status``, whose strict schema would prune them. Each kind's finalizer is managed by the
reconciler, because kopf supports only one finalizer name per operator and the API
specifies one per kind; for the same reason no kopf timers, daemons or mandatory delete
handlers are used (each would add kopf's own finalizer), and only ``on.event`` handlers,
which never write to the object.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import kopf
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

from workflowplane.api import (
    CLUSTER_WORKFLOW_PLANE,
    GROUP,
    VERSION,
    WORKFLOW_PLANE,
)
from workflowplane.controller.directory import PlaneDirectory, PlaneRef
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.metrics import ControllerMetrics
from workflowplane.controller.plane_reconciler import GATEWAY_FAILURES, PlaneReconciler
from workflowplane.kits.clock import parse_rfc3339, utcnow
from workflowplane.kits.dialing import Connector
from workflowplane.kits.tasks import TaskSet
from workflowplane.kits.workqueue import WorkQueue

log = logging.getLogger(__name__)
PLURALS = {WORKFLOW_PLANE: "workflowplanes", CLUSTER_WORKFLOW_PLANE: "clusterworkflowplanes"}
ANNOTATION_PREFIX = "kopf.openchoreo.dev"
GATEWAY_RECONNECT_MAX = 30.0


class PlanesController:
    """The scheduling of plane reconciles: the queue, what feeds it, and its background task.

    Owns the ``WorkQueue[PlaneRef]`` (one pass per CR at a time, triggers for a busy CR
    coalesce into one more pass), the directory that maps planeIDs and Secrets back to CRs,
    and the guarded follower of the gateway's push channel. It decides nothing about a CR:
    every trigger ends in :meth:`add`.
    """

    def __init__(
        self,
        reconciler: PlaneReconciler,
        gateway: GatewayAPI,
        *,
        concurrency: int = 16,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.gateway = gateway
        self.metrics = metrics
        self.directory = PlaneDirectory()
        self.queue: WorkQueue[PlaneRef] = WorkQueue(
            reconciler.reconcile,
            concurrency=concurrency,
            name="planes",
            metrics=metrics.queues if metrics else None,
            fair_by=lambda ref: ref.namespace,  # ClusterWorkflowPlanes: a group of their own
        )
        self.tasks = TaskSet("planes")
        # What of each CR's last watch event calls for a pass (see plane_event).
        self._triggers: dict[PlaneRef, tuple[Any, ...]] = {}

    def add(self, ref: PlaneRef, *, force_notify: bool = False) -> None:
        """Reconcile ``ref`` soon; ``force_notify`` re-notifies the gateway on that pass even
        if the spec did not change (the mark waits in the reconciler until a pass consumes it,
        so it survives coalescing)."""
        if force_notify:
            self.reconciler.notify_owed.add(ref)
        self.queue.add(ref)

    def forget(self, ref: PlaneRef) -> None:
        """The CR is gone: nothing more is owed to it."""
        self.directory.forget(ref)
        self.reconciler.notify_owed.discard(ref)
        self._triggers.pop(ref, None)

    def plane_event(self, ref: PlaneRef, body: Mapping[str, Any], type_: str | None) -> None:
        """A watch event of a plane CR: a pass, unless only its status (or resourceVersion)
        changed since the last event. Each pass's own status write is such an event: it
        started another pass, which wrote again whenever something it reports moved between
        the two (an agent answering the secret store check 200 and 500 in turn, a failure
        naming another replica each time), a pass after pass for good. Status edits by
        others are mended by the resync; a listing's events (type None) always pass."""
        if type_ == "DELETED":  # gone: the finalizer made sure its last pass came before
            seen = self._triggers.get(ref)
            if seen is not None and seen[0] != _trigger_of(body)[0]:
                # A namesake's, deleted before this CR was made: kopf handles each UID's
                # events in its own worker, so its deletion can come after this one's ADDED.
                return
            self.forget(ref)
            return
        self.directory.remember(ref, body)
        trigger = _trigger_of(body)
        if type_ == "MODIFIED" and self._triggers.get(ref) == trigger:
            return  # a (re)listing (type None, after a restart or a new leader) always passes
        self._triggers[ref] = trigger
        self.add(ref)

    def start(self) -> None:
        self.tasks.spawn(self.follow_gateway_events(), "gateway-events")

    async def close(self) -> None:
        await self.tasks.close()
        await self.queue.close()

    async def follow_gateway_events(self) -> None:
        """Push channel: a connection change re-evaluates every CR of that planeID at once.

        An interrupted stream is reopened with backoff (the resync covers what it missed);
        anything but a failure of the gateway or the network is a bug, and ends the task loudly.
        """
        delay = 1.0
        while True:
            try:
                async for event in self.gateway.events():
                    delay = 1.0
                    self._agents_changed(event)
            except GATEWAY_FAILURES as exc:
                log.info("gateway event stream interrupted (%s); reopening in %.0fs", exc, delay)
            if self.metrics is not None:
                self.metrics.gateway_stream_interruptions.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, GATEWAY_RECONNECT_MAX)

    def _agents_changed(self, event: Mapping[str, Any]) -> None:
        """Every CR of the event's planeID gets a pass, marked with when the change happened."""
        since = _happened_at(event)
        if self.metrics is not None:
            self.metrics.gateway_event(event.get("type"))
        for ref in self.directory.by_plane_id(str(event.get("planeID", ""))):
            self.reconciler.agents_changed_at(ref, since)
            self.add(ref)


def _trigger_of(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a CR a pass acts on, status aside: its identity, spec (by generation), deletion,
    finalizers, and whether it has a status at all."""
    meta = body.get("metadata") or {}
    return (
        meta.get("uid"),
        meta.get("generation"),
        meta.get("deletionTimestamp"),
        tuple(meta.get("finalizers") or ()),
        bool(body.get("status")),
    )


def _happened_at(event: Mapping[str, Any]) -> float:
    """When the change happened, on ``time.monotonic``'s clock: the event's own ``time``
    (RFC 3339) if it carries one and it is not in the future, else now (its arrival)."""
    now = time.monotonic()
    stamp = event.get("time")
    if not isinstance(stamp, str):
        return now
    try:
        age = (utcnow() - parse_rfc3339(stamp)).total_seconds()
    except (ValueError, TypeError):  # not RFC 3339, or without a zone
        return now
    return now - max(0.0, age)


def _register_kind(registry: kopf.OperatorRegistry, planes: PlanesController, kind: str) -> None:
    # An explicit id: the default (the function's qualified name) is not a valid annotation key.
    @kopf.on.event(GROUP, VERSION, PLURALS[kind], registry=registry, id="plane-event")
    async def plane_event(
        name: str, namespace: str | None, body: kopf.Body, type: str | None, **_: Any
    ) -> None:
        planes.plane_event(PlaneRef.of(kind, namespace, name), body, type)


def _register_secrets(registry: kopf.OperatorRegistry, planes: PlanesController) -> None:
    @kopf.on.event("", "v1", "secrets", registry=registry, id="ca-secret-changed")
    async def secret_changed(name: str, namespace: str | None, **_: Any) -> None:
        """A CA Secret changed: re-evaluate and re-notify every CR that reads it."""
        for ref in planes.directory.by_secret(namespace or "", name):
            planes.add(ref, force_notify=True)


def _register_lifecycle(registry: kopf.OperatorRegistry, planes: PlanesController) -> None:
    @kopf.on.startup(registry=registry, id="planes-start")
    async def start(**_: Any) -> None:
        planes.start()

    @kopf.on.cleanup(registry=registry, id="planes-stop")
    async def stop(**_: Any) -> None:
        await planes.close()


def build_registry(planes: PlanesController) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    for kind in PLURALS:
        _register_kind(registry, planes, kind)
    _register_secrets(registry, planes)
    _register_lifecycle(registry, planes)
    return registry


class EventsOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No diff base: kopf builds one for every event (a deep copy of the whole body, status
    included) for changing handlers (create/update/delete), and this operator has none, only
    event handlers, so it was never read; building it was about 5% of the control plane's CPU
    while starting runs. ``has_changing_handlers`` guards the assumption at start-up."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()


def has_changing_handlers(registry: kopf.OperatorRegistry) -> bool:
    """Whether any create/update/delete/resume handler is registered (kopf's diff base is
    then needed: use kopf's own storage, not ``EventsOnlyDiffBase``)."""
    return bool(registry._changing.get_all_handlers())


def build_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = EventsOnlyDiffBase(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # our own events, from status.py transitions only
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    return settings


def _b64_or_none(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def connection_info(config: SingleConfig) -> kopf.ConnectionInfo:
    """kopf credentials from the same lightkube config the rest of the controller uses."""
    cluster, user = config.cluster, config.user or User()
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=cluster.certificate_auth,
        ca_data=_b64_or_none(cluster.certificate_auth_data),
        insecure=cluster.insecure,
        token=user.token,
        certificate_path=user.client_cert,
        certificate_data=_b64_or_none(user.client_cert_data),
        private_key_path=user.client_key,
        private_key_data=_b64_or_none(user.client_key_data),
        default_namespace=config.namespace,
    )


def dialling_session(info: kopf.ConnectionInfo) -> kopf.AiohttpSession:
    """kopf's session for ``info`` as kopf would build it, on the project's connector
    (``kits/dialing``): kopf retries aiohttp's connection errors, and lets any RuntimeError,
    such as uvloop's descriptor bug's, out of its requests and watches."""
    session = aiohttp.ClientSession(
        connector=Connector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
    )
    return kopf.AiohttpSession(
        server=info.server, default_namespace=info.default_namespace, aiohttp_session=session
    )


def register_login(
    registry: kopf.OperatorRegistry, credentials: Callable[[], Awaitable[kopf.ConnectionInfo]]
) -> None:
    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        return dialling_session(await credentials())
